package relay

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/dbtest"
)

// pileTargeted commits rows × users-targeted rows, perCommit at a time,
// through outbox.emit as a producer would.
func pileTargeted(t *testing.T, pool *pgxpool.Pool, rows, users, perCommit int) {
	t.Helper()
	ctx := context.Background()
	for done := 0; done < rows; done += perCommit {
		_, err := pool.Exec(ctx, `SELECT outbox.emit('task_event', jsonb_build_object('n', g),
		    ARRAY(SELECT 'user-' || (g * 7 + i) FROM generate_series(1, $2::int) i), NULL)
		  FROM generate_series($1::int, $1::int + $3::int - 1) g`, done, users, min(perCommit, rows-done))
		if err != nil {
			t.Fatal(err)
		}
	}
}

// emitOrdinary commits one broadcast and returns its id.
func emitOrdinary(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var id int64
	if err := pool.QueryRow(context.Background(), `SELECT outbox.emit('system_event', '{"ordinary":true}')`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func hasID(id int64) func([]Event) bool {
	return func(evs []Event) bool {
		for _, e := range evs {
			if e.ID == id {
				return true
			}
		}
		return false
	}
}

// A row may carry at most 1,000 target entries and 64 KiB of them: one
// over is refused at INSERT, in the producer's transaction, by name.
func TestTargetsPerRowAreBounded(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for _, c := range []struct {
		name, sql, constraint string
	}{
		{"1,001 users", `SELECT outbox.emit('x', '{}', ARRAY(SELECT 'u' || i FROM generate_series(1, 1001) i))`, "events_targets_max_1000_check"},
		{"600 users + 401 roles", `SELECT outbox.emit('x', '{}', ARRAY(SELECT 'u' || i FROM generate_series(1, 600) i), ARRAY(SELECT 'r' || i FROM generate_series(1, 401) i))`, "events_targets_max_1000_check"},
		{"65 KiB of users", `SELECT outbox.emit('x', '{}', ARRAY(SELECT repeat('u', 650) || i FROM generate_series(1, 101) i))`, "events_targets_max_64kib_check"},
	} {
		_, err := db.Pool.Exec(ctx, c.sql)
		var pgErr *pgconn.PgError
		if !asPgError(err, &pgErr) || pgErr.ConstraintName != c.constraint {
			t.Errorf("%s: err %v, want a violation of %s", c.name, err, c.constraint)
		}
	}
	for _, ok := range []string{
		`SELECT outbox.emit('x', '{}', ARRAY(SELECT 'u' || i FROM generate_series(1, 1000) i))`,
		`SELECT outbox.emit('x', '{}', ARRAY(SELECT 'u' || i FROM generate_series(1, 500) i), ARRAY(SELECT 'r' || i FROM generate_series(1, 500) i))`,
	} {
		if _, err := db.Pool.Exec(ctx, ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

func asPgError(err error, target **pgconn.PgError) bool {
	if err == nil {
		return false
	}
	pgErr, ok := err.(*pgconn.PgError)
	if !ok {
		return false
	}
	*target = pgErr
	return true
}

// 3,000 rows × 1,000 users committed in 200-row commits while no sequencer
// runs pile up into one backlog (3 million entitlement-index entries). A
// batch of rows alone took them all in one statement, past its timeout,
// and retried it for ever; batches bounded by cost number them 20 at a
// time, and the ordinary event committed after them is delivered.
func TestPiledTargetedRowsDoNotStallTheRelay(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	pileTargeted(t, db.Pool, 3000, 1000, 200)
	id := emitOrdinary(t, db.Pool)
	col := newCollector()
	// The timeout a rows-only batch of this backlog overran here (3,000
	// rows took ~5 s); a cost-bounded batch takes ~50 ms.
	seq, _ := startRelay(t, db.Pool, col, SequencerConfig{QueryTimeout: 3 * time.Second})
	col.waitFor(t, 2*time.Minute, "the ordinary event after the pile", hasID(id))
	if _, err := seq.FailingSince(); err != nil {
		t.Fatalf("sequencer failing after the pile: %v", err)
	}
	assertGapFree(t, db, 3001)
}

// recordingHandler is a slog handler that hands each record's message to
// a channel: a signal the test waits on.
type recordingHandler struct {
	mu   sync.Mutex
	msgs chan string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case h.msgs <- r.Message:
	default:
	}
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

// Without a cost bound (a BatchCost too high to bind), a batch that times
// out is retried with half the rows, and again, until it commits; the
// bound then grows back to RELAY_BATCH_SIZE. The sequencer is not
// reported failing once the smaller batches commit.
func TestTimedOutBatchIsSplit(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	pileTargeted(t, db.Pool, 1000, 1000, 250)
	id := emitOrdinary(t, db.Pool)
	col := newCollector()
	rec := &recordingHandler{msgs: make(chan string, 64)}
	seq, _ := startRelay(t, db.Pool, col, SequencerConfig{
		QueryTimeout: 500 * time.Millisecond, BatchCost: 1 << 40, Logger: slog.New(rec),
	})
	deadline := time.After(time.Minute)
	for shrunk := false; !shrunk; {
		select {
		case m := <-rec.msgs:
			shrunk = strings.Contains(m, "timed out; retrying it smaller")
		case <-deadline:
			t.Fatal("no batch timed out: the pile is too small for this host, or the split is gone")
		}
	}
	// Readiness names the smaller batches (and stays green while they
	// commit: checked below through FailingSince).
	if d := (&Readiness{Sequencer: seq}).Degraded(); !strings.Contains(d, "after a batch timed out") {
		t.Errorf("readiness while batches are split: %q", d)
	}
	col.waitFor(t, 2*time.Minute, "the ordinary event after the pile", hasID(id))
	if _, err := seq.FailingSince(); err != nil {
		t.Fatalf("sequencer failing after the pile: %v", err)
	}
	emitOrdinary(t, db.Pool)
	waitUntil(t, time.Minute, "the batch bound back at RELAY_BATCH_SIZE", func() bool {
		if seq.BatchLimit() < BatchSizeDefault {
			emitOrdinary(t, db.Pool) // each committed batch doubles it back
			return false
		}
		return true
	})
}

// outbox.emit_batch refuses arrays whose lengths differ from topics,
// naming the argument: unnest padded the shorter ones with NULLs, and a
// row with NULL users and NULL roles reached everyone.
func TestEmitBatchRefusesRaggedArrays(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	for arg, sql := range map[string]string{
		"payloads":     `SELECT outbox.emit_batch(ARRAY['a','b'], ARRAY['{}']::jsonb[], NULL, NULL, NULL)`,
		"users":        `SELECT outbox.emit_batch(ARRAY['a','b','c'], ARRAY['{}','{}','{}']::jsonb[], ARRAY['["alice"]']::jsonb[], NULL, NULL)`,
		"roles":        `SELECT outbox.emit_batch(ARRAY['a','b'], ARRAY['{}','{}']::jsonb[], NULL, ARRAY['["R"]','["R"]','["R"]']::jsonb[], NULL)`,
		"traceparents": `SELECT outbox.emit_batch(ARRAY['a','b'], ARRAY['{}','{}']::jsonb[], NULL, NULL, ARRAY['x'])`,
	} {
		_, err := db.Pool.Exec(ctx, sql)
		if err == nil || !strings.Contains(err.Error(), "emit_batch: "+arg+" has") {
			t.Errorf("%s shorter or longer than topics: err %v", arg, err)
		}
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.events`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows inserted (%v), want none", n, err)
	}
	// Equal lengths, and NULL for a whole argument, still insert.
	if _, err := db.Pool.Exec(ctx, `SELECT outbox.emit_batch(ARRAY['a','b'], ARRAY['{}','{}']::jsonb[], ARRAY['["alice"]', 'null']::jsonb[], NULL, NULL)`); err != nil {
		t.Fatal(err)
	}
}

// created_at is the database's: a value given at INSERT is replaced by
// clock_timestamp(). A row whose created_at an UPDATE behind the relay's
// back set to infinity is still numbered and delivered, marked Malformed,
// with the rows around it — it used to fail every read that met it, on
// every replica, and withhold the rows before it in the same read.
func TestCreatedAtBelongsToTheDatabase(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	var created time.Time
	if err := db.Pool.QueryRow(ctx, `INSERT INTO outbox.events (topic, payload, created_at) VALUES ('task_event', '{}', 'infinity')
		RETURNING created_at`).Scan(&created); err != nil {
		t.Fatal(err)
	}
	if time.Since(created) > time.Minute || time.Until(created) > time.Minute {
		t.Fatalf("created_at %v: the INSERT's value was kept", created)
	}
	var bad int64
	if err := db.Pool.QueryRow(ctx, `SELECT outbox.emit('task_event', '{"n":2}')`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE outbox.events SET created_at = 'infinity' WHERE id = $1`, bad); err != nil {
		t.Fatal(err)
	}
	emitOrdinary(t, db.Pool)
	col := newCollector()
	// No hand-off: the tailer reads every row from the table.
	startRelay(t, db.Pool, col, SequencerConfig{})
	evs := col.waitFor(t, 30*time.Second, "three events", func(evs []Event) bool { return len(evs) == 3 })
	for i, e := range evs {
		if e.Seq != int64(i+1) || e.Malformed != (e.ID == bad) {
			t.Errorf("event %d: seq %d id %d malformed %v (the infinity row is %d)", i, e.Seq, e.ID, e.Malformed, bad)
		}
	}
	// A replay read meets it too.
	page, got, err := NewStore(db.Pool).ReadEntitled(ctx, ReplayQuery{After: 0, Span: 10, User: "u"}, nil)
	if err != nil || len(got) != 3 || !got[1].Malformed || page.ScannedTo != 3 {
		t.Fatalf("replay read: %d events, %+v, err %v", len(got), page, err)
	}
}
