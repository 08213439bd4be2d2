package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/startstop"
)

// Defaults for RetentionConfig.
const (
	RetentionDefault          = 24 * time.Hour
	RetentionIntervalDefault  = time.Minute
	RetentionBatchSizeDefault = 10000
)

// RetentionConfig configures Retention. Zero values take the defaults.
type RetentionConfig struct {
	// Window: sequenced rows delivered longer ago than this are deleted (24 h).
	Window time.Duration
	// Interval between sweeps (1 min).
	Interval time.Duration
	// BatchSize is the seq range one DELETE covers (10000), so that a
	// statement's cost is bounded and a sweep never holds long locks or
	// bloats WAL in one statement.
	BatchSize int
	// RevocationTTL: revocations (outbox.revocations, written by
	// outbox.disconnect) older than this are deleted (RevocationTTLDefault).
	// It is the longest token lifetime the hub accepts (JWT_MAX_TTL): a
	// token issued before an older revocation has expired anyway.
	RevocationTTL time.Duration
	QueryTimeout  time.Duration
	Logger        *slog.Logger
}

func (c *RetentionConfig) setDefaults() {
	if c.Window <= 0 {
		c.Window = RetentionDefault
	}
	if c.Interval <= 0 {
		c.Interval = RetentionIntervalDefault
	}
	if c.BatchSize <= 0 {
		c.BatchSize = RetentionBatchSizeDefault
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = QueryTimeoutDefault
	}
	if c.RevocationTTL <= 0 {
		c.RevocationTTL = RevocationTTLDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Retention deletes old sequenced rows. Pending rows (seq IS NULL) are never
// touched, whatever their age.
type Retention struct {
	startstop.Base
	pool *pgxpool.Pool
	cfg  RetentionConfig
}

// NewRetention returns a Retention service.
func NewRetention(pool *pgxpool.Pool, cfg RetentionConfig) *Retention {
	cfg.setDefaults()
	return &Retention{pool: pool, cfg: cfg}
}

// Retention deletes by seq ranges, walking up from the oldest retained seq
// and stopping at the first range that holds an unexpired row. delivered_at
// grows with seq (batches are numbered one after another, each stamped with
// its transaction's start), so every row past that range is unexpired too.
// Each statement touches one range of at most BatchSize seqs through the
// seq index, so its cost does not depend on how many rows are retained. A
// DELETE … WHERE delivered_at < … ORDER BY seq LIMIT n instead walked the
// whole retained table whenever fewer than n rows had expired: with 18M
// rows retained it timed out, rolled back and deleted nothing, forever.
//
// The plan of deleteRangeSQL (PostgreSQL 15, 200,000 rows retained; the
// same at 5,000,100, where a sweep takes 2.4 ms, BENCHMARKS.md):
//
//	Result
//	  CTE gone
//	    ->  Delete on events
//	          ->  Index Scan using events_seq_key on events
//	                Index Cond: ((seq >= '1'::bigint) AND (seq < '10001'::bigint))
//	                Filter: (delivered_at < '…'::timestamp with time zone)
//	  InitPlan 3 (returns $3)
//	    ->  Index Scan using events_seq_key on events events_1
//	          Index Cond: ((seq >= '1'::bigint) AND (seq < '10001'::bigint))
//	          Filter: (delivered_at >= '…'::timestamp with time zone)
const (
	cutoffSQL      = `SELECT now() - $1::interval`
	oldestFromSQL  = `SELECT seq FROM outbox.events WHERE seq >= $1 ORDER BY seq LIMIT 1`
	deleteRangeSQL = `WITH gone AS (
  DELETE FROM outbox.events WHERE seq >= $1 AND seq < $2 AND delivered_at < $3 RETURNING 1)
SELECT (SELECT count(*) FROM gone),
       EXISTS (SELECT 1 FROM outbox.events WHERE seq >= $1 AND seq < $2 AND delivered_at >= $3)`
)

// RevocationTTLDefault is RetentionConfig.RevocationTTL's default, the
// hub's default JWT_MAX_TTL.
const RevocationTTLDefault = 24 * time.Hour

// expireRevocationsSQL deletes revocations older than $1; a few rows per
// disconnect, so one statement.
const expireRevocationsSQL = `WITH gone AS (
  DELETE FROM outbox.revocations WHERE revoked_at < now() - $1::interval RETURNING 1)
SELECT count(*) FROM gone`

// SweepOnce deletes expired rows range by range, and expired revocations,
// and returns how many events it deleted.
func (r *Retention) SweepOnce(ctx context.Context) (int64, error) {
	var revoked int64
	if err := r.query(ctx, expireRevocationsSQL, []any{r.cfg.RevocationTTL}, &revoked); err != nil {
		return 0, err
	}
	var cutoff time.Time
	if err := r.query(ctx, cutoffSQL, []any{r.cfg.Window}, &cutoff); err != nil {
		return 0, err
	}
	var total int64
	from := int64(0)
	for ctx.Err() == nil {
		var lo int64
		if err := r.query(ctx, oldestFromSQL, []any{from}, &lo); errors.Is(err, pgx.ErrNoRows) {
			return total, nil
		} else if err != nil {
			return total, err
		}
		hi := lo + int64(r.cfg.BatchSize)
		var deleted int64
		var unexpired bool
		if err := r.query(ctx, deleteRangeSQL, []any{lo, hi, cutoff}, &deleted, &unexpired); err != nil {
			return total, err
		}
		total += deleted
		if unexpired {
			return total, nil
		}
		from = hi
	}
	return total, nil
}

func (r *Retention) query(ctx context.Context, sql string, args []any, dest ...any) error {
	qctx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
	defer cancel()
	if err := r.pool.QueryRow(qctx, sql, args...).Scan(dest...); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		return fmt.Errorf("relay: retention: %w", err)
	}
	return nil
}

// Start launches the periodic sweep.
func (r *Retention) Start(ctx context.Context) error {
	return r.StartFunc(ctx, func(ctx context.Context) {
		t := time.NewTicker(r.cfg.Interval)
		defer t.Stop()
		for {
			n, err := r.SweepOnce(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				r.cfg.Logger.Warn("retention sweep failed", "err", err)
			case n > 0:
				r.cfg.Logger.Info("retention sweep", "deleted", n)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}
