package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/pgcluster"
)

// 11. Reads from a standby: what READ_DATABASE_URL takes off the primary.
//
// A primary and a streaming standby of its own (internal/pgcluster, with
// pg_stat_statements), three outboxd replicas with clients on each, a
// steady producer, then clients resuming from the start of the run (their
// catch-up reads the table). The same run twice — every replica reading
// the primary, then every replica with READ_DATABASE_URL (the order
// alternates from run to run) — and, for each, the event reads counted
// by pg_stat_statements on the primary and on the standby: the tailers'
// pages and the replay pages, calls, rows and execution time.
func standbyReads(ctx context.Context, e *benchEnv) (result, error) {
	return withBenchT(func(bt *benchT) (result, error) { return e.standbyReads(ctx, bt) })
}

func (e *benchEnv) standbyReads(ctx context.Context, bt *benchT) (res result, err error) {
	primary := pgcluster.StartPrimary(bt, "shared_preload_libraries = 'pg_stat_statements'",
		"pg_stat_statements.max = 1000")
	standby := primary.StartStandby()

	const replicas = 3
	spec := standbyLoad{
		replicas: replicas, clients: e.n(20), resumers: e.n(20),
		load: loadSpec{producers: 4, rate: 500, batch: 1, duration: e.d(15 * time.Second)},
	}
	modes := []bool{false, true}
	if standbyRun.Add(1)%2 == 0 {
		modes = []bool{true, false}
	}
	for _, withStandby := range modes {
		name := "primary_only"
		if withStandby {
			name = "with_standby"
		}
		m, err := spec.run(ctx, e, primary, standby, withStandby)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		for _, x := range m {
			res.add(name+"."+x.Name, x.Value, x.Unit)
		}
	}
	return res, nil
}

// standbyRun alternates the order of the two halves from run to run.
var standbyRun atomic.Int64

type standbyLoad struct {
	replicas, clients, resumers int
	load                        loadSpec
}

func (s standbyLoad) run(ctx context.Context, e *benchEnv, primary, standby *pgcluster.Cluster, withStandby bool) ([]metric, error) {
	sub, pool, err := e.onCluster(ctx, primary)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	standby.WaitReplayed(primary, time.Minute)
	standbyURL := standby.URL(sub.o.dbName)
	if withStandby {
		sub.o.extraEnv = e.o.extraEnv + ",READ_DATABASE_URL=" + standbyURL
	}
	var sidecars []*sidecar
	defer func() {
		for _, sc := range sidecars {
			sc.stop()
		}
	}()
	for range s.replicas {
		sc, err := sub.startSidecar(ctx)
		if err != nil {
			return nil, err
		}
		sidecars = append(sidecars, sc)
		if withStandby {
			if err := waitReadsSource(ctx, sc.addr, "standby", 30*time.Second); err != nil {
				return nil, err
			}
		}
	}
	var live []*client
	defer func() { closeClients(live) }()
	for _, sc := range sidecars {
		cs, err := connectClients(ctx, sc.dial, s.clients, nil)
		if err != nil {
			return nil, err
		}
		live = append(live, cs...)
	}
	first, err := head(ctx, pool)
	if err != nil {
		return nil, err
	}
	stdbyPool, err := pgxpool.New(ctx, standbyURL)
	if err != nil {
		return nil, err
	}
	defer stdbyPool.Close()
	for _, p := range []*pgxpool.Pool{pool, stdbyPool} {
		if _, err := p.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
			return nil, fmt.Errorf("pg_stat_statements_reset: %w", err)
		}
	}
	start := time.Now()
	var committed atomic.Int64
	stop := progress(fmt.Sprintf("standby=%v", withStandby), s.load.duration, func() string {
		return fmt.Sprintf("committed %d", committed.Load())
	})
	_, err = produce(ctx, pool, s.load, &committed)
	stop()
	if err != nil {
		return nil, fmt.Errorf("producers: %w", err)
	}
	last, err := waitPosition(ctx, pool, head, first+committed.Load())
	if err != nil {
		return nil, err
	}
	waitDelivered(live, last, 5*time.Second, 2*time.Minute)
	// Clients that were away for the whole run come back on every replica.
	resumeStart := time.Now()
	var resumed []*client
	defer func() { closeClients(resumed) }()
	for _, sc := range sidecars {
		cs, err := connectClients(ctx, sc.dialSince(first), s.resumers, nil)
		if err != nil {
			return nil, err
		}
		resumed = append(resumed, cs...)
	}
	waitDelivered(resumed, last, 5*time.Second, 2*time.Minute)
	caughtUp := lastReceipt(resumed).Sub(resumeStart)
	window := time.Since(start).Seconds()

	// Latency of the live clients (a resumed client's events are as old
	// as its absence); loss, duplicates and order over every client.
	var lr, r result
	deliveryStats(&lr, live, first+1, last)
	deliveryStats(&r, append(append([]*client(nil), live...), resumed...), first+1, last)
	var out []metric
	for _, m := range lr.Metrics {
		if m.Name == "latency_p50" || m.Name == "latency_p99" {
			out = append(out, metric{"live_" + m.Name, m.Value, m.Unit})
		}
	}
	for _, m := range r.Metrics {
		switch m.Name {
		case "lost", "duplicated", "out_of_order":
			out = append(out, m)
		}
	}
	out = append(out, metric{"events", float64(last - first), "events"},
		metric{"resume_caught_up", caughtUp.Seconds(), "s (every resuming client at the head)"})
	for _, db := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"primary", pool}, {"standby", stdbyPool}} {
		st, err := eventReads(ctx, db.pool)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", db.name, err)
		}
		out = append(out,
			metric{db.name + "_event_reads_per_s", st.calls / window, "statements/s (tailer and replay pages)"},
			metric{db.name + "_event_rows_per_s", st.rows / window, "rows/s returned by them"},
			metric{db.name + "_event_read_ms_per_s", st.ms / window, "ms of execution per s"})
		if db.name == "primary" {
			out = append(out, metric{"primary_all_ms_per_s", st.allMs / window, "ms of execution per s, every statement (producers' included)"})
		}
	}
	return out, nil
}

