package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/outbox"
)

// 12. A hot channel with real transactions, against Centrifugo's
// PostgreSQL stream broker: 16 producers, each transaction updates the
// producer's own business row, publishes as its last statement (outboxd:
// outbox.Emit; the peer: cf_stream_publish) and commits — then the same
// with 2 ms of application work after the publish (an ORM flushing
// later). Each as fast as the producers go, with the server running and
// with it stopped (the schema in place, nothing relaying), for both
// systems, alternated within the run. Committed transactions per second
// are the measure; the latency of those runs is at unequal loads, so a
// last pair paces the same producers at 200 tx/s, which both sustain, to
// compare latency.
func hotChannel(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	const producers = 16
	order := []string{"outboxd", "stream"}
	if hotRun.Add(1)%2 == 0 {
		order = []string{"stream", "outboxd"}
	}
	for _, sys := range order {
		res, err := e.hotRun(ctx, sys, producers, 0, true, hotEqualRate)
		if err != nil {
			return r, fmt.Errorf("%s at equal load: %w", sys, err)
		}
		for _, m := range res.Metrics {
			r.add(sys+"_equal_200tps."+m.Name, m.Value, m.Unit)
		}
	}
	for _, work := range []time.Duration{0, 2 * time.Millisecond} {
		variant := "publish_last"
		if work > 0 {
			variant = "work_2ms_after"
		}
		got := map[string]float64{}
		for _, running := range []bool{true, false} {
			for _, sys := range order {
				res, err := e.hotRun(ctx, sys, producers, work, running, 0)
				if err != nil {
					return r, fmt.Errorf("%s %s: %w", sys, variant, err)
				}
				name := sys + "_" + variant
				if !running {
					name += "_stopped"
				}
				for _, m := range res.Metrics {
					r.add(name+"."+m.Name, m.Value, m.Unit)
				}
				got[name] = metricValue(res, "tx_per_s")
			}
		}
		for _, suffix := range []string{"", "_stopped"} {
			if a, b := got["outboxd_"+variant+suffix], got["stream_"+variant+suffix]; a > 0 && b > 0 {
				r.add("ratio_"+variant+suffix+"_tx_per_s", a/b, "outboxd / stream broker")
			}
		}
	}
	return r, nil
}

var hotRun atomic.Int64

// hotEqualRate is the paced load at which latency is compared.
const hotEqualRate = 200

// hotRun runs the producers against one system on a fresh database, as
// fast as they go (rate 0) or paced at rate tx/s in total.
func (e *benchEnv) hotRun(ctx context.Context, sys string, producers int, work time.Duration, running bool, rate float64) (result, error) {
	var r result
	pool, err := e.freshDB(ctx)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE bench_rows (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
INSERT INTO bench_rows (id) SELECT g FROM generate_series(0, 63) g`); err != nil {
		return r, err
	}
	var sv server
	var publish func(ctx context.Context, tx pgx.Tx, p int) error
	switch sys {
	case "outboxd":
		if running {
			sc, err := e.startSidecar(ctx)
			if err != nil {
				return r, err
			}
			defer sc.stop()
			sv = sc
		}
		publish = func(ctx context.Context, tx pgx.Tx, p int) error {
			_, err := outbox.Emit(ctx, tx, outbox.Event{Topic: benchTopic, Broadcast: true,
				Data: json.RawMessage(fmt.Sprintf(`{"t":%d,"p":%d}`, time.Now().UnixNano(), p))})
			return err
		}
	default:
		c, err := e.startCentrifugoStream(ctx, pool)
		if err != nil {
			return r, err
		}
		if running {
			defer c.stop()
			sv = c
		} else {
			c.stop() // its schema stays: producers publish, nothing relays
		}
		publish = func(ctx context.Context, tx pgx.Tx, p int) error {
			return streamPublish(ctx, tx, time.Now().UnixNano(), p, "")
		}
	}
	var cs []*client
	var first int64
	if sv != nil {
		if cs, first, err = connectAt(ctx, pool, sv, e.n(10)); err != nil {
			return r, err
		}
		defer closeClients(cs)
	}
	var before procSample
	if sv != nil {
		before, _ = sampleProc(sv.pid())
	}
	d := e.d(10 * time.Second)
	stop := progress(fmt.Sprintf("%s work=%s running=%v", sys, work, running), d, func() string { return "" })
	start := time.Now()
	txs, err := hotProduce(ctx, pool, producers, d, work, rate, publish)
	took := time.Since(start)
	stop()
	if err != nil {
		return r, err
	}
	r.add("tx_per_s", float64(txs)/took.Seconds(), "committed tx/s")
	if sv == nil {
		return r, nil
	}
	last, err := waitPosition(ctx, pool, sv.position, first+txs)
	if err != nil {
		return r, err
	}
	waitDelivered(cs, last, 5*time.Second, 2*time.Minute)
	after, _ := sampleProc(sv.pid())
	deliveryStats(&r, cs, first+1, last)
	r.add("server_cpu", cpuPercent(before, after), "% of one core")
	return r, nil
}

// hotProduce runs producers for d, each committing transactions that
// update its own row, publish, wait work, and commit; it returns how many
// committed.
func hotProduce(ctx context.Context, pool *pgxpool.Pool, producers int, d, work time.Duration, rate float64,
	publish func(ctx context.Context, tx pgx.Tx, p int) error) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var txs atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		wg.Go(func() {
			var interval time.Duration
			if rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(producers) / rate)
			}
			start := time.Now().Add(pacingOffset(p, producers, interval))
			for k := 0; ctx.Err() == nil; k++ {
				if interval > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Until(start.Add(time.Duration(k) * interval))):
					}
				}
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `UPDATE bench_rows SET n = n + 1 WHERE id = $1`, p); err != nil {
						return err
					}
					if err := publish(ctx, tx, p); err != nil {
						return err
					}
					if work > 0 {
						time.Sleep(work) // the app's work after the publish, in the transaction
					}
					return nil
				})
				if err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				txs.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	return txs.Load(), <-errs
}
