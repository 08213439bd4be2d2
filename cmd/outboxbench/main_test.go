package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHistQuantiles(t *testing.T) {
	h := newHist()
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.quantile(c.q)
		if diff := float64(got-c.want) / float64(c.want); diff < -0.011 || diff > 0.011 {
			t.Errorf("q%.2f = %s, want %s ±1%%", c.q, got, c.want)
		}
	}
	other := newHist()
	other.record(5 * time.Second)
	h.merge(other)
	if h.quantile(1) != 5*time.Second || h.count != 1001 {
		t.Fatalf("merge: max %s count %d", h.quantile(1), h.count)
	}
	if newHist().quantile(0.5) != 0 {
		t.Fatal("empty histogram")
	}
	if pts := h.cdf(); len(pts) == 0 || pts[len(pts)-1][1] != 1 {
		t.Fatal("cdf does not reach 1")
	}
}

func TestParseInt(t *testing.T) {
	frame := []byte(`{"type":"bench_event","seq":42,"id":7,"timestamp":"2026-11-27T05:01:02.123456Z","data":{"p": 1, "t": 1795000000000000000, "pad": "x"}}`)
	if v, ok := parseInt(frame, seqKey); !ok || v != 42 {
		t.Fatalf("seq %d %v", v, ok)
	}
	if v, ok := parseInt(frame, tKey); !ok || v != 1795000000000000000 {
		t.Fatalf("t %d %v", v, ok)
	}
	if _, ok := parseInt([]byte(`{"type":"welcome"}`), seqKey); ok {
		t.Fatal("seq found in a welcome frame")
	}
}

