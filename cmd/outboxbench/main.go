// Command outboxbench measures outboxd end to end on this machine: it starts
// its own outboxd (the binary given with -outboxd) on 127.0.0.1 against a
// fresh database, opens WebSocket clients, runs producers that insert with
// outbox.Emit, and reports throughput, latency from INSERT to receipt,
// lost / duplicated / out-of-order events, and outboxd's RSS and CPU read
// from /proc. Every loop is bounded in count and time; it only talks to
// 127.0.0.1.
//
//	go build -o bin/outboxd ./cmd/outboxd
//	go run ./cmd/outboxbench -outboxd bin/outboxd -scenario all -runs 3 -json bench.json -svg bench.svg
//
// -scenario takes names or BENCHMARKS.md's numbers, comma separated
// (-scenario 2,3 or -scenario steady-100). -scenario custom runs the load
// given by -clients, -producers, -rate, -batch, -duration and -pad (no
// target); with -burst N it commits N events in one transaction instead
// and reports how fast they drain to every client.
//
// Scenarios (targets from BENCHMARKS.md):
//
//	1 backlog          1,000,000 pending events drained to one client     ≥ 40,000 events/s
//	2 steady-100       1,000 events/s broadcast to 100 clients            p50 ≤ 5 ms, p99 ≤ 25 ms, none lost
//	3 steady-1000      100 events/s broadcast to 1,000 clients            p99 ≤ 50 ms, none lost
//	4 max              as fast as possible to 10 clients                  ≥ 20,000 events/s, p99 ≤ 100 ms
//	5 idle-conns       10,000 idle connections; one broadcast to all      ≤ 20 KB RSS each; last receipt ≤ 50 ms
//	6 producer-impact  8 single-row producers, outboxd stopped vs running  ≥ 85 % of the tx/s
//	7 idle-cpu         outboxd with nothing to relay                       ≤ 1 % of one core
//	8 tcp-floor        scenario 5's broadcast with bare TCP, no outboxd    (reference: this machine's floor)
//	9 reconnect-storm  5,000 clients from one address; outboxd restarts   all resumed ≤ 10 s, none lost
//	                   with its shipped defaults, 100 events committed meanwhile
//	10 vs-centrifugo   six workloads against outboxd, then the same against Centrifugo v6.9.1's
//	                   PostgreSQL outbox consumer and its PostgreSQL stream broker (-peers), in each
//	                   run (runs alternate A, B, A, B); ratios
//	11 standby-reads   3 replicas, 500 events/s, clients resuming, on a primary and standby of its own:
//	                   the primary's event reads without and with READ_DATABASE_URL (pg_stat_statements)
//	12 hot-channel     16 producers on one channel, each updating its own row then publishing, with and
//	                   without 2 ms of work after the publish, servers running and stopped: outboxd
//	                   against Centrifugo v6.9.1's PostgreSQL stream broker (cf_stream_publish)
//	13 two-nodes       two nodes of each (outboxd, the stream broker) on one PostgreSQL of its own,
//	                   500 events/s: delivery on both, and the statements the servers cost it
//	14 resume          1,000 clients away while 50,000 events commit, then back at once: outboxd
//	                   (since=) against the stream broker (recovery from its history)
//
// outboxd's clients connect with batch=1 (-frames single for one event per
// frame).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

type options struct {
	outboxd   string
	adminURL  string
	dbName    string
	scenario  string
	runs      int
	jsonOut   string
	svgOut    string
	scale     float64
	extraEnv  string
	pprofAddr string
	custom    customSpec
	// centrifugo is the peer's binary (vs-centrifugo).
	centrifugo string
	// workloads selects vs-centrifugo's workloads (w1,w3; "" = all).
	workloads string
	// peers selects vs-centrifugo's peers: centrifugo (the outbox
	// consumer), stream (the stream broker).
	peers string
	// pgDelay puts outboxd's database connections behind a proxy that holds
	// every chunk this long each way (delayProxy).
	pgDelay time.Duration
}

