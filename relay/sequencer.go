package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/grupogad/outboxd/internal/backoff"
	"github.com/grupogad/outboxd/internal/pgconfig"
	"github.com/grupogad/outboxd/internal/startstop"
	"github.com/grupogad/outboxd/internal/testsignal"
)

// Defaults for SequencerConfig.
const (
	BatchSizeDefault       = 5000
	PollIntervalDefault    = 100 * time.Millisecond
	MinPollIntervalDefault = 2 * time.Millisecond
	LingerDefault          = time.Second
	LingerPollDefault      = 10 * time.Millisecond
	QueryTimeoutDefault    = 10 * time.Second
	// BatchCostDefault is SequencerConfig.BatchCost's default: with at most
	// three targets a row, a full batch of 5,000 rows stays within it, and
	// rows at the per-row bound (1,000 targets, migration 00010) go 20 to
	// a batch.
	BatchCostDefault = 20000
)

// NotifyChannel is the channel the sequencer notifies once per batch, with
// the new last_seq as payload.
const NotifyChannel = "outbox_seq"

// SequencerConfig configures a Sequencer. Zero values take the defaults.
type SequencerConfig struct {
	// BatchSize is the most rows numbered in one transaction (5000).
	BatchSize int
	// BatchCost bounds a batch by what numbering costs PostgreSQL: each row
	// counts 1 plus its target entries, which the sequencer's UPDATE enters
	// into the entitlement indexes one by one (BatchCostDefault). A batch
	// always takes at least one row. Rows alone were no bound: one commit
	// of 1,000 rows × 2,500 users made a batch pass its timeout for ever.
	BatchCost int
	// PollInterval is the longest sleep between polls when idle (100 ms):
	// the sequencer polls every MinPollInterval right after activity and
	// doubles its sleep while nothing arrives, up to this. Measured: 20 ms
	// costs 2.3 % of a core when idle, 100 ms 0.7 % (BENCHMARKS.md).
	PollInterval time.Duration
	// MinPollInterval is the shortest sleep after a partial batch (2 ms):
	// the sleep is twice the batch's wall time, at least this, at most three
	// times this (pauseAfter). Most of a batch's cost is fixed (PostgreSQL
	// ~0.5 ms of CPU, outboxd about as much, and a frame to every
	// recipient), so this pause sets what the relay costs the producers
	// under load. Measured (outboxbench's server_cpu_per_event): a fixed 2 → 4 ms
	// cut the relay's CPU per event by 14–18 % with 100 clients and the
	// same latency; this adaptive pause, 21–29 % against a fixed 2 ms.
	// (Starting the next batch at once after a slow batch cost CPU and
	// latency at 2,500 events/s.)
	MinPollInterval time.Duration
	// Linger (1 s) is how long after its last rows the sequencer keeps
	// its idle sleep at most LingerPoll (10 ms) before backing off to
	// PollInterval: an app emitting a few events a second gets them
	// sequenced within ~10 ms instead of ~PollInterval, for a cheap probe
	// every 10 ms while it is active; one emitting more often, within an
	// eighth of its usual gap (lingerCeiling). A quiet system still costs
	// only the PollInterval probe.
	Linger     time.Duration
	LingerPoll time.Duration
	// QueryTimeout bounds every statement and the batch transaction (10 s).
	QueryTimeout time.Duration
	// Handoff, if set, receives the rows of every committed batch (the
	// local fast path, a Tailer): it spares the local hub the NOTIFY → read
	// round trip. Other replicas still read what the NOTIFY announces.
	Handoff Handoff
	// WakeWhenIdle (RELAY_WAKEUP=idle) keeps one connection and holds
	// the advisory lock outbox.notify_pending_if_idle tries (migration
	// 00009) from a batch that finds rows to the next that finds none, so
	// that producers notify only while the sequencer sleeps idle. Its
	// lingering polls then stop at LingerPoll, not an eighth of the gap
	// (lingerCeiling): the wake-up, not the poll, picks up the next row.
	WakeWhenIdle bool
	// Fanout, if set, is the local fan-out's backlog (ws.Hub): after the
	// pause that follows a partial batch, the sequencer waits while that
	// backlog is above FanoutSlack frames and shrinking, at most
	// FanoutWait (awaitFanout). Numbering more rows while the writers
	// still work through the last batch's frames only adds frames and
	// takes CPU from them; waiting lets the rows of that moment go out as
	// one batch, one frame per batch session. When the frames are written
	// within the pause (a host with CPU to spare) it costs one look.
	Fanout Fanout
	// Pooled says the pool goes through a transaction pooler (PgBouncer,
	// LISTEN_DATABASE_URL set): the session settings are applied in each
	// batch's transaction (pgconfig.LocalSettingsSQL), and WakeWhenIdle's
	// session lock is held on a connection of SessionPool.
	Pooled bool
	// SessionPool, with Pooled, holds the connection WakeWhenIdle keeps:
	// a session advisory lock needs a session of its own, which a
	// transaction pooler does not give.
	SessionPool *pgxpool.Pool
	// HandoffBytes bounds the payload bytes handed off per batch
	// (TailBatchBytesDefault): the rest of a larger batch is read from the
	// table by the tailer.
	HandoffBytes int
	// TracerProvider and MeterProvider default to the OTel globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Logger         *slog.Logger
}

