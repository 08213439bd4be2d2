package main

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/grupogad/outboxd/internal/pgcluster"
)

// 13. Two nodes of each on one PostgreSQL: two outboxd replicas, then two
// Centrifugo nodes with the PostgreSQL stream broker (the order alternates
// run to run), clients split across the two, 8 producers at 500 events/s.
// Delivery to the clients of both nodes (latency, loss, duplicates,
// order), the nodes' CPU, and what the servers cost the database:
// pg_stat_statements on a PostgreSQL cluster of the scenario's own,
// every statement but the producers' (their publish, BEGIN and COMMIT).
func twoNodes(ctx context.Context, e *benchEnv) (result, error) {
	return withBenchT(func(bt *benchT) (result, error) { return e.twoNodes(ctx, bt) })
}

func (e *benchEnv) twoNodes(ctx context.Context, bt *benchT) (res result, err error) {
	primary := pgcluster.StartPrimary(bt, "shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.max = 2000")
	order := []string{"outboxd", "stream"}
	if twoNodesRun.Add(1)%2 == 0 {
		order = []string{"stream", "outboxd"}
	}
	got := map[string]result{}
	for _, sys := range order {
		r, err := e.twoNodesOn(ctx, primary, sys)
		if err != nil {
			return res, fmt.Errorf("%s: %w", sys, err)
		}
		got[sys] = r
		for _, m := range r.Metrics {
			res.add(sys+"."+m.Name, m.Value, m.Unit)
		}
	}
	for _, k := range []string{"latency_p50", "latency_p99", "servers_cpu", "db_exec_ms_per_s", "db_statements_per_s"} {
		if a, b := metricValue(got["outboxd"], k), metricValue(got["stream"], k); a > 0 && b > 0 {
			res.add("ratio_"+k, a/b, "outboxd / stream broker")
		}
	}
	return res, nil
}

var twoNodesRun atomic.Int64

func (e *benchEnv) twoNodesOn(ctx context.Context, primary *pgcluster.Cluster, sys string) (result, error) {
	var r result
	sub, pool, err := e.onCluster(ctx, primary)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	var nodes []server
	for range 2 {
		var sv server
		switch sys {
		case "outboxd":
			sc, err := sub.startSidecar(ctx)
			if err != nil {
				return r, err
			}
			defer sc.stop()
			sv = sc
		default:
			c, err := sub.startCentrifugoStream(ctx, pool)
			if err != nil {
				return r, err
			}
			defer c.stop()
			sv = c
		}
		nodes = append(nodes, sv)
	}
	var cs []*client
	defer func() { closeClients(cs) }()
	for _, sv := range nodes {
		c, err := connectClients(ctx, sv.dial, e.n(50), nil)
		if err != nil {
			return r, err
		}
		cs = append(cs, c...)
	}
	first, err := nodes[0].position(ctx, pool)
	if err != nil {
		return r, err
	}
	if _, err := pool.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
		return r, err
	}
	var before []procSample
	for _, sv := range nodes {
		s, _ := sampleProc(sv.pid())
		before = append(before, s)
	}
	spec := loadSpec{producers: 8, rate: 500, batch: 1, duration: e.d(15 * time.Second), insert: nodes[0].inserter()}
	var committed atomic.Int64
	stop := progress(sys+" × 2", spec.duration, func() string { return fmt.Sprintf("committed %d", committed.Load()) })
	start := time.Now()
	if _, err := produce(ctx, pool, spec, &committed); err != nil {
		stop()
		return r, fmt.Errorf("producers: %w", err)
	}
	stop()
	last, err := waitPosition(ctx, pool, nodes[0].position, first+committed.Load())
	if err != nil {
		return r, err
	}
	waitDelivered(cs, last, 5*time.Second, 2*time.Minute)
	window := time.Since(start).Seconds()
	var cpu float64
	for i, sv := range nodes {
		after, _ := sampleProc(sv.pid())
		cpu += cpuPercent(before[i], after)
	}
	r.add("events", float64(last-first), "events")
	deliveryStats(&r, cs, first+1, last)
	r.add("servers_cpu", cpu, "% of one core (both nodes)")
	var calls, execMs float64
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::float8, coalesce(sum(total_exec_time), 0)::float8
FROM pg_stat_statements
WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%outbox.emit%' AND query NOT LIKE '%cf_stream_publish%'
  AND lower(query) NOT IN ('begin', 'commit')`).Scan(&calls, &execMs); err != nil {
		return r, err
	}
	// The heaviest of them, on stderr: where the database's time goes.
	if rows, err := pool.Query(ctx, `SELECT calls, total_exec_time, left(regexp_replace(query, '\s+', ' ', 'g'), 100)
FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 4`); err == nil {
		for rows.Next() {
			var n int64
			var t float64
			var q string
			if rows.Scan(&n, &t, &q) == nil {
				fmt.Fprintf(os.Stderr, "%s: %8d calls %10.0f ms  %s\n", sys, n, t, q)
			}
		}
		rows.Close()
	}
	r.add("db_statements_per_s", calls/window, "statements/s the servers ran (producers' excluded)")
	r.add("db_exec_ms_per_s", execMs/window, "ms of execution per s in them")
	return r, nil
}
