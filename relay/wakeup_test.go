package relay

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
	}{
		{WakeupPoll, false}, // the default state: nothing to do
		{WakeupNotify, true},
		{WakeupNotify, false}, // idempotent: no DDL
		{WakeupIdle, true},    // notify's trigger dropped, idle's created
		{WakeupIdle, false},
		{WakeupNotify, true},
		{WakeupPoll, true},
	} {
		changed, err := SetWakeup(ctx, db.Pool, step.mode)
		if err != nil || changed != step.wantChanged {
			t.Fatalf("%s: changed %v err %v; want changed %v", step.mode, changed, err, step.wantChanged)
		}
		for mode, tr := range wakeupTriggers {
			if exists, err := wakeupTriggerExists(ctx, db.Pool, tr.name); err != nil || exists != (mode == step.mode) {
				t.Fatalf("after %s: trigger %s exists %v (%v)", step.mode, tr.name, exists, err)
			}
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
	for _, mode := range []string{WakeupNotify, WakeupIdle, WakeupPoll} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			db := dbtest.New(t)
			ctx := context.Background()
			if _, err := SetWakeup(ctx, db.Pool, mode); err != nil {
				t.Fatal(err)
			}
			seq := NewSequencer(db.Pool, SequencerConfig{MinPollInterval: time.Minute, PollInterval: time.Minute, WakeWhenIdle: mode == WakeupIdle})
			seq.testSignals.sleepingIdle.Init()
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
			// The sequencer's first (empty) batch is done: it sleeps a minute.
			seq.testSignals.sleepingIdle.WaitOrTimeout(t)
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

// With WakeWhenIdle producers notify only while the sequencer does not
// hold the wake-up key, and once for the statements of one moment. Each
// check counts the trigger's notifications (empty payload) before a
// marker sent afterwards: notifications arrive in commit order.
func TestWakeWhenIdleNotifiesOnlyWhileIdle(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	if _, err := SetWakeup(ctx, db.Pool, WakeupIdle); err != nil {
		t.Fatal(err)
	}
	lc, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Close(context.Background()) })
	if _, err := lc.Exec(ctx, "LISTEN "+PendingChannel); err != nil {
		t.Fatal(err)
	}
	notified := func(t *testing.T) int {
		t.Helper()
		if _, err := db.Pool.Exec(ctx, `SELECT pg_notify($1, 'marker')`, PendingChannel); err != nil {
			t.Fatal(err)
		}
		for n := 0; ; n++ {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			nt, err := lc.WaitForNotification(wctx)
			cancel()
			if err != nil {
				t.Fatalf("waiting for the marker: %v", err)
			}
			if nt.Payload == "marker" {
				return n
			}
		}
	}
	wantNotified := func(t *testing.T, want int, when string) {
		t.Helper()
		if n := notified(t); n != want {
			t.Fatalf("%s: %d notifications, want %d", when, n, want)
		}
	}
	emit := func(t *testing.T, n int) {
		t.Helper()
		if err := emitTx(ctx, db.Pool, producerPayload{0, n}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	seq := NewSequencer(db.Pool, SequencerConfig{WakeWhenIdle: true})
	t.Cleanup(seq.dropOwn)
	sequence := func(t *testing.T, want int) {
		t.Helper()
		if n, err := seq.SequenceOnce(ctx); err != nil || n != want {
			t.Fatalf("batch: %d rows, %v; want %d", n, err, want)
		}
	}
	// Idle (no batch yet): two producers in flight at once notify once.
	// inFlight begins a producer transaction and emits one row in it.
	inFlight := func(t *testing.T, p producerPayload) pgx.Tx {
		t.Helper()
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) }) // no-op after commit
		if _, err := outbox.Emit(ctx, tx, outbox.Event{Topic: "task_event", Data: p, Broadcast: true}); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	commit := func(t *testing.T, txs ...pgx.Tx) {
		t.Helper()
		for _, tx := range txs {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	txs := []pgx.Tx{inFlight(t, producerPayload{1, 0}), inFlight(t, producerPayload{1, 1})}
	commit(t, txs...)
	wantNotified(t, 1, "idle, two producers")

	// Busy: a batch that numbers rows takes the key, and producers are
	// quiet; a second batch does not take it twice.
	sequence(t, 2)
	if !seq.busy {
		t.Fatal("a batch that numbered rows does not hold the key")
	}
	emit(t, 2)
	emit(t, 3)
	wantNotified(t, 0, "busy")
	sequence(t, 2)
	// An empty batch keeps the key; going idle lets go of it (once: the
	// lock is not stacked, and a second letGo has nothing to do).
	sequence(t, 0)
	for range 2 {
		if pending, err := seq.letGo(ctx); err != nil || pending || seq.busy {
			t.Fatalf("going idle: pending %v, err %v, busy %v", pending, err, seq.busy)
		}
	}
	emit(t, 4)
	wantNotified(t, 1, "idle again")

	// A producer holding the key for its transaction: the batch cannot
	// take it and works without it; that producer notifies at commit.
	held := inFlight(t, producerPayload{2, 0})
	sequence(t, 1) // row 4
	if seq.busy {
		t.Fatal("the batch took a key a producer holds")
	}
	commit(t, held)
	wantNotified(t, 1, "the producer that held the key")

	// Losing the connection while busy lets go of the key; the next
	// batch fails, and the one after it works on a new connection.
	sequence(t, 1)
	if !seq.busy {
		t.Fatal("not busy after numbering a row")
	}
	pid := seq.own.Conn().PgConn().PID()
	if _, err := db.Pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the sequencer's backend gone", func() bool {
		return db.Int64(t, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, pid) == 0
	})
	emit(t, 5)
	wantNotified(t, 1, "after the sequencer's connection died")
	if _, err := seq.SequenceOnce(ctx); err == nil {
		t.Fatal("a batch on a dead connection succeeded")
	}
	if seq.own != nil || seq.busy {
		t.Fatal("the dead connection is still kept")
	}
	sequence(t, 1)
	assertGapFree(t, db, 7)
}