func (c *SequencerConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = BatchSizeDefault
	}
	if c.BatchCost <= 0 {
		c.BatchCost = BatchCostDefault
	}
	if c.PollInterval <= 0 {
		c.PollInterval = PollIntervalDefault
	}
	if c.MinPollInterval <= 0 {
		c.MinPollInterval = min(MinPollIntervalDefault, c.PollInterval)
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = QueryTimeoutDefault
	}
	if c.Linger <= 0 {
		c.Linger = LingerDefault
	}
	if c.LingerPoll <= 0 {
		c.LingerPoll = LingerPollDefault
	}
	c.LingerPoll = min(max(c.LingerPoll, c.MinPollInterval), c.PollInterval)
	if c.HandoffBytes <= 0 {
		c.HandoffBytes = TailBatchBytesDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
}

// instrumentation scope of the relay's spans and metrics.
const scope = "github.com/grupogad/outboxd/relay"

// Sequencer assigns seq to committed outbox rows. See the package doc.
type Sequencer struct {
	startstop.Base
	pool *pgxpool.Pool
	cfg  SequencerConfig

	tracer    trace.Tracer
	batchSize metric.Int64Histogram
	batchDur  metric.Float64Histogram

	// testHookAfterBatch runs between the batch statement and COMMIT.
	testHookAfterBatch func()
	// testSignals report what the sequencer did, to tests.
	testSignals sequencerSignals
	// fanoutWait is FanoutWait; a test that holds the fan-out's answers
	// raises it, so that its own pace does not end the wait.
	fanoutWait time.Duration

	wake chan struct{} // Wake: cut an idle sleep short

	// With WakeWhenIdle, the connection the sequencer keeps (nil until
	// the first batch and after an error), and whether it holds
	// idleWakeKey. Only the sequencing goroutine touches them.
	own  *pgxpool.Conn
	busy bool

	failMu    sync.Mutex
	failSince time.Time // start of the current run of failed batches
	failErr   error     // the latest failure of that run

	// rowLimit and costLimit are the current batch bounds: BatchSize and
	// BatchCost, halved after each batch that timed out and doubled back
	// after each that committed (shrink, grow). Written by the sequencing
	// goroutine, read by metrics and readiness.
	rowLimit, costLimit atomic.Int64
	// costCut: the last batch spent most of its cost bound and may have
	// left pending rows out (sequencing goroutine only).
	costCut bool
}

// BatchLimit is the current bound on rows per batch: BatchSize, or less
// while batches that timed out are retried smaller.
func (s *Sequencer) BatchLimit() int { return int(s.rowLimit.Load()) }

// shrink halves the batch bounds after a batch that timed out (at least
// one row is always taken).
func (s *Sequencer) shrink() {
	s.rowLimit.Store(max(s.rowLimit.Load()/2, 1))
	s.costLimit.Store(max(s.costLimit.Load()/2, 1))
}

// grow doubles the batch bounds back towards the configured ones after a
// batch that committed.
func (s *Sequencer) grow() {
	s.rowLimit.Store(min(s.rowLimit.Load()*2, int64(s.cfg.BatchSize)))
	s.costLimit.Store(min(s.costLimit.Load()*2, int64(s.cfg.BatchCost)))
}

