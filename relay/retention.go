package relay

import (
	"context"
	"fmt"
	"log/slog"
	"time"

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
	// BatchSize is the most rows one DELETE removes (10000), so that a sweep
	// never holds long locks or bloats WAL in one statement.
	BatchSize    int
	QueryTimeout time.Duration
	Logger       *slog.Logger
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

// deleteSQL walks the seq index from the oldest row; delivered_at grows with
// seq, so the scan stops at the first row inside the window.
const deleteSQL = `DELETE FROM outbox.events WHERE seq IN (
  SELECT seq FROM outbox.events
  WHERE seq IS NOT NULL AND delivered_at < now() - $1::interval
  ORDER BY seq LIMIT $2)`

// SweepOnce deletes expired rows in batches and returns how many it deleted.
func (r *Retention) SweepOnce(ctx context.Context) (int64, error) {
	var total int64
	for {
		qctx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
		tag, err := r.pool.Exec(qctx, deleteSQL, r.cfg.Window, r.cfg.BatchSize)
		cancel()
		if err != nil {
			return total, fmt.Errorf("relay: retention: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(r.cfg.BatchSize) || ctx.Err() != nil {
			return total, nil
		}
	}
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