type readCounts struct{ calls, rows, ms, allMs float64 }

// eventReads sums pg_stat_statements over outboxd's event reads: the
// tailer's page (… WHERE seq > $1 ORDER BY seq LIMIT $2), the replay page
// (LEFT JOIN LATERAL) and its next-entitled lookup.
func eventReads(ctx context.Context, pool *pgxpool.Pool) (readCounts, error) {
	var c readCounts
	err := pool.QueryRow(ctx, `SELECT
  coalesce(sum(calls) FILTER (WHERE r), 0)::float8, coalesce(sum(rows) FILTER (WHERE r), 0)::float8,
  coalesce(sum(total_exec_time) FILTER (WHERE r), 0)::float8, coalesce(sum(total_exec_time), 0)::float8
FROM (SELECT calls, rows, total_exec_time,
             query LIKE '%WHERE seq > $1 ORDER BY seq LIMIT $2%' OR query LIKE '%LEFT JOIN LATERAL%'
          OR query LIKE 'SELECT least(%' AS r
      FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%') s`).Scan(&c.calls, &c.rows, &c.ms, &c.allMs)
	return c, err
}

// waitReadsSource waits until the replica at addr reports event reads
// going to source in /ws/stats.
func waitReadsSource(ctx context.Context, addr, source string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := http.Get("http://" + addr + "/ws/stats")
		if err == nil {
			var body struct {
				Stats struct {
					Relay struct {
						Reads *struct {
							Source string `json:"source"`
						} `json:"reads"`
					} `json:"relay"`
				} `json:"stats"`
			}
			err = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if err == nil && body.Stats.Relay.Reads != nil && body.Stats.Relay.Reads.Source == source {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s: event reads not from the %s within %s", addr, source, limit)
}

// onCluster is e on a PostgreSQL cluster of the scenario's own: a fresh,
// migrated benchmark database there, with pg_stat_statements.
func (e *benchEnv) onCluster(ctx context.Context, c *pgcluster.Cluster) (*benchEnv, *pgxpool.Pool, error) {
	sub := &benchEnv{o: e.o}
	sub.o.adminURL = c.URL("")
	pool, err := sub.freshDB(ctx)
	if err != nil {
		return nil, nil, err
	}
	if _, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return sub, pool, nil
}

// withBenchT runs f with a benchT, turning its Fatalf into f's error, and
// runs its cleanups after f.
func withBenchT(f func(bt *benchT) (result, error)) (res result, err error) {
	bt := &benchT{}
	defer bt.close()
	defer func() {
		switch p := recover().(type) {
		case nil:
		case benchFatal:
			err = p.err
		default:
			panic(p)
		}
	}()
	return f(bt)
}

// benchT is what pgcluster needs of a test, for a benchmark: Fatalf
// unwinds to the scenario (benchFatal), Cleanup runs at close.
type benchT struct{ cleanups []func() }

type benchFatal struct{ err error }

func (b *benchT) Helper() {}
func (b *benchT) Fatalf(format string, args ...any) {
	panic(benchFatal{fmt.Errorf(format, args...)})
}
func (b *benchT) Cleanup(f func()) { b.cleanups = append(b.cleanups, f) }
func (b *benchT) close() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
}