// timedOut reports whether err is a batch that ran out of time: the
// batch's own deadline, or PostgreSQL's statement_timeout (57014).
func timedOut(err error) bool {
	var pgErr *pgconn.PgError
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &pgErr) && pgErr.Code == "57014")
}

// FailingSince returns when the current run of failed batches started and
// the latest error, or a nil error when the last batch succeeded (finding
// the lock held by another replica counts as success).
func (s *Sequencer) FailingSince() (time.Time, error) {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	return s.failSince, s.failErr
}

func (s *Sequencer) recordResult(err error) {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	if err == nil || errors.Is(err, ErrLockHeld) {
		s.failSince, s.failErr = time.Time{}, nil
		return
	}
	if s.failErr == nil {
		s.failSince = time.Now()
	}
	s.failErr = err
}

// sequencerSignals are the sequencer's test signals (off in production).
type sequencerSignals struct {
	// idleSlept: an idle sleep ended and the sequencer probes next (true)
	// or runs a batch (false).
	idleSlept testsignal.TestSignal[bool]
	// sleepingIdle: the sequencer found nothing pending and starts
	// sleeping idle (a wake-up from now on is fresh).
	sleepingIdle testsignal.TestSignal[struct{}]
}

// Wake makes an idle sequencer run a batch now instead of at its next
// poll (RELAY_WAKEUP=notify: the tailer's listener calls it on
// PendingChannel). While events flow it changes nothing: the sequencer
// then polls every MinPollInterval, so that batches stay batches.
func (s *Sequencer) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// sleepIdle sleeps for d or until Wake; false if ctx ended.
func (s *Sequencer) sleepIdle(ctx context.Context, d time.Duration) (woken, ok bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, false
	case <-s.wake:
		return true, true
	case <-t.C:
		return false, true
	}
}

// NewSequencer returns a Sequencer working through pool.
func NewSequencer(pool *pgxpool.Pool, cfg SequencerConfig) *Sequencer {
	cfg.setDefaults()
	s := &Sequencer{pool: pool, cfg: cfg, tracer: cfg.TracerProvider.Tracer(scope), wake: make(chan struct{}, 1), fanoutWait: FanoutWait}
	s.rowLimit.Store(int64(cfg.BatchSize))
	s.costLimit.Store(int64(cfg.BatchCost))
	m := cfg.MeterProvider.Meter(scope)
	limit, _ := m.Int64ObservableGauge("outboxd.relay.batch.limit", metric.WithUnit("{event}"),
		metric.WithDescription("Current bound on rows per sequencer batch: RELAY_BATCH_SIZE, or less while batches that timed out are retried smaller."))
	_, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(limit, s.rowLimit.Load())
		return nil
	}, limit)
	// Instrument creation only fails on invalid names, which these are not.
	s.batchSize, _ = m.Int64Histogram("outboxd.relay.batch.rows", metric.WithUnit("{row}"),
		metric.WithDescription("Rows numbered per sequencer batch."),
		metric.WithExplicitBucketBoundaries(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000))
	s.batchDur, _ = m.Float64Histogram("outboxd.relay.batch.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of a non-empty sequencer batch transaction."),
		metric.WithExplicitBucketBoundaries(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	return s
}

// lockSQL takes the sequencing lock, but only when a row is pending: it
// returns whether one is, and relay_state.last_seq if this transaction now
// holds the lock (NULL: another sequencer holds it). A batch that finds
// nothing pending thus locks nothing, gets no transaction id and commits
// without writing or flushing WAL: as cheap as the idle probe, so that
// polling while events flow costs a read, not a durable commit (a row lock
// is a WAL record, and its commit an fsync). MATERIALIZED keeps the
// pending check one index probe (inlined, the planner ran it twice).
const lockSQL = `WITH p AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM outbox.events WHERE seq IS NULL) AS pending)
SELECT pending, (SELECT last_seq FROM outbox.relay_state WHERE pending FOR UPDATE SKIP LOCKED) FROM p`

