package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

type scenarioFunc func(ctx context.Context, e *benchEnv) (result, error)

var scenarios = map[string]scenarioFunc{
	"backlog":         backlog,
	"steady-100":      func(ctx context.Context, e *benchEnv) (result, error) { return steady(ctx, e, 100, 1000, 5, 25, 0) },
	"steady-1000":     func(ctx context.Context, e *benchEnv) (result, error) { return steady(ctx, e, 1000, 100, 0, 50, 0) },
	"max":             maxRate,
	"idle-conns":      idleConns,
	"producer-impact": producerImpact,
	"idle-cpu":        idleCPU,
	"tcp-floor":       tcpFloor,
	"reconnect-storm": reconnectStorm,
	"vs-centrifugo":   versusCentrifugo,
	"standby-reads":   standbyReads,
	"hot-channel":     hotChannel,
	"two-nodes":       twoNodes,
	"resume":          resumeVs,
	"custom":          custom,
}

// maxBatch bounds -batch and -burst: one transaction of a million events.
const maxBatch = 1_000_000

// custom runs the load given on the command line: producers, or with
// -burst one transaction whose drain is measured.
func custom(ctx context.Context, e *benchEnv) (result, error) {
	c := e.o.custom
	if c.burst > 0 {
		pool, sc, cleanup, err := e.setup(ctx)
		if err != nil {
			return result{}, err
		}
		defer cleanup()
		return burstOn(ctx, pool, sc, c.clients, c.burst)
	}
	return load(ctx, e, c.clients, loadSpec{producers: c.producers, rate: c.rate, batch: c.batch, duration: c.duration, padBytes: c.padBytes})
}

// numbered lists the scenarios in BENCHMARKS.md's order: scenario k is
// numbered[k-1].
var numbered = []string{"backlog", "steady-100", "steady-1000", "max", "idle-conns", "producer-impact", "idle-cpu",
	"tcp-floor", "reconnect-storm", "vs-centrifugo", "standby-reads", "hot-channel", "two-nodes", "resume"}

// againstCentrifugo are the scenarios that need the peer's binary.
var againstCentrifugo = []string{"vs-centrifugo", "hot-channel", "two-nodes", "resume"}

// scenarioNames is what "all" runs: every numbered scenario but those
// against Centrifugo.
func scenarioNames() []string {
	return slices.DeleteFunc(slices.Clone(numbered), func(n string) bool { return slices.Contains(againstCentrifugo, n) })
}

// scenarioList is the numbered scenarios for the usage text: "1 backlog, …".
func scenarioList() string {
	parts := make([]string, len(numbered))
	for i, n := range numbered {
		parts[i] = fmt.Sprintf("%d %s", i+1, n)
	}
	return strings.Join(parts, ", ")
}