// customSpec is the load of -scenario custom.
type customSpec struct {
	clients, producers, batch, padBytes int
	burst                               int // one transaction of burst events instead of producers
	rate                                float64
	duration                            time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.outboxd, "outboxd", "bin/outboxd", "outboxd binary to start (build it with go build -o bin/outboxd ./cmd/outboxd)")
	flag.StringVar(&o.adminURL, "admin-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL (on this machine) where the benchmark database is created")
	flag.StringVar(&o.dbName, "db", "outboxbench", "benchmark database, dropped and recreated for every run")
	flag.StringVar(&o.scenario, "scenario", "all", "scenarios to run, by name or by number as BENCHMARKS.md numbers them, comma separated: "+scenarioList()+", custom, or all")
	flag.IntVar(&o.runs, "runs", 3, "runs per scenario; the report gives the median, min and max")
	flag.StringVar(&o.jsonOut, "json", "", "write the results as JSON to this file")
	flag.StringVar(&o.svgOut, "svg", "", "draw the latency distributions (CDF) as SVG to this file")
	flag.Float64Var(&o.scale, "scale", 1, "scale counts and durations (0.1 for a quick smoke run)")
	flag.StringVar(&o.extraEnv, "env", "", "extra environment for outboxd, comma separated (RELAY_BATCH_SIZE=1000,…)")
	flag.StringVar(&o.centrifugo, "centrifugo", ".tools/bin/centrifugo", "Centrifugo v6.9.1 binary for -scenario vs-centrifugo (scripts/ensure-centrifugo.sh builds it)")
	flag.StringVar(&o.workloads, "workloads", "", "vs-centrifugo: only these workloads, comma separated (w1,w3); default all")
	flag.StringVar(&o.peers, "peers", "centrifugo,stream", "vs-centrifugo: the peers, comma separated: centrifugo (Centrifugo's PostgreSQL outbox consumer), stream (its PostgreSQL stream broker)")
	flag.DurationVar(&o.pgDelay, "pg-delay", 0, "hold outboxd's PostgreSQL traffic this long each way (a database one round trip of twice this away; at most 50ms; the producers connect directly)")
	flag.StringVar(&o.pprofAddr, "pprof", "", "pass PPROF_ADDR to outboxd (e.g. 127.0.0.1:6060) to profile it during a run; Centrifugo then serves /debug/pprof/ on its own address (printed)")
	flag.IntVar(&o.custom.clients, "clients", 10, "custom: WebSocket clients")
	flag.IntVar(&o.custom.producers, "producers", 4, "custom: producer connections")
	flag.Float64Var(&o.custom.rate, "rate", 1000, "custom: events/s in total (0: as fast as possible)")
	flag.IntVar(&o.custom.batch, "batch", 1, "custom: events per transaction (1: single-row)")
	flag.IntVar(&o.custom.burst, "burst", 0, "custom: instead of producers, commit this many events in one transaction and report the drain rate (commit → last receipt)")
	flag.DurationVar(&o.custom.duration, "duration", 10*time.Second, "custom: how long the producers run (at most 10m)")
	flag.IntVar(&o.custom.padBytes, "pad", 64, "custom: payload padding in bytes")
	pacing := flag.String("pacing", "staggered", "paced producers: staggered (each starts 1/producers of an interval after the previous: the rate arrives evenly) or lockstep (all at once: their transactions arrive together)")
	frames := flag.String("frames", "batch", "outboxd clients: batch (connect with batch=1, several events per frame) or single (one per frame)")
	flag.Parse()
	if *frames != "batch" && *frames != "single" {
		fmt.Fprintln(os.Stderr, "outboxbench: -frames batch or single")
		os.Exit(2)
	}
	batchFrames = *frames == "batch"
	if *pacing != "staggered" && *pacing != "lockstep" {
		fmt.Fprintln(os.Stderr, "outboxbench: -pacing staggered or lockstep")
		os.Exit(2)
	}
	lockstepPacing = *pacing == "lockstep"
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "outboxbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, out io.Writer) error {
	if err := checkLoopback(o.adminURL); err != nil {
		return err
	}
	if _, err := os.Stat(o.outboxd); err != nil {
		return fmt.Errorf("-outboxd %s: %w (go build -o bin/outboxd ./cmd/outboxd)", o.outboxd, err)
	}
	if o.runs < 1 || o.runs > 20 || o.scale <= 0 || o.scale > 10 {
		return errors.New("-runs must be 1..20 and -scale in (0, 10]")
	}
	if o.pgDelay < 0 || o.pgDelay > 50*time.Millisecond {
		return errors.New("-pg-delay must be 0..50ms")
	}
	if c := o.custom; c.clients < 1 || c.clients > 15000 || c.producers < 1 || c.producers > 64 || c.batch < 1 || c.batch > maxBatch ||
		c.rate < 0 || c.duration <= 0 || c.duration > 10*time.Minute || c.padBytes < 0 || c.padBytes > 200000 || c.burst < 0 || c.burst > maxBatch {
		return fmt.Errorf("custom load out of bounds: -clients 1..15000, -producers 1..64, -batch 1..%d, -burst 0..%[1]d, -rate ≥ 0, -duration ≤ 10m, -pad ≤ 200000", maxBatch)
	}
	raiseFileLimit()
	names, err := resolveScenarios(o.scenario)
	if err != nil {
		return err
	}
	env, err := newBenchEnv(o)
	if err != nil {
		return err
	}
	defer env.close()
	var summaries []summary
	for _, name := range names {
		var rs []result
		for i := range o.runs {
			fmt.Fprintf(os.Stderr, "== %s, run %d of %d\n", name, i+1, o.runs)
			r, err := scenarios[name](ctx, env)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			rs = append(rs, r)
		}
		s := summarize(name, rs)
		summaries = append(summaries, s)
		printSummary(out, s)
	}
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(summaries, "", "  ")
		if err := os.WriteFile(o.jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if o.svgOut != "" {
		if err := os.WriteFile(o.svgOut, []byte(drawSVG(summaries)), 0o644); err != nil {
			return err
		}
	}
	failed := 0
	for _, s := range summaries {
		for _, t := range s.Targets {
			if !t.Pass {
				failed++
			}
		}
	}
	fmt.Fprintf(out, "\n%d scenario(s), %d target(s) missed\n", len(summaries), failed)
	return nil
}