// sequenceSQL numbers up to $1 pending rows after relay_state.last_seq —
// the prefix of them whose cost (1 + target entries each) starts within $3,
// so at least one; one window computes both the running cost and the
// numbering (measured: the cost bound adds ~0.35 µs a row, the heap reads
// of the targets and the sum, BenchmarkRelayBacklog_100k_Batch5000) —
// advances relay_state and notifies, all in one statement, and returns the
// numbered rows in seq order for the local hand-off (Handoff): the payload
// of a row only while the batch's payloads so far fit in $2 bytes, NULL
// after that (their text length: the stored size is compressed, and a
// commit of 400 rows of 250 KB that compressed to 3 KB each was all sent
// to the sequencer, to be dropped) — payload is NOT NULL in the table, so a
// NULL marks the end of what is handed off; the rest is read from the table
// by the tailer as usual. The rows are the UPDATE's RETURNING, so they are
// exactly what the transaction numbered.
//
// It runs in the same pipeline as lockSQL, right after it, and must do
// nothing unless that statement took the lock: "locked" is relay_state
// only if this transaction holds the row's lock. A row lock writes the
// locker's xid into xmax; a transaction that skipped the row has written
// nothing and has no xid, so pg_current_xact_id_if_assigned() is NULL and
// the comparison false. Being a later statement, its snapshot is taken
// after the lock was granted and sees the previous batch (package doc).
const sequenceSQL = `WITH locked AS (
  SELECT last_seq FROM outbox.relay_state WHERE xmax = xid(pg_current_xact_id_if_assigned())
), pending AS (
  SELECT id, 1 + coalesce(cardinality(target_users), 0) + coalesce(cardinality(target_roles), 0) AS cost,
         sum(1 + coalesce(cardinality(target_users), 0) + coalesce(cardinality(target_roles), 0)) OVER w AS total,
         row_number() OVER w AS rn
  FROM (SELECT id, target_users, target_roles FROM outbox.events WHERE seq IS NULL ORDER BY id LIMIT $1) p
  WINDOW w AS (ORDER BY id)
), batch AS (
  SELECT id, locked.last_seq + rn AS seq, total FROM pending, locked WHERE total - cost < $3
), upd AS (
  UPDATE outbox.events e SET seq = b.seq, delivered_at = now()
  FROM batch b WHERE e.id = b.id
  RETURNING e.id, b.seq, e.topic, e.payload, e.target_users, e.target_roles, coalesce(e.traceparent, '') AS traceparent, e.created_at, b.total
), agg AS (
  SELECT count(*) AS n, max(seq) AS last, max(total) AS cost FROM upd
), st AS (
  UPDATE outbox.relay_state SET last_seq = agg.last FROM agg WHERE agg.n > 0 RETURNING last_seq
), notified AS (
  SELECT pg_notify('` + NotifyChannel + `', last_seq::text) FROM st
)
SELECT id, seq, topic,
  CASE WHEN $2 >= 0 AND sum(octet_length(payload::text)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) <= $2 THEN payload END,
  target_users, target_roles, traceparent, created_at, (SELECT count(*) FROM notified), (SELECT cost FROM agg)
FROM upd ORDER BY seq`

// wakeLockSQL takes idleWakeKey for the session (WakeWhenIdle), but only
// in a transaction that holds the sequencing lock (sequenceSQL's test): a
// replica that finds the lock held elsewhere is not the one producers
// should stop waking. A producer may hold the key for its transaction:
// then the try fails and the sequencer works without it, and the
// producers of that moment may notify (a wake-up that finds the sequencer
// busy is dropped).
const wakeLockSQL = `SELECT pg_try_advisory_lock(` + idleWakeKey + `)
FROM outbox.relay_state WHERE xmax = xid(pg_current_xact_id_if_assigned())`

// idleSQL lets go of idleWakeKey and then, in a later statement (a
// snapshot taken after the producers can notify again), asks whether a
// row is pending: one that committed before is seen here, one after is
// announced by its trigger. (One whose INSERT ran before the unlock and
// whose COMMIT lands after the probe is in neither: the next poll finds it.)
var idleSQL = []string{`SELECT pg_advisory_unlock(` + idleWakeKey + `)`, pendingSQL}

// FanoutSlack is the backlog of frames (Fanout) the sequencer starts its
// next batch over; FanoutWait bounds how much longer than its pause it
// waits for a larger one to shrink, and fanoutStep is how often it looks.
const (
	FanoutSlack = 64
	FanoutWait  = 14 * time.Millisecond
	fanoutStep  = time.Millisecond
)