// A replica whose batch finds the sequencing lock held elsewhere does not
// take the wake-up key (wakeLockSQL's guard): producers keep waking the
// replica that sequences. It keeps its connection, holding nothing, and
// takes the key once it sequences itself.
func TestWakeWhenIdleStandbyTakesNoKey(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	// pg_locks is the cluster's: this test's database only (parallel
	// tests hold the same key in theirs).
	keyHolders := func() int64 {
		return db.Int64(t, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1869968482 AND objid = 2003919717
			AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	}
	holder, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Rollback(context.Background()) })
	if err := emitTx(ctx, db.Pool, producerPayload{0, 0}, 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, lockSQL); err != nil { // a row is pending: this takes the lock
		t.Fatal(err)
	}
	seq := NewSequencer(db.Pool, SequencerConfig{WakeWhenIdle: true, QueryTimeout: 3 * time.Second})
	t.Cleanup(seq.dropOwn)
	if n, err := seq.SequenceOnce(ctx); !errors.Is(err, ErrLockHeld) || n != 0 {
		t.Fatalf("with the lock held elsewhere: %d, %v; want ErrLockHeld", n, err)
	}
	if seq.busy || seq.own == nil || keyHolders() != 0 {
		t.Fatalf("standby: busy %v, connection kept %v, key holders %d; want false, true, 0", seq.busy, seq.own != nil, keyHolders())
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := seq.SequenceOnce(ctx); err != nil || n != 1 {
		t.Fatalf("once the lock is free: %d, %v; want 1 row", n, err)
	}
	if !seq.busy || keyHolders() != 1 {
		t.Fatalf("sequencing: busy %v, key holders %d; want true, 1", seq.busy, keyHolders())
	}
}
