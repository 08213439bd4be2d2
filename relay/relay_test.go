package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/testsignal"
	"github.com/grupogad/outboxd/outbox"
)

// collector is a Dispatcher that records what it is given.
type collector struct {
	mu     sync.Mutex
	events []Event
	seen   map[int64]bool
	cond   chan struct{}
}

func newCollector() *collector {
	return &collector{seen: map[int64]bool{}, cond: make(chan struct{}, 1)}
}

func (c *collector) Dispatch(_ context.Context, evs []Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range evs {
		if c.seen[e.Seq] {
			continue // at-least-once: dedupe by seq as the hub does
		}
		c.seen[e.Seq] = true
		c.events = append(c.events, e)
	}
	select {
	case c.cond <- struct{}{}:
	default:
	}
	return nil
}

func (c *collector) snapshot() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

// waitFor waits until pred holds on the collected events or the deadline.
func (c *collector) waitFor(t *testing.T, d time.Duration, what string, pred func([]Event) bool) []Event {
	t.Helper()
	deadline := time.After(d)
	for {
		evs := c.snapshot()
		if pred(evs) {
			return evs
		}
		select {
		case <-c.cond:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s (have %d events)", d, what, len(evs))
		}
	}
}

func startRelay(t *testing.T, pool *pgxpool.Pool, d Dispatcher, scfg SequencerConfig) (*Sequencer, *Tailer) {
	t.Helper()
	ctx := context.Background()
	seq := NewSequencer(pool, scfg)
	zero := int64(0)
	tail := NewTailer(pool, d, TailerConfig{StartAfter: &zero, FallbackPoll: 200 * time.Millisecond})
	if err := seq.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tail.Stop(ctx); err != nil {
			t.Error(err)
		}
		if err := seq.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return seq, tail
}

type producerPayload struct {
	Producer int `json:"producer"`
	N        int `json:"n"`
}

func emitTx(ctx context.Context, pool *pgxpool.Pool, p producerPayload, sleep time.Duration, rollback bool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := outbox.Emit(ctx, tx, outbox.Event{Topic: "task_event", Data: p, Broadcast: true}); err != nil {
		return err
	}
	if sleep > 0 {
		time.Sleep(sleep)
	}
	if rollback {
		return tx.Rollback(ctx)
	}
	return tx.Commit(ctx)
}