// awaitFanout waits while f's backlog is over FanoutSlack and shrinking
// (a backlog that stops shrinking belongs to sessions that cannot take
// more — slow or stuck clients — and waiting for it would hold every
// other client's events), at most limit. sleep sleeps like backoff.Sleep
// and now reads the clock (tests pass their own). It reports false if ctx
// ended.
func awaitFanout(ctx context.Context, f Fanout, limit time.Duration, sleep func(context.Context, time.Duration) bool, now func() time.Time) bool {
	if f == nil {
		return true
	}
	deadline := now().Add(limit)
	for prev := -1; ; {
		n := f.Unwritten()
		if n <= FanoutSlack || (prev >= 0 && n >= prev) || !now().Before(deadline) {
			return true
		}
		prev = n
		if !sleep(ctx, fanoutStep) {
			return false
		}
	}
}

// Handoff receives the batches the local sequencer commits, in seq order,
// on the sequencer's goroutine; neither method may block. Tailer is one.
type Handoff interface {
	// Committing(true) announces that a batch is being numbered and
	// committed: a reader that hears of new rows meanwhile can wait for
	// Offer instead of reading them. Committing(false) says that no offer
	// follows (nothing numbered, nothing within the bound, or no commit).
	Committing(inFlight bool)
	// Offer hands over the rows of a committed batch; it ends Committing.
	Offer(events []Event)
}

// SequenceOnce runs one batch and returns how many rows it numbered.
// It returns ErrLockHeld when rows are pending and another sequencer holds
// the lock (with nothing pending it returns 0: there was nothing to
// lock for). Once the batch
// has committed, the rows it numbered (as many as fit in HandoffBytes) go
// to Handoff.
//
// The transaction is one round trip, a pipeline: BEGIN, the lock, the
// batch statement (which does nothing unless the lock was taken, see
// sequenceSQL), COMMIT. An error skips what follows it in the pipeline, and
// the transaction is rolled back.
func (s *Sequencer) SequenceOnce(ctx context.Context) (n int, err error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	defer func() {
		if n > 0 && err == nil {
			s.observeBatch(ctx, start, n)
		}
	}()
	conn, err := s.acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("relay: sequencer acquire: %w", err)
	}
	defer func() {
		// A transaction left open by an error is rolled back; a connection
		// that cannot do even that is closed, and the pool replaces it.
		if c := conn.Conn(); c.PgConn().TxStatus() != 'I' && !c.IsClosed() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.QueryTimeout)
			if _, rerr := c.Exec(rctx, "ROLLBACK"); rerr != nil {
				err = errors.Join(err, rerr)
				_ = c.Close(rctx)
			}
			cancel()
		}
		s.release(conn, err)
	}()
	var handoff *[]Event
	if s.cfg.Handoff != nil {
		handoff = new([]Event)
		// From here until the offer, a notification of this batch must
		// not send the local tailer to the table: the offer follows.
		s.cfg.Handoff.Committing(true)
	}
	n, took, err := s.batch(ctx, conn.Conn(), handoff)
	if took {
		s.busy = true
	}
	if handoff == nil {
		return n, err
	}
	if err != nil || len(*handoff) == 0 {
		s.cfg.Handoff.Committing(false)
		return n, err
	}
	// Only now are the seqs durable: a client may see them.
	s.cfg.Handoff.Offer(*handoff)
	return n, nil
}

// acquire returns the connection for a batch: the pool's, or with
// WakeWhenIdle the one the sequencer keeps.
func (s *Sequencer) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	if !s.cfg.WakeWhenIdle {
		return s.pool.Acquire(ctx)
	}
	if s.own == nil {
		p := s.pool
		if s.cfg.SessionPool != nil {
			p = s.cfg.SessionPool
		}
		c, err := p.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		s.own, s.busy = c, false
	}
	return s.own, nil
}

// release gives conn back to the pool or, with WakeWhenIdle, keeps it
// unless the batch failed: a failed batch may have taken idleWakeKey (a
// session lock outlives a rollback), and one that found the sequencing
// lock held elsewhere must not keep producers from waking that replica.
// The connection is closed, and the key goes with it.
func (s *Sequencer) release(conn *pgxpool.Conn, err error) {
	switch {
	case !s.cfg.WakeWhenIdle:
		conn.Release()
	case conn.Conn().IsClosed() || err != nil && (s.busy || !errors.Is(err, ErrLockHeld)):
		s.dropOwn()
	}
}

