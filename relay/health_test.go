package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/outbox"
)

// Readiness goes red while the relay makes no progress, for each cause, and
// green again by itself once the cause is gone.
func TestReadinessFollowsTheRelay(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	coll := newCollector()
	seq, tail := startRelay(t, db.Pool, coll, SequencerConfig{PollInterval: 20 * time.Millisecond})
	dispatched := func() int64 { return tail.Cursor() }
	r := &Readiness{Querier: db.Pool, Sequencer: seq, Tailer: tail, Dispatched: dispatched, StallAfter: time.Second}
	emit := func() {
		t.Helper()
		if _, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "task_event", Data: map[string]int{"n": 1}, Broadcast: true}); err != nil {
			t.Fatal(err)
		}
	}
	waitState := func(what, contains string) {
		t.Helper()
		waitUntil(t, 15*time.Second, what, func() bool {
			err := r.Check(ctx)
			if contains == "" {
				return err == nil
			}
			return err != nil && strings.Contains(err.Error(), contains)
		})
	}
	emit()
	coll.waitFor(t, 10*time.Second, "first event", func(evs []Event) bool { return len(evs) == 1 })
	waitState("ready", "")

	// A transaction holds the sequencer's lock: rows pile up unsequenced.
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM outbox.relay_state FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	emit()
	waitState("stalled while the lock is held", "sequencing stalled")
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	coll.waitFor(t, 10*time.Second, "the held-back event", func(evs []Event) bool { return len(evs) == 2 })
	waitState("ready after the lock is released", "")

	// A row that makes every batch fail (a seq set behind the relay's back).
	db.Exec(t, `UPDATE outbox.events SET seq = 3 WHERE seq = 1`)
	emit()
	waitState("failing sequencer", "sequencer failing")
	db.Exec(t, `UPDATE outbox.events SET seq = 1 WHERE seq = 3`)
	coll.waitFor(t, 10*time.Second, "the third event", func(evs []Event) bool { return len(evs) == 3 })
	waitState("ready after the row is repaired", "")

	// A dispatch position the database has never reached.
	r.Dispatched = func() int64 { return 1000 }
	waitState("ahead of the head", "ahead of the database head 3")
	r.Dispatched = dispatched
	waitState("ready", "")
}

// A restore to an earlier point of the same history: the tailer gives the
// history a new epoch and rebases its dispatcher.
func TestTailerRebasesOnAnEarlierHead(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	reb := &rebaser{collector: newCollector(), rebased: make(chan History, 1)}
	_, tail := startRelay(t, db.Pool, reb, SequencerConfig{})
	for range 3 {
		if _, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "task_event", Data: map[string]int{}, Broadcast: true}); err != nil {
			t.Fatal(err)
		}
	}
	reb.waitFor(t, 10*time.Second, "three events", func(evs []Event) bool { return len(evs) == 3 })
	old, err := ReadHistory(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `DELETE FROM outbox.events WHERE seq > 1; UPDATE outbox.relay_state SET last_seq = 1`)
	select {
	case h := <-reb.rebased:
		now, err := ReadHistory(ctx, db.Pool)
		if err != nil {
			t.Fatal(err)
		}
		if h.Head != 1 || h.Epoch == old.Epoch || h.Epoch != now.Epoch {
			t.Fatalf("rebased to %+v (database %+v, was %+v)", h, now, old)
		}
		// The tailer moves its cursor right after the dispatcher's Rebase
		// returns (which is what signalled us).
		waitUntil(t, 10*time.Second, "the tailer's cursor at the new head", func() bool { return tail.Cursor() == 1 })
	case <-time.After(10 * time.Second):
		t.Fatal("no rebase after the head went back")
	}
}

type rebaser struct {
	*collector
	rebased chan History
}

func (r *rebaser) Rebase(_ context.Context, epoch string, head int64) {
	r.rebased <- History{Head: head, Epoch: epoch}
}