func assertGapFree(t *testing.T, db *dbtest.DB, want int64) {
	t.Helper()
	var n, distinct, lo, hi, pending, last int64
	err := db.Pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT seq), coalesce(min(seq),0), coalesce(max(seq),0),
		count(*) FILTER (WHERE seq IS NULL), (SELECT last_seq FROM outbox.relay_state) FROM outbox.events`).
		Scan(&n, &distinct, &lo, &hi, &pending, &last)
	if err != nil {
		t.Fatal(err)
	}
	if n != want || distinct != want || pending != 0 || lo != 1 || hi != want || last != want {
		t.Fatalf("rows=%d distinct seq=%d min=%d max=%d pending=%d last_seq=%d; want %d rows numbered 1..%d",
			n, distinct, lo, hi, pending, last, want, want)
	}
}

// Proof 1: concurrent producers with interleaved commits and rollbacks.
func TestConcurrentProducersOrderedExactlyOnce(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	col := newCollector()
	startRelay(t, db.Pool, col, SequencerConfig{BatchSize: 100})

	const producers, perProducer = 8, 2000
	ctx := context.Background()
	committed := make([][]int, producers) // per producer, n in commit order
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(p), 42))
			for n := range perProducer {
				rollback := r.IntN(10) == 0
				var sleep time.Duration
				if r.IntN(4) == 0 {
					sleep = time.Duration(r.IntN(500)) * time.Microsecond
				}
				if err := emitTx(ctx, db.Pool, producerPayload{p, n}, sleep, rollback); err != nil {
					errs <- err
					return
				}
				if !rollback {
					committed[p] = append(committed[p], n)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := 0
	for _, c := range committed {
		total += len(c)
	}
	evs := col.waitFor(t, 60*time.Second, "all committed events", func(e []Event) bool { return len(e) >= total })
	if len(evs) != total {
		t.Fatalf("dispatched %d events, committed %d", len(evs), total)
	}
	got := make([][]int, producers)
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d: not gap-free or out of order", i, e.Seq)
		}
		var p producerPayload
		if err := json.Unmarshal(e.Payload, &p); err != nil {
			t.Fatal(err)
		}
		got[p.Producer] = append(got[p.Producer], p.N)
	}
	for p := range producers {
		if !slices.Equal(got[p], committed[p]) {
			t.Fatalf("producer %d: delivered %d events not matching its %d commits in order", p, len(got[p]), len(committed[p]))
		}
	}
	assertGapFree(t, db, int64(total))
}

// Proof 2: a long-open transaction does not hold back others.
func TestLongOpenTransactionDoesNotBlock(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	col := newCollector()
	startRelay(t, db.Pool, col, SequencerConfig{})
	ctx := context.Background()

	long, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(ctx) //nolint:errcheck
	longID, err := outbox.Emit(ctx, long, outbox.Event{Topic: "task_event", Data: map[string]any{"long": true}, Broadcast: true})
	if err != nil {
		t.Fatal(err)
	}
	openedAt := time.Now()
	for n := range 50 {
		if err := emitTx(ctx, db.Pool, producerPayload{1, n}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	col.waitFor(t, 10*time.Second, "the 50 short transactions", func(e []Event) bool { return len(e) == 50 })
	if held := time.Since(openedAt); held >= 3*time.Second {
		t.Fatalf("short transactions took %s to relay: they waited for the open one", held)
	}
	time.Sleep(3*time.Second - time.Since(openedAt)) // keep it open 3 s, as an app would
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	evs := col.waitFor(t, 10*time.Second, "the long transaction's event", func(e []Event) bool { return len(e) == 51 })
	last := evs[50]
	if last.ID != longID || last.Seq != 51 {
		t.Fatalf("long transaction's event: id %d seq %d, want id %d seq 51", last.ID, last.Seq, longID)
	}
	if last.ID >= evs[0].ID {
		t.Fatalf("long transaction's id %d should be older than the others (%d): seq follows commit, not id", last.ID, evs[0].ID)
	}
	assertGapFree(t, db, 51)
}

// Proof 3: several sequencers racing on one database.
func TestRacingSequencers(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for i := range 3 {
		s := NewSequencer(db.Pool, SequencerConfig{BatchSize: 50 + 25*i, PollInterval: 5 * time.Millisecond})
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Stop(context.Background()) })
	}
	const producers, per = 4, 1000
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for n := range per {
				if err := emitTx(ctx, db.Pool, producerPayload{p, n}, 0, false); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	waitUntil(t, 30*time.Second, "all rows sequenced", func() bool {
		return db.Int64(t, `SELECT count(*) FROM outbox.events WHERE seq IS NULL`) == 0
	})
	assertGapFree(t, db, producers*per)
}

// waitUntil is testsignal.Eventually, saying what it waited for.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testsignal.Eventually(t, d, cond, func() string { return "waiting for " + what })
}

const helperEnv = "OUTBOXD_TEST_HELPER_DB"

// runHelperSequencer is the child process of TestSequencerKilledMidBatch: it
// claims one batch, says so on stdout and waits to be killed.
func runHelperSequencer() int {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(helperEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s := NewSequencer(pool, SequencerConfig{BatchSize: 1000})
	s.testHookAfterBatch = func() {
		fmt.Println("CLAIMED")
		select {} // hold the transaction open until SIGKILL
	}
	_, err = s.SequenceOnce(ctx)
	fmt.Fprintln(os.Stderr, "helper: batch returned:", err)
	return 3
}

// Proof 4: a sequencer killed between claim and commit.
func TestSequencerKilledMidBatch(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for n := range 100 {
		if err := emitTx(ctx, db.Pool, producerPayload{0, n}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	s := NewSequencer(db.Pool, SequencerConfig{})
	if n, err := s.SequenceOnce(ctx); err != nil || n != 100 {
		t.Fatalf("first batch: %d, %v", n, err)
	}
	for n := range 100 {
		if err := emitTx(ctx, db.Pool, producerPayload{0, 100 + n}, 0, false); err != nil {
			t.Fatal(err)
		}
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+db.URL)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "CLAIMED\n" {
		_ = cmd.Process.Kill()
		t.Fatalf("child did not claim a batch: %q, %v", line, err)
	}
	// While the child holds the lock, another sequencer must back off.
	if _, err := s.SequenceOnce(ctx); err != ErrLockHeld {
		t.Fatalf("sequencer while child holds the lock: %v, want ErrLockHeld", err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// The child's batch rolled back: nothing of it is visible.
	if got := db.Int64(t, `SELECT count(*) FROM outbox.events WHERE seq IS NULL`); got != 100 {
		t.Fatalf("after kill: %d pending rows, want 100", got)
	}
	if got := db.Int64(t, `SELECT last_seq FROM outbox.relay_state`); got != 100 {
		t.Fatalf("after kill: last_seq %d, want 100", got)
	}
	waitUntil(t, 10*time.Second, "the lock to be released", func() bool {
		n, err := s.SequenceOnce(ctx)
		return err == nil && n == 100
	})
	assertGapFree(t, db, 200)
}

// Proof 5: pg_terminate_backend of every relay connection mid-stream.
func TestTerminateBackendRecovers(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	col := newCollector()
	startRelay(t, db.Pool, col, SequencerConfig{BatchSize: 100})
	ctx := context.Background()

	producer, err := pgxpool.New(ctx, db.URL) // a separate pool: the app's
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()

	emitted := 0
	emit := func(k int) {
		for range k {
			if err := emitTx(ctx, producer, producerPayload{0, emitted}, 0, false); err != nil {
				t.Fatal(err)
			}
			emitted++
		}
	}
	for round := range 3 {
		emit(300)
		col.waitFor(t, 10*time.Second, "events before termination", func(e []Event) bool { return len(e) == emitted })
		// Kill the relay's connections (not the producer's: it is idle and
		// reconnects too, but we only measure the relay).
		if n := db.TerminateOthers(t); n == 0 {
			t.Fatalf("round %d: no backend to terminate", round)
		}
		producer.Reset()
		killedAt := time.Now()
		emit(1)
		col.waitFor(t, 10*time.Second, "the first event after termination", func(e []Event) bool { return len(e) == emitted })
		if took := time.Since(killedAt); took > 2*time.Second {
			t.Fatalf("round %d: relay took %s to recover, want ≤ 2s", round, took)
		}
	}
	evs := col.snapshot()
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
	assertGapFree(t, db, int64(emitted))
}

// Proof 7: retention deletes only old sequenced rows, in batches.
func TestRetentionDeletesOnlyOldSequencedRows(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for n := range 250 {
		if err := emitTx(ctx, db.Pool, producerPayload{0, n}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	s := NewSequencer(db.Pool, SequencerConfig{})
	if _, err := s.SequenceOnce(ctx); err != nil {
		t.Fatal(err)
	}
	// Age 200 sequenced rows past the window, and make some pending rows old too.
	db.Exec(t, `UPDATE outbox.events SET delivered_at = now() - interval '2 hours' WHERE seq <= 200`)
	for n := range 10 {
		if err := emitTx(ctx, db.Pool, producerPayload{1, n}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	db.Exec(t, `UPDATE outbox.events SET created_at = now() - interval '3 days' WHERE seq IS NULL`)

	r := NewRetention(db.Pool, RetentionConfig{Window: time.Hour, BatchSize: 30})
	n, err := r.SweepOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 200 {
		t.Fatalf("deleted %d rows, want 200", n)
	}
	if got := db.Int64(t, `SELECT min(seq) FROM outbox.events`); got != 201 {
		t.Fatalf("oldest seq %d, want 201", got)
	}
	if got := db.Int64(t, `SELECT count(*) FROM outbox.events WHERE seq IS NULL`); got != 10 {
		t.Fatalf("pending rows %d, want 10: retention must never delete them", got)
	}
	st, err := ReadStatus(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if st.HeadSeq != 250 || st.OldestSeq != 201 || st.Pending != 10 || st.Lag < 3*24*3600 {
		t.Fatalf("status %+v", st)
	}
	// Started as a service, it sweeps at once and stops cleanly.
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// The tailer starts at the head by default, and Stop is idempotent.
func TestTailerStartsAtHead(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for n := range 5 {
		if err := emitTx(ctx, db.Pool, producerPayload{0, n}, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewSequencer(db.Pool, SequencerConfig{}).SequenceOnce(ctx); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	tail := NewTailer(db.Pool, col, TailerConfig{})
	seq := NewSequencer(db.Pool, SequencerConfig{})
	for _, s := range []interface {
		Start(context.Context) error
	}{tail, seq} {
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 5*time.Second, "tailer ready", tail.Ready)
	if tail.Cursor() != 5 {
		t.Fatalf("cursor %d, want 5", tail.Cursor())
	}
	if err := emitTx(ctx, db.Pool, producerPayload{0, 5}, 0, false); err != nil {
		t.Fatal(err)
	}
	evs := col.waitFor(t, 5*time.Second, "the new event", func(e []Event) bool { return len(e) == 1 })
	if evs[0].Seq != 6 || evs[0].Topic != "task_event" || evs[0].CreatedAt.Location() != time.UTC {
		t.Fatalf("got %+v", evs[0])
	}
	for range 2 {
		if err := tail.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := seq.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