// resolveScenarios reads -scenario: "all", or a comma list of names and
// numbers.
func resolveScenarios(arg string) ([]string, error) {
	if arg == "all" {
		return scenarioNames(), nil
	}
	var out []string
	for _, a := range strings.Split(arg, ",") {
		a = strings.TrimSpace(a)
		if k, err := strconv.Atoi(a); err == nil {
			if k < 1 || k > len(numbered) {
				return nil, fmt.Errorf("no scenario %d; they are numbered 1 to %d: %s", k, len(numbered), scenarioList())
			}
			a = numbered[k-1]
		}
		if _, ok := scenarios[a]; !ok {
			return nil, fmt.Errorf("unknown scenario %q; want a name or number (%s), custom, or all", a, scenarioList())
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// waitPosition waits until position reaches target (the sequencer, or the
// peer, has numbered every committed event) and returns it.
func waitPosition(ctx context.Context, pool *pgxpool.Pool, position func(context.Context, *pgxpool.Pool) (int64, error), target int64) (int64, error) {
	last, err := position(ctx, pool)
	for err == nil && last < target {
		if err = ctx.Err(); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
		last, err = position(ctx, pool)
	}
	return last, err
}

func head(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var h int64
	err := pool.QueryRow(ctx, `SELECT outbox.head()`).Scan(&h)
	return h, err
}

// deliveryStats adds what the clients saw: lost, duplicated, out of order,
// messages delivered, and the merged latency.
func deliveryStats(r *result, cs []*client, firstSeq, lastSeq int64) (delivered int64) {
	lat := newHist()
	var lost, dups, inversions int64
	expected := lastSeq - firstSeq + 1
	for _, c := range cs {
		_, distinct, d, _, _, _ := c.snapshot()
		lost += max(0, expected-distinct)
		dups += d
		inversions += c.outOfOrder()
		delivered += distinct
		lat.merge(c.lat)
	}
	r.Latency = lat
	r.add("latency_p50", ms(lat.quantile(0.50)), "ms")
	r.add("latency_p90", ms(lat.quantile(0.90)), "ms")
	r.add("latency_p99", ms(lat.quantile(0.99)), "ms")
	r.add("latency_p999", ms(lat.quantile(0.999)), "ms")
	r.add("latency_max", ms(lat.quantile(1)), "ms")
	r.add("lost", float64(lost), "events (all clients)")
	r.add("duplicated", float64(dups), "events (all clients)")
	r.add("out_of_order", float64(inversions), "events that arrived after a higher seq (all clients)")
	return delivered
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// 1. Backlog drain: events pending before outboxd starts, one client.
func backlog(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	n := e.n(1000000)
	pool, err := e.freshDB(ctx)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `INSERT INTO outbox.events (topic, payload)
		SELECT $2, jsonb_build_object('n', g, 'pad', repeat('x', 64)) FROM generate_series(1, $1::int) g`, n, benchTopic); err != nil {
		return r, err
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE outbox.events`); err != nil {
		return r, err
	}
	start := time.Now()
	sc, err := e.startSidecar(ctx)
	if err != nil {
		return r, err
	}
	defer sc.stop()
	cs, err := connectClients(ctx, sc.dialSince(0), 1, nil)
	if err != nil {
		return r, err
	}
	defer closeClients(cs)
	stop := progress("backlog", 30*time.Second, func() string {
		last, _, _, _, _, _ := cs[0].snapshot()
		return fmt.Sprintf("%d/%d", last, n)
	})
	waitDelivered(cs, int64(n), 30*time.Second, 10*time.Minute)
	stop()
	_, distinct, _, _, _, lastAt := cs[0].snapshot()
	took := lastAt.Sub(start)
	r.add("events", float64(n), "events")
	r.add("drain_seconds", took.Seconds(), "s (outboxd start → last receipt)")
	r.add("events_per_s", float64(distinct)/took.Seconds(), "events/s")
	r.add("lost", float64(int64(n)-distinct), "events")
	r.Targets = []target{{Metric: "events_per_s", Op: ">=", Value: 40000}, {Metric: "lost", Op: "<=", Value: 0}}
	return r, nil
}

// steady runs rate events/s broadcast to clients for the duration.
func steady(ctx context.Context, e *benchEnv, clients int, rate float64, p50, p99 float64, producers int) (result, error) {
	spec := loadSpec{producers: max(producers, 4), rate: rate, batch: 1, duration: e.d(30 * time.Second), padBytes: 64}
	r, err := load(ctx, e, e.n(clients), spec)
	if err != nil {
		return r, err
	}
	if p50 > 0 {
		r.Targets = append(r.Targets, target{Metric: "latency_p50", Op: "<=", Value: p50})
	}
	r.Targets = append(r.Targets, target{Metric: "latency_p99", Op: "<=", Value: p99}, target{Metric: "lost", Op: "<=", Value: 0})
	return r, nil
}

// 4. Maximum sustained rate to 10 clients: a ladder of fixed rates, each
// for a while; the answer is the highest rate whose p99 stays ≤ 100 ms with
// nothing lost. (Producers flat out would only measure a growing queue.)
func maxRate(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	best := 0.0
	var bestRun result
	for _, rate := range []float64{2500, 5000, 7500, 10000, 15000, 20000, 25000, 30000} {
		spec := loadSpec{producers: 8, rate: rate, batch: 10, duration: e.d(10 * time.Second), padBytes: 64}
		step, err := load(ctx, e, 10, spec)
		if err != nil {
			return r, err
		}
		p99, lost := metricValue(step, "latency_p99"), metricValue(step, "lost")
		sustained := metricValue(step, "events_per_s") >= 0.97*rate
		r.add(fmt.Sprintf("p99_at_%g", rate), p99, "ms")
		if p99 > 100 || lost > 0 || !sustained {
			break
		}
		best, bestRun = rate, step
	}
	r.add("max_sustained_events_per_s", best, "events/s with p99 ≤ 100 ms")
	r.add("messages_per_s_at_max", metricValue(bestRun, "messages_per_s"), "messages/s delivered")
	r.add("outboxd_cpu_at_max", metricValue(bestRun, "outboxd_cpu"), "% of one core")
	r.Latency = bestRun.Latency
	r.Targets = []target{{Metric: "max_sustained_events_per_s", Op: ">=", Value: 20000}}
	return r, nil
}

func metricValue(r result, name string) float64 {
	for _, m := range r.Metrics {
		if m.Name == name {
			return m.Value
		}
	}
	return 0
}

// load is the shared body of the streaming scenarios.
func load(ctx context.Context, e *benchEnv, clients int, spec loadSpec) (result, error) {
	pool, sc, cleanup, err := e.setup(ctx)
	if err != nil {
		return result{}, err
	}
	defer cleanup()
	return loadOn(ctx, pool, sc, clients, spec)
}

// connectAt connects clients to sv and reads the position they start at.
func connectAt(ctx context.Context, pool *pgxpool.Pool, sv server, clients int) ([]*client, int64, error) {
	cs, err := connectClients(ctx, sv.dial, clients, nil)
	if err != nil {
		return nil, 0, err
	}
	first, err := sv.position(ctx, pool)
	if err != nil {
		closeClients(cs)
		return nil, 0, err
	}
	return cs, first, nil
}

// loadOn runs spec against a running server (outboxd or a peer) with
// clients connected to it, and measures what they receive.
func loadOn(ctx context.Context, pool *pgxpool.Pool, sv server, clients int, spec loadSpec) (result, error) {
	var r result
	cs, first, err := connectAt(ctx, pool, sv, clients)
	if err != nil {
		return r, err
	}
	defer closeClients(cs)
	spec.insert = sv.inserter()
	var committed atomic.Int64
	_, ours := sv.(*sidecar)
	var pgBefore int64
	if ours {
		pgBefore = postgresTicks(ctx, pool)
	}
	before, _ := sampleProc(sv.pid())
	stop := progress(fmt.Sprintf("%d clients", clients), spec.duration, func() string {
		last, _, _, _, _, _ := cs[0].snapshot()
		return fmt.Sprintf("committed %d, client 0 at seq %d", committed.Load(), last)
	})
	start := time.Now()
	txs, err := produce(ctx, pool, spec, &committed)
	produced := time.Since(start)
	if err != nil {
		stop()
		return r, fmt.Errorf("producers: %w", err)
	}
	last, err := waitPosition(ctx, pool, sv.position, first+committed.Load())
	if err != nil {
		stop()
		return r, err
	}
	waitDelivered(cs, last, 5*time.Second, 2*time.Minute)
	stop()
	after, _ := sampleProc(sv.pid())
	var pgAfter int64
	if ours {
		pgAfter = postgresTicks(ctx, pool)
	}
	delivered := deliveryStats(&r, cs, first+1, last)
	span := lastReceipt(cs).Sub(start).Seconds()
	events := float64(last - first)
	r.Metrics = append([]metric{
		{"clients", float64(clients), "connections"},
		{"events", events, "events"},
		{"transactions", float64(txs), "tx"},
		{"events_per_s", events / produced.Seconds(), "events/s committed"},
		{"messages_per_s", float64(delivered) / span, "messages/s delivered"},
	}, r.Metrics...)
	r.add("server_cpu", cpuPercent(before, after), "% of one core")
	r.add("server_rss", float64(after.rssKiB)/1024, "MiB")
	var frames int64
	for _, c := range cs {
		frames += c.frames.Load()
	}
	if delivered > 0 {
		// Each WebSocket message is a write on the server: fewer per event,
		// fewer system calls.
		r.add("frames_per_event", float64(frames)/float64(delivered), "WebSocket messages per event delivered")
	}
	if ours {
		// Its PostgreSQL sessions (sequencer, tailer, listener, replay):
		// the relay's cost to the database, which the producers share.
		window := after.at.Sub(before.at).Seconds()
		pgCPU := float64(pgAfter-pgBefore) / clockTicks / window * 100
		r.add("server_postgres_cpu", pgCPU, "% of one core (outboxd's PostgreSQL sessions)")
		r.add("server_cpu_per_event", (cpuPercent(before, after)+pgCPU)*1e4/(events/window), "µs of CPU (outboxd + its sessions)")
	}
	return r, nil
}

// 5. Idle connections: memory per connection, then one broadcast to all.
func idleConns(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	n := e.n(10000)
	pool, sc, cleanup, err := e.setup(ctx)
	if err != nil {
		return r, err
	}
	defer cleanup()
	time.Sleep(500 * time.Millisecond)
	before, err := sampleProc(sc.pid())
	if err != nil {
		return r, err
	}
	var connected atomic.Int64
	stop := progress("connecting", 20*time.Second, func() string { return fmt.Sprintf("%d/%d", connected.Load(), n) })
	cs, err := connectClients(ctx, sc.dial, n, func(k int) { connected.Store(int64(k)) })
	stop()
	if err != nil {
		return r, err
	}
	defer closeClients(cs)
	time.Sleep(2 * time.Second) // let the runtime settle
	after, _ := sampleProc(sc.pid())
	r.add("connections", float64(n), "connections")
	r.add("rss_before", float64(before.rssKiB)/1024, "MiB")
	r.add("rss_after", float64(after.rssKiB)/1024, "MiB")
	r.add("rss_per_connection", float64(after.rssKiB-before.rssKiB)*1024/float64(n)/1000, "KB")

	// One event broadcast to all: from INSERT to the last receipt.
	at := time.Now()
	if _, err := pool.Exec(ctx, `SELECT outbox.emit($1, jsonb_build_object('t', $2::bigint))`, benchTopic, at.UnixNano()); err != nil {
		return r, err
	}
	base := arrivals.Load()
	waitArrivals(base, int64(n), time.Minute)
	h, _ := head(ctx, pool)
	r.add("event_broadcast_last_receipt", ms(lastReceipt(cs).Sub(at)), "ms (INSERT → last of all clients)")
	deliveryStats(&r, cs, h, h)

	// The test broadcast: from the POST to the last notification.
	base = arrivals.Load()
	at = time.Now()
	resp, err := http.Post("http://"+sc.addr+"/ws/_test/broadcast", "application/json", strings.NewReader(`{"title":"bench"}`))
	if err != nil {
		return r, err
	}
	resp.Body.Close()
	waitArrivals(base, int64(n), time.Minute)
	r.add("notified_clients", float64(notesReceived(cs)), "clients")
	r.add("test_broadcast_last_receipt", ms(lastReceipt(cs).Sub(at)), "ms (POST → last of all clients)")
	r.Targets = []target{
		{Metric: "rss_per_connection", Op: "<=", Value: 20},
		{Metric: "test_broadcast_last_receipt", Op: "<=", Value: 50},
	}
	return r, nil
}

func lastReceipt(cs []*client) time.Time {
	var t time.Time
	for _, c := range cs {
		if _, _, _, _, _, at := c.snapshot(); at.After(t) {
			t = at
		}
	}
	return t
}

func notesReceived(cs []*client) int64 {
	var n int64
	for _, c := range cs {
		_, _, _, _, notes, _ := c.snapshot()
		if notes > 0 {
			n++
		}
	}
	return n
}

// 6. Producer impact: single-row transactions with outboxd stopped and
// running, in the order stopped, running, running, stopped (so that drift
// in the machine's speed during a run hits both sides alike); the ratio is
// of the sums.
func producerImpact(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	spec := loadSpec{producers: 8, rate: 0, batch: 1, duration: e.d(10 * time.Second), padBytes: 64}
	measure := func(withSidecar bool) (float64, error) {
		pool, err := e.freshDB(ctx)
		if err != nil {
			return 0, err
		}
		defer pool.Close()
		if withSidecar {
			sc, err := e.startSidecar(ctx)
			if err != nil {
				return 0, err
			}
			defer sc.stop()
			cs, err := connectClients(ctx, sc.dial, 1, nil)
			if err != nil {
				return 0, err
			}
			defer closeClients(cs)
		}
		var committed atomic.Int64
		label := "outboxd stopped"
		if withSidecar {
			label = "outboxd running"
		}
		stop := progress(label, spec.duration, func() string { return fmt.Sprintf("%d tx", committed.Load()) })
		start := time.Now()
		txs, err := produce(ctx, pool, spec, &committed)
		stop()
		return float64(txs) / time.Since(start).Seconds(), err
	}
	var without, with float64
	for _, running := range []bool{false, true, true, false} {
		tps, err := measure(running)
		if err != nil {
			return r, err
		}
		if running {
			with += tps / 2
		} else {
			without += tps / 2
		}
	}
	r.add("tx_per_s_without_outboxd", without, "tx/s")
	r.add("tx_per_s_with_outboxd", with, "tx/s")
	r.add("ratio", 100*with/without, "%")
	r.Targets = []target{{Metric: "ratio", Op: ">=", Value: 85}}
	return r, nil
}

// 7. Idle: outboxd with nothing to relay.
func idleCPU(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	pool, sc, cleanup, err := e.setup(ctx)
	if err != nil {
		return r, err
	}
	defer cleanup()
	time.Sleep(2 * time.Second)
	window := e.d(10 * time.Second)
	a, err := sampleProc(sc.pid())
	if err != nil {
		return r, err
	}
	pgA := postgresTicks(ctx, pool)
	stop := progress("idle", window, func() string { return "" })
	time.Sleep(window)
	stop()
	b, _ := sampleProc(sc.pid())
	pgB := postgresTicks(ctx, pool)
	r.add("outboxd_cpu", cpuPercent(a, b), "% of one core")
	r.add("postgres_backends_cpu", float64(pgB-pgA)/clockTicks/window.Seconds()*100, "% of one core (outboxd's sessions)")
	r.add("total_cpu", cpuPercent(a, b)+float64(pgB-pgA)/clockTicks/window.Seconds()*100, "% of one core")
	r.Targets = []target{{Metric: "total_cpu", Op: "<=", Value: 1}}
	return r, nil
}

// postgresTicks sums the CPU ticks of the PostgreSQL backends serving
// outboxd (application_name outboxd…), read from /proc.
func postgresTicks(ctx context.Context, pool *pgxpool.Pool) int64 {
	rows, err := pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'outboxd%'`)
	if err != nil {
		return 0
	}
	var pids []int
	for rows.Next() {
		var pid int
		if rows.Scan(&pid) == nil {
			pids = append(pids, pid)
		}
	}
	rows.Close()
	var total int64
	for _, pid := range pids {
		if s, err := sampleProc(pid); err == nil {
			total += s.cpuTicks
		}
	}
	return total
}
