package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/grupogad/outboxd/internal/backoff"
	"github.com/grupogad/outboxd/internal/startstop"
)

// Defaults for SequencerConfig.
const (
	BatchSizeDefault       = 5000
	PollIntervalDefault    = 100 * time.Millisecond
	MinPollIntervalDefault = 2 * time.Millisecond
	LingerDefault          = time.Second
	LingerPollDefault      = 10 * time.Millisecond
	QueryTimeoutDefault    = 10 * time.Second
)

// NotifyChannel is the channel the sequencer notifies once per batch, with
// the new last_seq as payload.
const NotifyChannel = "outbox_seq"

// SequencerConfig configures a Sequencer. Zero values take the defaults.
type SequencerConfig struct {
	// BatchSize is the most rows numbered in one transaction (5000).
	BatchSize int
	// PollInterval is the longest sleep between polls when idle (100 ms):
	// the sequencer polls every MinPollInterval right after activity and
	// doubles its sleep while nothing arrives, up to this. Measured: 20 ms
	// costs 2.3 % of a core when idle, 100 ms 0.7 % (BENCHMARKS.md).
	PollInterval time.Duration
	// MinPollInterval is the sleep after a partial batch (2 ms): long enough
	// to let a few more rows gather, short enough for latency.
	MinPollInterval time.Duration
	// Linger (1 s) is how long after its last rows the sequencer keeps
	// its idle sleep at most LingerPoll (10 ms) before backing off to
	// PollInterval: an app emitting a few events a second gets them
	// sequenced within ~10 ms instead of ~PollInterval, for a cheap probe
	// every 10 ms while it is active. A quiet system still costs only the
	// PollInterval probe.
	Linger     time.Duration
	LingerPoll time.Duration
	// QueryTimeout bounds every statement and the batch transaction (10 s).
	QueryTimeout time.Duration
	// TracerProvider and MeterProvider default to the OTel globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Logger         *slog.Logger
}

func (c *SequencerConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = BatchSizeDefault
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

	wake chan struct{} // Wake: cut an idle sleep short

	failMu    sync.Mutex
	failSince time.Time // start of the current run of failed batches
	failErr   error     // the latest failure of that run
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
	s := &Sequencer{pool: pool, cfg: cfg, tracer: cfg.TracerProvider.Tracer(scope), wake: make(chan struct{}, 1)}
	m := cfg.MeterProvider.Meter(scope)
	// Instrument creation only fails on invalid names, which these are not.
	s.batchSize, _ = m.Int64Histogram("outboxd.relay.batch.size", metric.WithUnit("{event}"),
		metric.WithDescription("Rows numbered per sequencer batch."),
		metric.WithExplicitBucketBoundaries(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000))
	s.batchDur, _ = m.Float64Histogram("outboxd.relay.batch.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of a non-empty sequencer batch transaction."),
		metric.WithExplicitBucketBoundaries(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	return s
}

const lockSQL = `SELECT last_seq FROM outbox.relay_state FOR UPDATE SKIP LOCKED`

// sequenceSQL numbers up to $1 pending rows after $2 (the locked last_seq),
// advances relay_state and notifies, all in one statement.
const sequenceSQL = `WITH batch AS (
  SELECT id, $2::bigint + row_number() OVER (ORDER BY id) AS seq
  FROM (SELECT id FROM outbox.events WHERE seq IS NULL ORDER BY id LIMIT $1) pending
), upd AS (
  UPDATE outbox.events e SET seq = b.seq, delivered_at = now()
  FROM batch b WHERE e.id = b.id
  RETURNING b.seq
), agg AS (
  SELECT count(*) AS n, coalesce(max(seq), $2::bigint) AS last FROM upd
), st AS (
  UPDATE outbox.relay_state SET last_seq = agg.last FROM agg WHERE agg.n > 0 RETURNING last_seq
), notified AS (
  SELECT pg_notify('` + NotifyChannel + `', last_seq::text) FROM st
)
SELECT agg.n, agg.last, (SELECT count(*) FROM notified) FROM agg`

// SequenceOnce runs one batch and returns how many rows it numbered.
// It returns ErrLockHeld when another sequencer is running.
func (s *Sequencer) SequenceOnce(ctx context.Context) (n int, err error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	defer func() {
		if n > 0 && err == nil {
			s.observeBatch(ctx, start, n)
		}
	}()
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return 0, fmt.Errorf("relay: sequencer begin: %w", err)
	}
	defer func() {
		if err != nil {
			if rerr := tx.Rollback(context.WithoutCancel(ctx)); rerr != nil && !errors.Is(rerr, pgx.ErrTxClosed) {
				err = errors.Join(err, rerr)
			}
		}
	}()
	var last int64
	if err := tx.QueryRow(ctx, lockSQL).Scan(&last); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, ErrLockHeld
		}
		return 0, fmt.Errorf("relay: sequencer lock: %w", err)
	}
	var newLast, notified int64
	if err := tx.QueryRow(ctx, sequenceSQL, s.cfg.BatchSize, last).Scan(&n, &newLast, &notified); err != nil {
		return 0, fmt.Errorf("relay: sequence batch: %w", err)
	}
	if s.testHookAfterBatch != nil && n > 0 {
		s.testHookAfterBatch()
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("relay: sequencer commit: %w", err)
	}
	return n, nil
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
	var bo backoff.Backoff
	idle := s.cfg.MinPollInterval
	var lastRows time.Time
	for ctx.Err() == nil {
		// The batch runs on a context that Stop does not cancel, so a stop
		// finishes the in-flight batch instead of aborting it.
		n, err := s.SequenceOnce(context.WithoutCancel(ctx))
		s.recordResult(err)
		switch {
		case errors.Is(err, ErrLockHeld):
			bo.Reset()
			if !backoff.Sleep(ctx, s.cfg.PollInterval) {
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
			lastRows = time.Now()
			idle = s.cfg.MinPollInterval
			if n >= s.cfg.BatchSize {
				continue
			}
			if !backoff.Sleep(ctx, s.cfg.MinPollInterval) {
				return
			}
			continue
		}
		// Idle: probe cheaply with a growing sleep until something is
		// pending or a producer's trigger wakes us. A wake from before this
		// batch is stale: drop it, this batch saw its rows.
		select {
		case <-s.wake:
		default:
		}
		for {
			woken, ok := s.sleepIdle(ctx, idle)
			if !ok {
				return
			}
			if woken {
				break
			}
			ceiling := s.cfg.PollInterval
			if time.Since(lastRows) < s.cfg.Linger {
				ceiling = s.cfg.LingerPoll
			}
			idle = min(idle*2, ceiling)
			pending, err := s.hasPending(ctx)
			if err != nil || pending {
				break
			}
		}
	}
}

func (s *Sequencer) hasPending(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	var pending bool
	err := s.pool.QueryRow(ctx, pendingSQL).Scan(&pending)
	return pending, err
}
