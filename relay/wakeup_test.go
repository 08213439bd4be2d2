package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/outbox"
)

func TestSetWakeup(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for _, step := range []struct {
		mode        string
		wantChanged bool
		wantTrigger bool
	}{
		{WakeupPoll, false, false}, // the default state: nothing to do
		{WakeupNotify, true, true},
		{WakeupNotify, false, true}, // idempotent: no DDL
		{WakeupPoll, true, false},
	} {
		changed, err := SetWakeup(ctx, db.Pool, step.mode)
		if err != nil || changed != step.wantChanged {
			t.Fatalf("%s: changed %v err %v; want changed %v", step.mode, changed, err, step.wantChanged)
		}
		if exists, err := wakeupTriggerExists(ctx, db.Pool); err != nil || exists != step.wantTrigger {
			t.Fatalf("%s: trigger %v (%v), want %v", step.mode, exists, err, step.wantTrigger)
		}
	}
	if _, err := SetWakeup(ctx, db.Pool, "push"); err == nil || !strings.Contains(err.Error(), `"push"`) {
		t.Fatalf("bad mode: %v", err)
	}
}

// With the trigger and the tailer's listener wired to Wake, an idle
// sequencer whose every poll is a minute away sequences a new row at once;
// without the trigger the same sequencer does not (so the first half cannot
// pass by polling).
func TestWakeupNotifySequencesAtOnce(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{WakeupNotify, WakeupPoll} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			db := dbtest.New(t)
			ctx := context.Background()
			if _, err := SetWakeup(ctx, db.Pool, mode); err != nil {
				t.Fatal(err)
			}
			seq := NewSequencer(db.Pool, SequencerConfig{MinPollInterval: time.Minute, PollInterval: time.Minute})
			col := newCollector()
			zero := int64(0)
			tail := NewTailer(db.Pool, col, TailerConfig{StartAfter: &zero, OnPending: seq.Wake})
			for _, s := range []interface{ Start(context.Context) error }{tail, seq} {
				if err := s.Start(ctx); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = tail.Stop(ctx)
				_ = seq.Stop(ctx)
			})
			waitUntil(t, 5*time.Second, "tailer ready", tail.Ready)
			time.Sleep(200 * time.Millisecond) // the sequencer's first (empty) batch is done: it sleeps a minute
			// One transaction: after a batch the sequencer's next poll is
			// MinPollInterval away (a minute here), wake or not.
			tx, err := db.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for n := range 3 {
				if _, err := outbox.Emit(ctx, tx, outbox.Event{Topic: "task_event", Data: producerPayload{0, n}, Broadcast: true}); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if mode == WakeupPoll {
				time.Sleep(2 * time.Second)
				if evs := col.snapshot(); len(evs) != 0 {
					t.Fatalf("sequenced %d events without a wake-up: the test would prove nothing", len(evs))
				}
				return
			}
			col.waitFor(t, 10*time.Second, "3 events after a wake-up", func(e []Event) bool { return len(e) == 3 })
			assertGapFree(t, db, 3)
		})
	}
}

// Within Linger of its last rows the sequencer's idle sleep stays at
// LingerPoll: a row emitted 3 s after the previous one is sequenced within
// half a second, where a plain doubling backoff would be in a ~2 s sleep.
func TestLingerKeepsPollingShortWhileActive(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	col := newCollector()
	startRelay(t, db.Pool, col, SequencerConfig{PollInterval: time.Minute, Linger: 10 * time.Second, LingerPoll: 10 * time.Millisecond})
	if err := emitTx(ctx, db.Pool, producerPayload{0, 0}, 0, false); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, 10*time.Second, "the first event", func(e []Event) bool { return len(e) == 1 })
	time.Sleep(3 * time.Second)
	if err := emitTx(ctx, db.Pool, producerPayload{0, 1}, 0, false); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, 10*time.Second, "the second event", func(e []Event) bool { return len(e) == 2 })
	var wait time.Duration
	if err := db.Pool.QueryRow(ctx, `SELECT delivered_at - created_at FROM outbox.events WHERE seq = 2`).Scan(&wait); err != nil {
		t.Fatal(err)
	}
	if wait > 500*time.Millisecond {
		t.Fatalf("second event waited %s for the sequencer, want the linger poll (10 ms)", wait)
	}
}
