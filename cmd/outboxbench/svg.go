package main

import (
	"fmt"
	"math"
	"strings"
)

// drawSVG plots each scenario's latency CDF (median run) on a log-x axis.
func drawSVG(ss []summary) string {
	const w, h, left, bottom, top, right = 760.0, 420.0, 60.0, 50.0, 30.0, 170.0
	colors := []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"}
	lo, hi := math.Log10(0.1), math.Log10(10000.0)
	x := func(msv float64) float64 {
		v := math.Log10(max(msv, 0.1))
		return left + (min(v, hi)-lo)/(hi-lo)*(w-left-right)
	}
	y := func(f float64) float64 { return top + (1-f)*(h-top-bottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="18" font-size="13">outboxd: latency from INSERT to receipt (CDF)</text>`, left)
	for _, t := range []float64{0.1, 1, 10, 100, 1000, 10000} {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="middle">%g ms</text>`,
			x(t), y(0), x(t), y(1), x(t), y(0)+16, t)
	}
	for _, f := range []float64{0, 0.5, 0.9, 1} {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/><text x="%.1f" y="%.1f" text-anchor="end">%g</text>`,
			left, y(f), w-right, y(f), left-4, y(f)+4, f)
	}
	i := 0
	for _, s := range ss {
		if len(s.cdf) == 0 {
			continue
		}
		c := colors[i%len(colors)]
		var pts []string
		for _, p := range s.cdf {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p[0]), y(p[1])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, c, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="3"/><text x="%.0f" y="%.0f">%s</text>`,
			w-right+10, top+14*float64(i)+10, w-right+28, top+14*float64(i)+10, c, w-right+32, top+14*float64(i)+14, s.Scenario)
		i++
	}
	b.WriteString(`</svg>`)
	return b.String()
}
