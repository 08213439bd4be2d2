package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/outbox"
)

// strict is a Dispatcher that records every event it is given, duplicates
// included, so that a test can tell "dispatched once" from "deduped".
type strict struct {
	mu     sync.Mutex
	events []Event
	cond   chan struct{}
}

func newStrict() *strict { return &strict{cond: make(chan struct{}, 1)} }

func (s *strict) Dispatch(_ context.Context, evs []Event) error {
	s.mu.Lock()
	s.events = append(s.events, evs...)
	s.mu.Unlock()
	select {
	case s.cond <- struct{}{}:
	default:
	}
	return nil
}

func (s *strict) waitLen(t *testing.T, n int, d time.Duration) []Event {
	t.Helper()
	deadline := time.After(d)
	for {
		s.mu.Lock()
		evs := slices.Clone(s.events)
		s.mu.Unlock()
		if len(evs) >= n {
			return evs
		}
		select {
		case <-s.cond:
		case <-deadline:
			t.Fatalf("dispatched %d of %d events within %s", len(evs), n, d)
		}
	}
}

// afterNextRead returns what was dispatched once the tailer has read the
// table again after this call (a fallback poll): an event dispatched twice
// would be among them by then.
func (s *strict) afterNextRead(t *testing.T, tail *Tailer) []Event {
	t.Helper()
	mark := time.Now()
	waitUntil(t, 10*time.Second, "a fallback read", func() bool { return tail.LastRead().After(mark) })
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

// assertExactly checks that got is seqs 1..n, each once, in order, and that
// every event is the row the table holds under its seq.
func assertExactly(t *testing.T, db *dbtest.DB, got []Event, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("dispatched %d events, want %d", len(got), n)
	}
	want, _, err := ReadAfter(context.Background(), db.Pool, 0, n, 0, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != n {
		t.Fatalf("table holds %d sequenced rows, want %d", len(want), n)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Seq != int64(i+1) || g.Seq != w.Seq || g.ID != w.ID || g.Topic != w.Topic || string(g.Payload) != string(w.Payload) ||
			!slices.Equal(g.Users, w.Users) || !slices.Equal(g.Roles, w.Roles) || (g.Users == nil) != (w.Users == nil) ||
			(g.Roles == nil) != (w.Roles == nil) || g.Traceparent != w.Traceparent || !g.CreatedAt.Equal(w.CreatedAt) ||
			g.CreatedAt.Location() != time.UTC {
			t.Fatalf("dispatched #%d %+v; the table holds %+v", i, g, w)
		}
	}
}

// The local fast path: with the tailer as the sequencer's Handoff, every
// committed event reaches the dispatcher exactly once, in seq order, as
// the row the table holds (targets, traceparent, created_at), and the
// events come from the hand-off rather than from table reads.
func TestHandoffDispatchesEachCommittedEventOnce(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	d := newStrict()
	zero := int64(0)
	tail := NewTailer(db.Pool, d, TailerConfig{StartAfter: &zero, FallbackPoll: 50 * time.Millisecond})
	seq := NewSequencer(db.Pool, SequencerConfig{Handoff: tail})
	startAll(t, tail, seq)

	const producers, each = 4, 50
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		wg.Go(func() {
			for n := range each {
				// Every third transaction rolls back: it must never be seen.
				if n%3 == 2 {
					if err := emitTx(ctx, db.Pool, producerPayload{p, -n}, 0, true); err != nil {
						errs <- err
						return
					}
				}
				ev := outbox.Event{Topic: "task_event", Data: producerPayload{p, n}, Traceparent: fmt.Sprintf("00-%032x-%016x-01", p+1, n+1)}
				switch n % 3 {
				case 0:
					ev.Broadcast = true
				case 1:
					ev.Users, ev.Roles = []string{fmt.Sprintf("u%d", p)}, []string{}
				case 2:
					ev.Roles = []string{"ops", "admin"}
				}
				if _, err := outbox.Emit(ctx, db.Pool, ev); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	d.waitLen(t, producers*each, 15*time.Second)
	assertExactly(t, db, d.afterNextRead(t, tail), producers*each)
	waitUntil(t, 5*time.Second, "the counters", func() bool { o, r := tail.Handed(); return o+r >= producers*each })
	offered, read := tail.Handed()
	if offered+read != producers*each || offered == 0 {
		t.Fatalf("offered %d + read %d events; want %d in all, most from the hand-off", offered, read, producers*each)
	}
	t.Logf("%d events handed off, %d read from the table", offered, read)
}

// Two replicas, each with its own sequencer handing off to its own tailer:
// whichever sequencer numbers a batch, both tailers dispatch every event
// exactly once in order (the other replica reads it after the NOTIFY).
func TestHandoffTwoReplicas(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	var ds [2]*strict
	var tails [2]*Tailer
	for i := range ds {
		ds[i] = newStrict()
		zero := int64(0)
		tails[i] = NewTailer(db.Pool, ds[i], TailerConfig{StartAfter: &zero, FallbackPoll: 50 * time.Millisecond})
		startAll(t, tails[i], NewSequencer(db.Pool, SequencerConfig{Handoff: tails[i], MinPollInterval: time.Millisecond}))
	}
	const n = 300
	for k := range n {
		if err := emitTx(ctx, db.Pool, producerPayload{0, k}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	for i := range ds {
		ds[i].waitLen(t, n, 15*time.Second)
		assertExactly(t, db, ds[i].afterNextRead(t, tails[i]), n)
	}
}

// A batch that does not commit is never handed off; the next batch numbers
// the same rows again and hands them off.
func TestHandoffOnlyAfterCommit(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for k := range 10 {
		if err := emitTx(ctx, db.Pool, producerPayload{0, k}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	rec := &recordingHandoff{}
	s := NewSequencer(db.Pool, SequencerConfig{Handoff: rec})
	s.testHookAfterBatch = func() {
		// Kill the sequencer's own backend between the batch and COMMIT.
		if _, err := db.Pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle in transaction'`); err != nil {
			t.Error(err)
		}
	}
	if _, err := s.SequenceOnce(ctx); err == nil {
		t.Fatal("the batch committed though its backend was terminated")
	}
	if got := rec.calls(); !slices.Equal(got, []string{"committing true", "committing false"}) {
		t.Fatalf("hand-off calls %q; want the failed commit announced and withdrawn, nothing offered", got)
	}
	s.testHookAfterBatch = nil
	var n int
	var err error
	waitUntil(t, 10*time.Second, "a batch on a fresh connection", func() bool {
		n, err = s.SequenceOnce(ctx)
		return err == nil
	})
	if n != 10 {
		t.Fatalf("second batch numbered %d rows, want 10", n)
	}
	// Retries on a connection the pool had not yet found dead fail the
	// same way, announced and withdrawn; the batch that commits is offered.
	got := rec.calls()
	if n := len(got); n < 4 || !slices.Equal(got[n-2:], []string{"committing true", "offer 1..10"}) {
		t.Fatalf("hand-off calls %q", got)
	}
	for i := 2; i+1 < len(got)-2; i += 2 {
		if got[i] != "committing true" || got[i+1] != "committing false" {
			t.Fatalf("hand-off calls %q: a failed retry offered something", got)
		}
	}
	assertExactly(t, db, rec.offered, 10)
}

// HandoffBytes bounds what is handed off: a prefix of the batch within the
// bound; the tailer reads the rest from the table, and every event is still
// dispatched once, in order.
func TestHandoffBytesBound(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	pad := strings.Repeat("x", 1000)
	evs := make([]outbox.Event, 50)
	for i := range evs {
		evs[i] = outbox.Event{Topic: "big", Data: map[string]any{"n": i, "pad": pad}, Broadcast: true}
	}
	rec := &recordingHandoff{}
	s := NewSequencer(db.Pool, SequencerConfig{Handoff: rec, HandoffBytes: 10_000})
	if _, err := outbox.EmitBatch(ctx, db.Pool, evs); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SequenceOnce(ctx); err != nil || n != 50 {
		t.Fatalf("batch: %d, %v", n, err)
	}
	bytes := 0
	for _, e := range rec.offered {
		bytes += len(e.Payload)
	}
	if len(rec.offered) == 0 || len(rec.offered) >= 50 || bytes > 10_000 {
		t.Fatalf("handed off %d events, %d bytes; want a prefix within 10,000 bytes", len(rec.offered), bytes)
	}
	assertExactly(t, db, rec.offered, len(rec.offered))

	// End to end: the tailer gets the prefix from the hand-off, the rest
	// from the table.
	d := newStrict()
	zero := int64(50)
	tail := NewTailer(db.Pool, d, TailerConfig{StartAfter: &zero, FallbackPoll: time.Hour})
	tail.notifier.testSignals.listening.Init()
	seq := NewSequencer(db.Pool, SequencerConfig{Handoff: tail, HandoffBytes: 10_000})
	startAll(t, tail, seq)
	// The read that follows the LISTEN is done before the batch: with no
	// fallback poll, what the tailer reads from now on is what the
	// notification asks for.
	at := tail.notifier.testSignals.listening.WaitOrTimeout(t)
	waitUntil(t, 5*time.Second, "the read after LISTEN", func() bool { return tail.LastRead().After(at) })
	if _, err := outbox.EmitBatch(ctx, db.Pool, evs); err != nil {
		t.Fatal(err)
	}
	got := d.waitLen(t, 50, 10*time.Second)
	if len(got) != 50 || got[0].Seq != 51 || got[49].Seq != 100 {
		t.Fatalf("dispatched %d events from %d", len(got), got[0].Seq)
	}
	for i := range got {
		if got[i].Seq != int64(51+i) {
			t.Fatalf("event %d has seq %d", i, got[i].Seq)
		}
	}
	// The counters move after Dispatch returns.
	waitUntil(t, 5*time.Second, "the counters", func() bool { o, r := tail.Handed(); return o+r >= 50 })
	if offered, read := tail.Handed(); offered == 0 || read == 0 || offered+read != 50 {
		t.Fatalf("offered %d, read %d; want both, 50 in all", offered, read)
	}
}

// Offers that do not follow the cursor are not dispatched (the table read
// the notifications ask for covers them); the part of an offer at or below
// the cursor is skipped.
func TestTailerOfferFollowsCursor(t *testing.T) {
	d := newStrict()
	tail := NewTailer(nil, d, TailerConfig{})
	tail.cursor.Store(10)
	mk := func(seqs ...int64) []Event {
		out := make([]Event, len(seqs))
		for i, s := range seqs {
			out[i] = Event{Seq: s, Payload: json.RawMessage(`{}`)}
		}
		return out
	}
	ctx := context.Background()
	for _, step := range []struct {
		offer []Event
		want  []int64 // seqs dispatched by this step
	}{
		{mk(11, 12), []int64{11, 12}},
		{mk(15, 16), nil},                 // a gap: left to the table
		{mk(12, 13, 14), []int64{13, 14}}, // 12 was dispatched already
		{mk(10, 11), nil},                 // all behind the cursor
		{mk(15), []int64{15}},             // follows again
	} {
		tail.Offer(step.offer)
		before := len(d.events)
		if err := tail.takeOffered(ctx); err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, e := range d.events[before:] {
			got = append(got, e.Seq)
		}
		if !slices.Equal(got, step.want) {
			t.Fatalf("offer %v dispatched %v, want %v", seqsOf(step.offer), got, step.want)
		}
		if want := int64(10); len(got) > 0 {
			want = got[len(got)-1]
			if tail.Cursor() != want {
				t.Fatalf("cursor %d, want %d", tail.Cursor(), want)
			}
		}
	}
}

func seqsOf(evs []Event) []int64 {
	out := make([]int64, len(evs))
	for i := range evs {
		out[i] = evs[i].Seq
	}
	return out
}

// recordingHandoff records the sequencer's hand-off calls.
type recordingHandoff struct {
	mu      sync.Mutex
	log     []string
	offered []Event
}

func (r *recordingHandoff) Committing(inFlight bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf("committing %t", inFlight))
}

func (r *recordingHandoff) Offer(evs []Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf("offer %d..%d", evs[0].Seq, evs[len(evs)-1].Seq))
	r.offered = append(r.offered, evs...)
}

func (r *recordingHandoff) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

// startAll starts services and stops them at the end of the test.
func startAll(t *testing.T, svcs ...interface {
	Start(context.Context) error
	Stop(context.Context) error
}) {
	t.Helper()
	for _, s := range svcs {
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range svcs {
			if err := s.Stop(ctx); err != nil {
				t.Error(err)
			}
		}
	})
}

// The batch statement runs in the same pipeline as the lock, so it must
// number nothing when the lock was not taken: neither while another
// transaction holds it, nor when nobody holds it but this transaction did
// not take it.
func TestSequenceStatementNeedsTheLock(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for k := range 5 {
		if err := emitTx(ctx, db.Pool, producerPayload{0, k}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	holder, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Rollback(context.Background()) })
	if _, err := holder.Exec(ctx, lockSQL); err != nil {
		t.Fatal(err)
	}
	s := NewSequencer(db.Pool, SequencerConfig{Handoff: &recordingHandoff{}, QueryTimeout: 3 * time.Second})
	if n, err := s.SequenceOnce(ctx); !errors.Is(err, ErrLockHeld) || n != 0 {
		t.Fatalf("with the lock held elsewhere: %d, %v; want ErrLockHeld", n, err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Nobody holds it now, and this transaction does not take it.
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // ends the test's transaction
	rows, err := tx.Query(ctx, sequenceSQL, 1000, -1, BatchCostDefault)
	if err != nil {
		t.Fatal(err)
	}
	numbered := 0
	for rows.Next() {
		numbered++
	}
	if rows.Close(); rows.Err() != nil || numbered != 0 {
		t.Fatalf("the batch statement numbered %d rows without the lock (%v)", numbered, rows.Err())
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := db.Int64(t, `SELECT count(*) FROM outbox.events WHERE seq IS NULL`); got != 5 {
		t.Fatalf("%d rows pending, want 5", got)
	}
	if n, err := s.SequenceOnce(ctx); err != nil || n != 5 {
		t.Fatalf("with the lock free: %d, %v", n, err)
	}
	assertGapFree(t, db, 5)
}

// A batch that finds nothing pending locks nothing: relay_state's xmax (the
// last locker's transaction id) is unchanged, so the batch had no
// transaction id and its commit wrote no WAL. With the lock held elsewhere
// it reports nothing to do, not ErrLockHeld; once a row is pending, it
// reports the lock held, then numbers the row when the lock is free.
func TestEmptyBatchTakesNoLock(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	s := NewSequencer(db.Pool, SequencerConfig{Handoff: &recordingHandoff{}, QueryTimeout: 3 * time.Second})
	if err := emitTx(ctx, db.Pool, producerPayload{0, 0}, 0, false); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SequenceOnce(ctx); err != nil || n != 1 {
		t.Fatalf("first batch: %d, %v", n, err)
	}
	xmax := func() string {
		var x string
		if err := db.Pool.QueryRow(ctx, `SELECT xmax::text FROM outbox.relay_state`).Scan(&x); err != nil {
			t.Fatal(err)
		}
		return x
	}
	before := xmax()
	for range 3 {
		if n, err := s.SequenceOnce(ctx); err != nil || n != 0 {
			t.Fatalf("empty batch: %d, %v", n, err)
		}
	}
	if after := xmax(); after != before {
		t.Fatalf("an empty batch locked relay_state: xmax %s → %s", before, after)
	}

	holder, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Rollback(context.Background()) })
	if _, err := holder.Exec(ctx, `SELECT 1 FROM outbox.relay_state FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SequenceOnce(ctx); err != nil || n != 0 {
		t.Fatalf("nothing pending, lock held elsewhere: %d, %v; want 0, nil", n, err)
	}
	if err := emitTx(ctx, db.Pool, producerPayload{0, 1}, 0, false); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SequenceOnce(ctx); !errors.Is(err, ErrLockHeld) || n != 0 {
		t.Fatalf("a row pending, lock held elsewhere: %d, %v; want ErrLockHeld", n, err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SequenceOnce(ctx); err != nil || n != 1 {
		t.Fatalf("lock free: %d, %v", n, err)
	}
	assertGapFree(t, db, 2)
}

// offerChan signals every offered batch's last seq.
type offerChan chan int64

func (offerChan) Committing(bool) {}
func (c offerChan) Offer(evs []Event) {
	c <- evs[len(evs)-1].Seq
}

// recvWithin receives from c, failing the test after 10 s.
func recvWithin[T any](t *testing.T, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received in 10 s")
		panic("unreachable")
	}
}

// For Linger after its last rows the sequencer's idle sleeps end in a batch
// (as cheap as a probe when nothing is pending, since lockSQL locks only
// for pending rows) and rows emitted then are numbered by it; after Linger
// they end in a probe.
func TestIdleSleepsEndInABatchWhileLingering(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		linger    time.Duration
		wantProbe bool
	}{{"lingering", time.Hour, false}, {"after linger", time.Nanosecond, true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := dbtest.New(t)
			ctx := context.Background()
			offers := make(offerChan, 16)
			s := NewSequencer(db.Pool, SequencerConfig{Handoff: offers, Linger: tc.linger,
				MinPollInterval: time.Millisecond, LingerPoll: 4 * time.Millisecond, PollInterval: 4 * time.Millisecond})
			s.testSignals.idleSlept.Init()
			if err := emitTx(ctx, db.Pool, producerPayload{0, 0}, 0, false); err != nil {
				t.Fatal(err)
			}
			startAll(t, s)
			if seq := recvWithin(t, offers); seq != 1 {
				t.Fatalf("first batch ended at seq %d, want 1", seq)
			}
			for range 5 {
				if probe := s.testSignals.idleSlept.WaitOrTimeout(t); probe != tc.wantProbe {
					t.Fatalf("after an idle sleep: probe %t, want %t", probe, tc.wantProbe)
				}
			}
			if err := emitTx(ctx, db.Pool, producerPayload{0, 1}, 0, false); err != nil {
				t.Fatal(err)
			}
			if seq := recvWithin(t, offers); seq != 2 {
				t.Fatalf("second batch ended at seq %d, want 2", seq)
			}
			assertGapFree(t, db, 2)
		})
	}
}