func TestOnlyThisMachine(t *testing.T) {
	for _, ok := range []string{"postgres://postgres@127.0.0.1:5432/x", "postgres://localhost/x", "postgres://[::1]/x", "postgres:///x?host=/var/run/postgresql"} {
		if err := checkLoopback(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"postgres://10.0.0.5/x", "postgres://db.example.com/x", "postgres://192.168.1.1/x"} {
		if err := checkLoopback(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// A small end-to-end run of two scenarios against a real outboxd: the
// report has the metrics, no event is lost, and JSON and SVG are written.
func TestSmokeRun(t *testing.T) {
	dir := t.TempDir()
	bin, err := proctest.Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	db := dbtest.NewEmpty(t) // only to reserve a unique name; the bench recreates it
	db.Pool.Close()
	var out bytes.Buffer
	o := options{outboxd: bin, adminURL: dbtest.AdminURL(), dbName: db.Name, runs: 1, scale: 0.02,
		jsonOut: dir + "/r.json", svgOut: dir + "/r.svg",
		custom: customSpec{clients: 3, producers: 2, rate: 500, batch: 5, duration: time.Second, padBytes: 10}}
	// Scenario 2 by its number; custom as producers, then as a one-shot
	// burst (a drain rate, not a commit rate).
	for _, sc := range []string{"backlog", "2", "custom", "custom-burst", "standby-reads"} {
		o.scenario = sc
		if sc == "custom-burst" {
			o.scenario, o.custom.burst = "custom", 300
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := run(ctx, o, &out)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v\n%s", sc, err, out.String())
		}
	}
	report := out.String()
	for _, want := range []string{"backlog (1 runs)", "events_per_s", "steady-100 (1 runs)", "latency_p99", "lost", "custom (1 runs)",
		"drain_events_per_s", "standby-reads (1 runs)", "with_standby.primary_event_reads_per_s"} {
		if !strings.Contains(report, want) {
			t.Fatalf("report lacks %q:\n%s", want, report)
		}
	}
	for _, line := range strings.Split(report, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "lost" && f[1] != "0" {
			t.Fatalf("events lost: %s", line)
		}
	}
	for _, f := range []string{"r.json", "r.svg"} {
		if st, err := os.Stat(dir + "/" + f); err != nil || st.Size() == 0 {
			t.Fatalf("%s not written: %v", f, err)
		}
	}
}

func TestCustomLoadBounds(t *testing.T) {
	o := options{outboxd: os.Args[0], adminURL: dbtest.AdminURL(), runs: 1, scale: 1, scenario: "custom",
		custom: customSpec{clients: 100000, producers: 1, batch: 1, rate: 1, duration: time.Second}}
	if err := run(context.Background(), o, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "out of bounds") {
		t.Fatalf("unbounded load accepted: %v", err)
	}
	o.custom.clients, o.custom.burst = 1, maxBatch+1
	if err := run(context.Background(), o, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "-burst 0..1000000") {
		t.Fatalf("a burst past the bound accepted: %v", err)
	}
	o.custom.burst = 0
	o.adminURL = "postgres://db.example.com/x"
	if err := run(context.Background(), o, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "this machine") {
		t.Fatalf("remote database accepted: %v", err)
	}
}

// Scenarios are taken by name or by BENCHMARKS.md's number, in a comma
// list; "all" is every numbered one but the peer comparison.
func TestResolveScenarios(t *testing.T) {
	for _, c := range []struct {
		arg  string
		want []string
	}{
		{"2", []string{"steady-100"}},
		{"1,steady-1000, 10", []string{"backlog", "steady-1000", "vs-centrifugo"}},
		{"custom", []string{"custom"}},
		{"3,steady-1000", []string{"steady-1000"}},
	} {
		got, err := resolveScenarios(c.arg)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%q: %v %v, want %v", c.arg, got, err, c.want)
		}
	}
	all, _ := resolveScenarios("all")
	if len(all) != len(numbered)-len(againstCentrifugo) || slices.Contains(all, "vs-centrifugo") || slices.Contains(all, "resume") || all[0] != "backlog" {
		t.Errorf("all = %v", all)
	}
	for _, bad := range []string{"0", "15", "nope", ""} {
		if _, err := resolveScenarios(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if names := fmt.Sprint(numbered); len(scenarios) != len(numbered)+1 {
		t.Errorf("scenarios %d, numbered %s (+ custom)", len(scenarios), names)
	}
}

func TestPickWorkloads(t *testing.T) {
	for _, c := range []struct {
		arg  string
		want []bool
	}{
		{"", []bool{true, true, true, true}},
		{"w3", []bool{false, false, true, false}},
		{"w1, 4", []bool{true, false, false, true}},
	} {
		got, err := pickWorkloads(c.arg, 4)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%q: %v %v, want %v", c.arg, got, err, c.want)
		}
	}
	for _, bad := range []string{"w0", "w5", "x", "w1,,w2"} {
		if _, err := pickWorkloads(bad, 4); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestPickPeers(t *testing.T) {
	for arg, want := range map[string][]string{
		"centrifugo,stream": {"centrifugo", "stream"}, "stream": {"stream"}, " centrifugo , centrifugo": {"centrifugo"},
	} {
		if got, err := pickPeers(arg); err != nil || !slices.Equal(got, want) {
			t.Errorf("%q: %v %v, want %v", arg, got, err, want)
		}
	}
	for _, bad := range []string{"", "redis", "stream,"} {
		if _, err := pickPeers(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The delay proxy passes every byte, in order, each way, and never sooner
// than its delay (a round trip takes at least twice it).
func TestDelayProxy(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	const delay = 3 * time.Millisecond
	p, err := startDelayProxy(echo.Addr().String(), delay)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var sent, got bytes.Buffer
	for i := range 50 {
		msg := fmt.Appendf(nil, "message %d;", i)
		sent.Write(msg)
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 2*delay {
			t.Fatalf("round trip %d took %s, less than twice the delay %s", i, rtt, delay)
		}
		got.Write(buf)
	}
	if !bytes.Equal(sent.Bytes(), got.Bytes()) {
		t.Fatalf("bytes changed through the proxy:\n sent %q\n got  %q", sent.Bytes(), got.Bytes())
	}
	c.Close()
	p.Close()
	<-done
}

// Staggered producers start evenly spread over one interval; in lockstep
// they all start at once.
func TestPacingOffset(t *testing.T) {
	const interval = 8 * time.Millisecond
	var got []time.Duration
	for p := range 8 {
		got = append(got, pacingOffset(p, 8, interval))
	}
	want := []time.Duration{0, time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond,
		4 * time.Millisecond, 5 * time.Millisecond, 6 * time.Millisecond, 7 * time.Millisecond}
	if !slices.Equal(got, want) {
		t.Fatalf("staggered offsets %v, want %v", got, want)
	}
	if d := pacingOffset(3, 8, 0); d != 0 {
		t.Fatalf("unpaced producer offset %s, want 0", d)
	}
	lockstepPacing = true
	defer func() { lockstepPacing = false }()
	for p := range 8 {
		if d := pacingOffset(p, 8, interval); d != 0 {
			t.Fatalf("lockstep producer %d offset %s, want 0", p, d)
		}
	}
}