// dropOwn closes the connection WakeWhenIdle keeps, if any.
func (s *Sequencer) dropOwn() {
	if s.own == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.QueryTimeout)
	_ = s.own.Conn().Close(ctx)
	cancel()
	s.own.Release() // closed: the pool discards it
	s.own, s.busy = nil, false
}

// letGo, with WakeWhenIdle and idleWakeKey held, lets go of the key
// (producers wake the sequencer from now on) and reports whether a row
// is pending after that (idleSQL). A failure closes the connection, which
// lets go of the key as well.
func (s *Sequencer) letGo(ctx context.Context) (pending bool, err error) {
	if !s.busy {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	b := &pgx.Batch{}
	for _, q := range idleSQL {
		b.Queue(q)
	}
	br := s.own.Conn().SendBatch(ctx, b)
	var unlocked bool
	if err = br.QueryRow().Scan(&unlocked); err == nil {
		err = br.QueryRow().Scan(&pending)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && !unlocked {
		err = errors.New("the wake-up lock was not held") // PostgreSQL logs a warning too
	}
	if err != nil {
		s.dropOwn()
		return false, fmt.Errorf("relay: sequencer going idle: %w", err)
	}
	s.busy = false
	return pending, nil
}

// batch runs the pipeline and returns the batch's size; with handoff
// non-nil it keeps there the rows to hand off (a prefix of the batch within
// HandoffBytes). With WakeWhenIdle and idleWakeKey not yet held, a batch
// that takes the sequencing lock also takes idleWakeKey (tookWake), before
// COMMIT: a session lock outlives its transaction.
func (s *Sequencer) batch(ctx context.Context, conn *pgx.Conn, handoff *[]Event) (n int, tookWake bool, err error) {
	limit := s.cfg.HandoffBytes
	if handoff == nil {
		limit = -1 // no payload comes back
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED")
	if s.cfg.Pooled {
		b.Queue(pgconfig.LocalSettingsSQL)
	}
	b.Queue(lockSQL)
	rowLimit, costLimit := s.rowLimit.Load(), s.costLimit.Load()
	b.Queue(sequenceSQL, rowLimit, limit, costLimit)
	tryWake := s.cfg.WakeWhenIdle && !s.busy
	if tryWake {
		b.Queue(wakeLockSQL)
	}
	if s.testHookAfterBatch == nil {
		b.Queue("COMMIT")
	}
	br := conn.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("relay: sequencer: %w", cerr)
		}
	}()
	if _, err := br.Exec(); err != nil {
		return 0, false, fmt.Errorf("relay: sequencer begin: %w", err)
	}
	if s.cfg.Pooled {
		if _, err := br.Exec(); err != nil {
			return 0, false, fmt.Errorf("relay: sequencer settings: %w", err)
		}
	}
	var pending bool
	var last *int64
	if err := br.QueryRow().Scan(&pending, &last); err != nil {
		return 0, false, fmt.Errorf("relay: sequencer lock: %w", err)
	}
	locked := last != nil
	rows, err := br.Query()
	if err != nil {
		return 0, false, fmt.Errorf("relay: sequence batch (up to %d rows, %d cost): %w", rowLimit, costLimit, err)
	}
	kept, bytes := handoff != nil, 0
	var cost int64
	var created pgtype.Timestamptz
	for rows.Next() {
		n++
		if !kept && n > 1 {
			continue
		}
		var e Event
		var payload []byte
		var notified int64
		if err := rows.Scan(&e.ID, &e.Seq, &e.Topic, &payload, &e.Users, &e.Roles, &e.Traceparent, &created, &notified, &cost); err != nil {
			rows.Close()
			return 0, false, fmt.Errorf("relay: sequence batch: %w", err)
		}
		// Hold the bytes received to the budget too.
		if !kept {
			continue
		}
		if bytes += len(payload); payload == nil || bytes > s.cfg.HandoffBytes {
			kept = false
			continue
		}
		e.Payload = payload
		setCreatedAt(&e, created)
		*handoff = append(*handoff, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, false, fmt.Errorf("relay: sequence batch (up to %d rows, %d cost): %w", rowLimit, costLimit, err)
	}
	if tryWake {
		// A row (the lock's outcome) only if this transaction sequences.
		if err := br.QueryRow().Scan(&tookWake); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return 0, false, fmt.Errorf("relay: sequencer wake lock: %w", err)
		}
	}
	switch {
	case !locked && n > 0:
		// Cannot happen (sequenceSQL's guard); never commit it if it does.
		return 0, false, fmt.Errorf("relay: sequence batch numbered %d rows without the lock", n)
	case s.testHookAfterBatch != nil:
		if locked && n > 0 {
			s.testHookAfterBatch()
		}
		if err := br.Close(); err != nil {
			return 0, false, fmt.Errorf("relay: sequence batch: %w", err)
		}
		if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
			return 0, false, fmt.Errorf("relay: sequencer commit: %w", err)
		}
		if conn.PgConn().TxStatus() != 'I' {
			return 0, false, errors.New("relay: sequencer commit: transaction still open")
		}
	default:
		if _, err := br.Exec(); err != nil {
			return 0, false, fmt.Errorf("relay: sequencer commit: %w", err)
		}
	}
	if !locked && pending {
		return 0, false, ErrLockHeld
	}
	// A batch that spent most of its cost bound may have left rows out:
	// the next batch starts at once, as after a full one (if nothing is
	// left, it finds nothing and the sequencer goes idle as usual).
	s.costCut = n > 0 && cost > costLimit/2
	return n, tookWake, nil
}

