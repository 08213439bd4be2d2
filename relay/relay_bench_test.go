package relay

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/procstat"
)

type countingDispatcher struct {
	n    atomic.Int64
	want int64
	done chan struct{}
}

func (c *countingDispatcher) Dispatch(_ context.Context, evs []Event) error {
	if c.n.Add(int64(len(evs))) >= c.want {
		select {
		case <-c.done:
		default:
			close(c.done)
		}
	}
	return nil
}

// benchBacklog measures sequencing plus tailing a backlog of rows pending
// at once, as after an outage: from starting the relay until the tailer has
// dispatched the last event.
func benchBacklog(b *testing.B, rows int, batch int, prep ...string) {
	db := dbtest.New(b)
	for _, sql := range prep {
		db.Exec(b, sql)
	}
	ctx := context.Background()
	b.ReportAllocs()
	var total time.Duration
	for range b.N {
		b.StopTimer()
		db.Exec(b, `TRUNCATE outbox.events`)
		db.Exec(b, `UPDATE outbox.relay_state SET last_seq = 0`)
		db.Exec(b, `INSERT INTO outbox.events (topic, payload, target_roles)
			SELECT 'task_event', jsonb_build_object('task_id', g, 'status', 'updated'), ARRAY['LEVEL_1']
			FROM generate_series(1, $1) g`, rows)
		d := &countingDispatcher{want: int64(rows), done: make(chan struct{})}
		zero := int64(0)
		seq := NewSequencer(db.Pool, SequencerConfig{BatchSize: batch})
		tail := NewTailer(db.Pool, d, TailerConfig{StartAfter: &zero})
		b.StartTimer()
		start := time.Now()
		if err := tail.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if err := seq.Start(ctx); err != nil {
			b.Fatal(err)
		}
		select {
		case <-d.done:
		case <-time.After(5 * time.Minute):
			b.Fatalf("dispatched %d of %d", d.n.Load(), rows)
		}
		total += time.Since(start)
		b.StopTimer()
		_ = seq.Stop(ctx)
		_ = tail.Stop(ctx)
		b.StartTimer()
	}
	b.ReportMetric(float64(rows)*float64(b.N)/total.Seconds(), "events/s")
}

func BenchmarkRelayBacklog_100k_Batch1000(b *testing.B) { benchBacklog(b, 100000, 1000) }
func BenchmarkRelayBacklog_100k_Batch5000(b *testing.B) { benchBacklog(b, 100000, 5000) }

// The cost of the entitlement indexes (migrations 00005, 00007) to the sequencer,
// which enters every row into them: A/B against the same relay without.
func BenchmarkRelayBacklog_100k_Batch5000_NoEntitlementIndexes(b *testing.B) {
	benchBacklog(b, 100000, 5000, `DROP INDEX outbox.events_target_users_idx; DROP INDEX outbox.events_target_roles_idx; DROP INDEX outbox.events_broadcast_seq_idx`)
}

// benchBatchCPU measures what one sequencer batch of rows costs
// PostgreSQL: the CPU time of the sequencer's backend (from /proc, so
// PostgreSQL on this machine) per batch, rows inserted before each batch.
// What is fixed per batch and what grows with its rows tells which lever
// matters: fewer batches or cheaper rows.
func benchBatchCPU(b *testing.B, rows int, prep ...string) {
	benchBackendCPU(b, rows, func(ctx context.Context, s *Sequencer) error {
		if n, err := s.SequenceOnce(ctx); err != nil || n != rows {
			return fmt.Errorf("numbered %d of %d: %v", n, rows, err)
		}
		return nil
	}, prep...)
}

// benchBackendCPU reports the sequencer's backend CPU per op, rows
// inserted before each.
func benchBackendCPU(b *testing.B, rows int, op func(context.Context, *Sequencer) error, prep ...string) {
	db := dbtest.New(b)
	for _, sql := range prep {
		db.Exec(b, sql)
	}
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = 1, 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	var pid int
	if err := pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		b.Fatal(err)
	}
	ticks := func() int64 {
		n, err := procstat.CPUTicks(pid)
		if err != nil {
			b.Skipf("PostgreSQL's backend is not on this machine: %v", err)
		}
		return n
	}
	seq := NewSequencer(pool, SequencerConfig{BatchSize: 5000, Handoff: nopHandoff{}})
	var cpu int64
	for range b.N {
		b.StopTimer()
		db.Exec(b, `INSERT INTO outbox.events (topic, payload) SELECT 'bench_event', jsonb_build_object('t', g, 'pad', repeat('x', 64)) FROM generate_series(1, $1) g`, rows)
		before := ticks()
		b.StartTimer()
		if err := op(ctx, seq); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += ticks() - before
		b.StartTimer()
	}
	// /proc counts in clock ticks (procstat.ClockTicks): averaged over b.N batches, and
	// meaningless over a few ticks (CI's -benchtime 1x is a smoke run).
	if cpu < 20 {
		b.Logf("%d clock ticks over %d batches: too few to report; run with -benchtime 400x", cpu, b.N)
		return
	}
	b.ReportMetric(float64(cpu)*1e6/procstat.ClockTicks/float64(b.N), "backend-µs/op")
}

type nopHandoff struct{}

func (nopHandoff) Committing(bool) {}
func (nopHandoff) Offer([]Event)   {}

func BenchmarkSequencerBatchCPU_1Row(b *testing.B)    { benchBatchCPU(b, 1) }
func BenchmarkSequencerBatchCPU_16Rows(b *testing.B)  { benchBatchCPU(b, 16) }
func BenchmarkSequencerBatchCPU_256Rows(b *testing.B) { benchBatchCPU(b, 256) }

// A batch that finds nothing pending (lockSQL takes no lock then), and the
// idle probe, for comparison.
func BenchmarkSequencerBatchCPU_Empty(b *testing.B) { benchBatchCPU(b, 0) }
func BenchmarkSequencerProbeCPU(b *testing.B) {
	benchBackendCPU(b, 0, func(ctx context.Context, s *Sequencer) error {
		pending, err := s.hasPending(ctx)
		if err == nil && pending {
			err = errors.New("the probe found a row pending")
		}
		return err
	})
}

// The row checks as they were before migration 00008: evaluated on the
// sequencer's UPDATE too (A/B for that migration).
func BenchmarkSequencerBatchCPU_256Rows_OldChecks(b *testing.B) {
	benchBatchCPU(b, 256, `ALTER TABLE outbox.events DROP CONSTRAINT events_topic_format_check, DROP CONSTRAINT events_payload_object_check, DROP CONSTRAINT events_payload_max_256kib_check,
	ADD CONSTRAINT events_topic_format_check CHECK (topic ~ '^[a-z][a-z0-9_.-]{0,63}$'), ADD CONSTRAINT events_payload_object_check CHECK (jsonb_typeof(payload) = 'object'), ADD CONSTRAINT events_payload_max_256kib_check CHECK (octet_length(payload::text) <= 262144)`)
}
