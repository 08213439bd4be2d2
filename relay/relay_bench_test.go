package relay

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
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