// observeBatch records a committed batch. The span is created after the
// fact, with the batch's start time, so that empty polls leave no span.
func (s *Sequencer) observeBatch(ctx context.Context, start time.Time, n int) {
	end := time.Now()
	_, span := s.tracer.Start(ctx, "outbox sequence", trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attribute.Int("outboxd.batch.rows", n), semconv.MessagingBatchMessageCount(n)))
	span.End(trace.WithTimestamp(end))
	s.batchSize.Record(ctx, int64(n))
	s.batchDur.Record(ctx, end.Sub(start).Seconds())
}

// pendingSQL is the cheap idle probe: one index lookup, no transaction.
const pendingSQL = `SELECT EXISTS (SELECT 1 FROM outbox.events WHERE seq IS NULL)`

// Start launches the sequencing loop.
func (s *Sequencer) Start(ctx context.Context) error { return s.StartFunc(ctx, s.run) }

func (s *Sequencer) run(ctx context.Context) {
	defer s.dropOwn()
	var bo backoff.Backoff
	idle := s.cfg.MinPollInterval
	var lastRows time.Time
	// gap is the running average of the time between batches that found
	// rows, while they come within Linger of each other (0: unknown).
	var gap time.Duration
	for ctx.Err() == nil {
		// The batch runs on a context that Stop does not cancel, so a stop
		// finishes the in-flight batch instead of aborting it.
		start := time.Now()
		n, err := s.SequenceOnce(context.WithoutCancel(ctx))
		s.recordResult(err)
		switch {
		case errors.Is(err, ErrLockHeld):
			bo.Reset()
			if !backoff.Sleep(ctx, s.cfg.PollInterval) {
				return
			}
			continue
		case err != nil && timedOut(err):
			rows, cost := s.rowLimit.Load(), s.costLimit.Load()
			s.shrink()
			s.cfg.Logger.Warn("sequencer batch timed out; retrying it smaller", "err", err,
				"rows", rows, "cost", cost, "next_rows", s.rowLimit.Load(), "next_cost", s.costLimit.Load())
			recoverPool(s.pool, err, s.cfg.Logger)
			if !bo.Wait(ctx) {
				return
			}
			continue
		case err != nil:
			s.cfg.Logger.Warn("sequencer batch failed; retrying", "err", err)
			recoverPool(s.pool, err, s.cfg.Logger)
			if !bo.Wait(ctx) {
				return
			}
			continue
		}
		bo.Reset()
		if n > 0 {
			if s.rowLimit.Load() < int64(s.cfg.BatchSize) || s.costLimit.Load() < int64(s.cfg.BatchCost) {
				s.grow()
			}
			now := time.Now()
			gap = s.cfg.nextGap(gap, lastRows, now)
			lastRows = now
			took := lastRows.Sub(start)
			idle = s.cfg.MinPollInterval
			if n >= s.cfg.BatchSize || s.costCut || s.rowLimit.Load() < int64(s.cfg.BatchSize) {
				continue // a full batch, or a backlog worked through in smaller ones
			}
			if !backoff.Sleep(ctx, s.cfg.pauseAfter(took)) {
				return
			}
			if !awaitFanout(ctx, s.cfg.Fanout, s.fanoutWait, backoff.Sleep, time.Now) {
				return
			}
			continue
		}
		// Idle: sleep longer each time until something is pending or a
		// producer's trigger wakes us. A wake from before this batch is
		// stale: drop it, this batch saw its rows. (WakeWhenIdle: before
		// letting go of the key, from when on wakes are fresh.)
		select {
		case <-s.wake:
		default:
		}
		if pending, err := s.letGo(ctx); err != nil {
			s.cfg.Logger.Warn("sequencer could not go idle; retrying", "err", err)
			continue
		} else if pending {
			continue
		}
		s.testSignals.sleepingIdle.Signal(struct{}{})
		for {
			woken, ok := s.sleepIdle(ctx, idle)
			if !ok {
				return
			}
			if woken {
				break
			}
			ceiling := s.cfg.PollInterval
			lingering := time.Since(lastRows) < s.cfg.Linger
			if lingering {
				ceiling = s.cfg.lingerCeiling(gap)
			}
			idle = min(idle*2, ceiling)
			// Soon after rows the next batch is the probe: finding nothing
			// it locks nothing (lockSQL) and costs about what the probe
			// does, and finding rows it numbers them one round trip sooner.
			// A quiet system probes: one statement, no transaction.
			s.testSignals.idleSlept.Signal(!lingering)
			if lingering {
				break
			}
			pending, err := s.hasPending(ctx)
			if err != nil || pending {
				break
			}
		}
	}
}

