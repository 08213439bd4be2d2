package relay

import (
	"context"
	"errors"
	"fmt"
	"github.com/grupogad/outboxd/internal/backoff"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/startstop"
)

// Defaults for SequencerConfig.
const (
	BatchSizeDefault       = 5000
	PollIntervalDefault    = 20 * time.Millisecond
	MinPollIntervalDefault = 2 * time.Millisecond
	QueryTimeoutDefault    = 10 * time.Second
)

// NotifyChannel is the channel the sequencer notifies once per batch, with
// the new last_seq as payload.
const NotifyChannel = "outbox_seq"

// SequencerConfig configures a Sequencer. Zero values take the defaults.
type SequencerConfig struct {
	// BatchSize is the most rows numbered in one transaction (5000).
	BatchSize int
	// PollInterval is the longest sleep between polls when idle (20 ms).
	PollInterval time.Duration
	// MinPollInterval is the sleep after a partial batch (2 ms): long enough
	// to let a few more rows gather, short enough for latency.
	MinPollInterval time.Duration
	// QueryTimeout bounds every statement and the batch transaction (10 s).
	QueryTimeout time.Duration
	// OnBatch, if set, is called after each committed non-empty batch.
	OnBatch func(rows int, took time.Duration)
	Logger  *slog.Logger
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
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Sequencer assigns seq to committed outbox rows. See the package doc.
type Sequencer struct {
	startstop.Base
	pool *pgxpool.Pool
	cfg  SequencerConfig

	// testHookAfterBatch runs between the batch statement and COMMIT.
	testHookAfterBatch func()
}

// NewSequencer returns a Sequencer working through pool.
func NewSequencer(pool *pgxpool.Pool, cfg SequencerConfig) *Sequencer {
	cfg.setDefaults()
	return &Sequencer{pool: pool, cfg: cfg}
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
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
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

// pendingSQL is the cheap idle probe: one index lookup, no transaction.
const pendingSQL = `SELECT EXISTS (SELECT 1 FROM outbox.events WHERE seq IS NULL)`

// Start launches the sequencing loop.
func (s *Sequencer) Start(ctx context.Context) error { return s.StartFunc(ctx, s.run) }

func (s *Sequencer) run(ctx context.Context) {
	var bo backoff.Backoff
	idle := s.cfg.MinPollInterval
	for ctx.Err() == nil {
		// The batch runs on a context that Stop does not cancel, so a stop
		// finishes the in-flight batch instead of aborting it.
		start := time.Now()
		n, err := s.SequenceOnce(context.WithoutCancel(ctx))
		switch {
		case errors.Is(err, ErrLockHeld):
			bo.Reset()
			if !backoff.Sleep(ctx, s.cfg.PollInterval) {
				return
			}
			continue
		case err != nil:
			s.cfg.Logger.Warn("sequencer batch failed; retrying", "err", err)
			recoverPool(s.pool, err)
			if !bo.Wait(ctx) {
				return
			}
			continue
		}
		bo.Reset()
		if n > 0 {
			if s.cfg.OnBatch != nil {
				s.cfg.OnBatch(n, time.Since(start))
			}
			idle = s.cfg.MinPollInterval
			if n >= s.cfg.BatchSize {
				continue
			}
			if !backoff.Sleep(ctx, s.cfg.MinPollInterval) {
				return
			}
			continue
		}
		// Idle: probe cheaply with a growing sleep until something is pending.
		for {
			if !backoff.Sleep(ctx, idle) {
				return
			}
			idle = min(idle*2, s.cfg.PollInterval)
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
