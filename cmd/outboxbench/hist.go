package main

import (
	"math"
	"sync"
	"time"
)

// hist is a log-bucketed latency histogram: 1 % resolution from 1 µs to
// 100 s in a fixed ~1,900 buckets, so recording is O(1) and memory bounded
// however long the run.
type hist struct {
	mu      sync.Mutex
	buckets []uint64
	count   uint64
	max     time.Duration
}

const histGrowth = 1.01

var histLogBase = math.Log(histGrowth)

func newHist() *hist { return &hist{buckets: make([]uint64, bucketOf(100*time.Second)+2)} }

func bucketOf(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	if us < 1 {
		return 0
	}
	return int(math.Log(us)/histLogBase) + 1
}

func bucketValue(i int) time.Duration {
	if i == 0 {
		return time.Microsecond
	}
	return time.Duration(math.Pow(histGrowth, float64(i)) * float64(time.Microsecond))
}

func (h *hist) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	b := min(bucketOf(d), len(h.buckets)-1)
	h.mu.Lock()
	h.buckets[b]++
	h.count++
	if d > h.max {
		h.max = d
	}
	h.mu.Unlock()
}

func (h *hist) merge(o *hist) {
	o.mu.Lock()
	defer o.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, n := range o.buckets {
		h.buckets[i] += n
	}
	h.count += o.count
	h.max = max(h.max, o.max)
}

// quantile returns the value at q (0..1), to 1 %.
func (h *hist) quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.count == 0 {
		return 0
	}
	target := uint64(math.Ceil(q * float64(h.count)))
	var seen uint64
	for i, n := range h.buckets {
		seen += n
		if seen >= target {
			return min(bucketValue(i), h.max)
		}
	}
	return h.max
}

// cdf returns (latency, fraction ≤ latency) points for plotting.
func (h *hist) cdf() [][2]float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out [][2]float64
	var seen uint64
	for i, n := range h.buckets {
		if n == 0 {
			continue
		}
		seen += n
		out = append(out, [2]float64{float64(bucketValue(i)) / float64(time.Millisecond), float64(seen) / float64(h.count)})
	}
	return out
}