// pauseAfter is the sleep after a partial batch that took d: twice d,
// within [MinPollInterval, 3 × MinPollInterval] (and at most PollInterval).
// A batch's cost is mostly fixed, and its wall time grows when the host or
// the database is busy (waiting for a core, for the WAL flush): the
// sequencer then batches less often, and the producers keep the CPU. On a
// quiet host a batch takes ~1 ms and the pause stays MinPollInterval. The
// ceiling is latency's: every ms of pause is half a ms at the median, and
// 2 × d up to 10 ms cost 18 % at w3's median in the side-by-side.
func (c *SequencerConfig) pauseAfter(d time.Duration) time.Duration {
	return min(max(2*d, c.MinPollInterval), 3*c.MinPollInterval, max(c.PollInterval, c.MinPollInterval))
}

// lingerCeiling is the longest idle sleep while lingering: an eighth of
// the usual gap between batches that found rows, within [MinPollInterval,
// LingerPoll] (LingerPoll while the gap is unknown). Doubling the sleep up
// to LingerPoll whatever the gap made an app emitting every 10 ms wait
// for the sleeps 2, 2, 4, 8 ms after each batch: ~1 ms of median latency at
// 100 events/s to 1,000 clients, half of it at 50 events/s to 10 (the
// pickup wait). The price is more empty batches (each a read, lockSQL):
// at most about eight per batch that finds rows, ~5 % of a core at 50
// events/s. An app a few events a second keeps LingerPoll, and so does a
// sequencer that producers wake (WakeWhenIdle). Measured with outboxbench
// (-scenario custom -clients 1000 -rate 100), alternated.
func (c *SequencerConfig) lingerCeiling(gap time.Duration) time.Duration {
	if gap <= 0 || c.WakeWhenIdle {
		return c.LingerPoll
	}
	return min(max(gap/8, c.MinPollInterval), c.LingerPoll)
}

// nextGap folds the time since the last batch that found rows (at last)
// into the running average gap, when it came within Linger; a longer quiet
// spell forgets the average.
func (c *SequencerConfig) nextGap(gap time.Duration, last, now time.Time) time.Duration {
	g := now.Sub(last)
	switch {
	case last.IsZero() || g >= c.Linger:
		return 0
	case gap <= 0:
		return g
	}
	return gap + (g-gap)/4
}

func (s *Sequencer) hasPending(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	var pending bool
	err := s.pool.QueryRow(ctx, pendingSQL).Scan(&pending)
	return pending, err
}