// checkLoopback refuses a database that is not on this machine.
func checkLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("-admin-url: %w", err)
	}
	host := u.Hostname()
	if host == "" || host == "localhost" || strings.HasPrefix(host, "/") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("-admin-url host %q: outboxbench only runs against this machine (127.0.0.1)", host)
}

func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// metric is one measured figure of a run.
type metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// target is a figure a scenario must reach.
type target struct {
	Metric   string  `json:"metric"`
	Op       string  `json:"op"` // "<=" or ">="
	Value    float64 `json:"value"`
	Measured float64 `json:"measured"` // the median over runs
	Pass     bool    `json:"pass"`
}

type result struct {
	Metrics []metric
	Targets []target // Measured filled in by summarize
	Latency *hist
}

func (r *result) add(name string, v float64, unit string) {
	r.Metrics = append(r.Metrics, metric{name, v, unit})
}

type summary struct {
	Scenario string             `json:"scenario"`
	Runs     int                `json:"runs"`
	Median   map[string]float64 `json:"median"`
	Min      map[string]float64 `json:"min"`
	Max      map[string]float64 `json:"max"`
	Units    map[string]string  `json:"units"`
	Order    []string           `json:"order"`
	Targets  []target           `json:"targets"`
	cdf      [][2]float64
}

func summarize(name string, rs []result) summary {
	s := summary{Scenario: name, Runs: len(rs), Median: map[string]float64{}, Min: map[string]float64{},
		Max: map[string]float64{}, Units: map[string]string{}}
	values := map[string][]float64{}
	for _, r := range rs {
		for _, m := range r.Metrics {
			if _, ok := values[m.Name]; !ok {
				s.Order = append(s.Order, m.Name)
			}
			values[m.Name] = append(values[m.Name], m.Value)
			s.Units[m.Name] = m.Unit
		}
	}
	for k, vs := range values {
		sort.Float64s(vs)
		s.Median[k], s.Min[k], s.Max[k] = vs[len(vs)/2], vs[0], vs[len(vs)-1]
	}
	if len(rs) > 0 {
		for _, t := range rs[0].Targets {
			t.Measured = s.Median[t.Metric]
			t.Pass = (t.Op == "<=" && t.Measured <= t.Value) || (t.Op == ">=" && t.Measured >= t.Value)
			s.Targets = append(s.Targets, t)
		}
		// The median run's latency distribution, for the SVG.
		if rs[len(rs)/2].Latency != nil {
			s.cdf = rs[len(rs)/2].Latency.cdf()
		}
	}
	return s
}

func printSummary(w io.Writer, s summary) {
	fmt.Fprintf(w, "\n%s (%d runs)\n", s.Scenario, s.Runs)
	fmt.Fprintf(w, "  %-28s %14s %14s %14s  %s\n", "metric", "median", "min", "max", "unit")
	for _, k := range s.Order {
		fmt.Fprintf(w, "  %-28s %14s %14s %14s  %s\n", k, num(s.Median[k]), num(s.Min[k]), num(s.Max[k]), s.Units[k])
	}
	for _, t := range s.Targets {
		mark := "PASS"
		if !t.Pass {
			mark = "MISS"
		}
		fmt.Fprintf(w, "  target %-21s %s %s: measured %s  %s\n", t.Metric, t.Op, num(t.Value), num(t.Measured), mark)
	}
}

func num(v float64) string {
	switch {
	case v == float64(int64(v)) && v < 1e15 && v > -1e15:
		return fmt.Sprintf("%d", int64(v))
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}
