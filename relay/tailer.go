package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/backoff"
	"github.com/grupogad/outboxd/internal/startstop"
)

// Defaults for TailerConfig.
const (
	TailBatchSizeDefault = 1000
	FallbackPollDefault  = time.Second
)

// TailerConfig configures a Tailer. Zero values take the defaults.
type TailerConfig struct {
	// BatchSize is the most events read and dispatched at once (1000).
	BatchSize int
	// FallbackPoll is how often the tailer reads without a notification (1 s).
	FallbackPoll time.Duration
	// QueryTimeout bounds every statement (10 s).
	QueryTimeout time.Duration
	// StartAfter is the seq to start after; negative (the default, -1 via
	// NewTailer when unset) means the head at start, so a new replica does
	// not replay history into the hub: clients that need it resume from the
	// table with since=.
	StartAfter *int64
	// OnPending, if set, is called on every notification on PendingChannel
	// (RELAY_WAKEUP=notify): the listener connection LISTENs on it too, so
	// the wake-up costs no extra connection.
	OnPending func()
	Logger    *slog.Logger
}

func (c *TailerConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = TailBatchSizeDefault
	}
	if c.FallbackPoll <= 0 {
		c.FallbackPoll = FallbackPollDefault
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = QueryTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Tailer reads sequenced events in seq order and dispatches them.
type Tailer struct {
	startstop.Base
	pool   *pgxpool.Pool
	cfg    TailerConfig
	d      Dispatcher
	wake   chan struct{}
	cursor atomic.Int64 // last dispatched seq
	ready  atomic.Bool  // cursor initialised
	head   atomic.Int64 // newest last_seq heard of (notification or read)
}

// NewTailer returns a Tailer dispatching to d.
func NewTailer(pool *pgxpool.Pool, d Dispatcher, cfg TailerConfig) *Tailer {
	cfg.setDefaults()
	return &Tailer{pool: pool, cfg: cfg, d: d, wake: make(chan struct{}, 1)}
}

// Cursor returns the last dispatched seq.
func (t *Tailer) Cursor() int64 { return t.cursor.Load() }

// Ready reports whether the tailer has read its starting position.
func (t *Tailer) Ready() bool { return t.ready.Load() && t.Running() }

// Start launches the listener and the read loop.
func (t *Tailer) Start(ctx context.Context) error {
	return t.StartFunc(ctx, func(ctx context.Context) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			t.listen(ctx)
		}()
		t.run(ctx)
		<-done
	})
}

func (t *Tailer) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// listen holds a dedicated connection LISTENing on NotifyChannel and pokes
// the read loop on every notification and after every (re)connect.
func (t *Tailer) listen(ctx context.Context) {
	var bo backoff.Backoff
	for ctx.Err() == nil {
		err := t.listenOnce(ctx, &bo)
		if ctx.Err() != nil {
			return
		}
		t.cfg.Logger.Warn("tailer listen connection lost; reconnecting", "err", err)
		recoverPool(t.pool, err)
		if !bo.Wait(ctx) {
			return
		}
	}
}

func (t *Tailer) listenOnce(ctx context.Context, bo *backoff.Backoff) error {
	actx, cancel := context.WithTimeout(ctx, t.cfg.QueryTimeout)
	pc, err := t.pool.Acquire(actx)
	cancel()
	if err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	// The connection is ours now: a LISTEN must not go back to the pool.
	conn := pc.Hijack()
	defer conn.Close(context.Background())
	lctx, cancel := context.WithTimeout(ctx, t.cfg.QueryTimeout)
	listen := "LISTEN " + NotifyChannel
	if t.cfg.OnPending != nil {
		listen += "; LISTEN " + PendingChannel
	}
	_, err = conn.Exec(lctx, listen)
	cancel()
	if err != nil {
		return fmt.Errorf("LISTEN: %w", err)
	}
	bo.Reset()
	t.poke() // catch up with whatever was sequenced while not listening
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel == PendingChannel {
			t.cfg.OnPending()
			continue
		}
		var seq int64
		if _, err := fmt.Sscan(n.Payload, &seq); err == nil && seq > t.head.Load() {
			t.head.Store(seq)
		}
		t.poke()
	}
}

func (t *Tailer) run(ctx context.Context) {
	var bo backoff.Backoff
	for !t.ready.Load() {
		if err := t.initCursor(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			t.cfg.Logger.Warn("tailer start position unavailable; retrying", "err", err)
			recoverPool(t.pool, err)
			if !bo.Wait(ctx) {
				return
			}
		}
	}
	ticker := time.NewTicker(t.cfg.FallbackPoll)
	defer ticker.Stop()
	for {
		if err := t.drain(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			t.cfg.Logger.Warn("tailer read failed; retrying", "err", err, "cursor", t.cursor.Load())
			recoverPool(t.pool, err)
			if !bo.Wait(ctx) {
				return
			}
			continue
		}
		bo.Reset()
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		case <-ticker.C:
		}
	}
}

func (t *Tailer) initCursor(ctx context.Context) error {
	if t.cfg.StartAfter != nil && *t.cfg.StartAfter >= 0 {
		t.cursor.Store(*t.cfg.StartAfter)
		t.ready.Store(true)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.cfg.QueryTimeout)
	defer cancel()
	var head int64
	if err := t.pool.QueryRow(ctx, `SELECT last_seq FROM outbox.relay_state`).Scan(&head); err != nil {
		return err
	}
	t.cursor.Store(head)
	t.head.Store(head)
	t.ready.Store(true)
	return nil
}

// drain reads and dispatches until a read comes back short.
func (t *Tailer) drain(ctx context.Context) error {
	buf := make([]Event, 0, t.cfg.BatchSize)
	for {
		var err error
		buf, err = ReadAfter(ctx, t.pool, t.cursor.Load(), t.cfg.BatchSize, buf[:0], t.cfg.QueryTimeout)
		if err != nil {
			return err
		}
		if len(buf) == 0 {
			return nil
		}
		if err := t.d.Dispatch(ctx, buf); err != nil {
			return fmt.Errorf("dispatch: %w", err)
		}
		last := buf[len(buf)-1].Seq
		t.cursor.Store(last)
		if last > t.head.Load() {
			t.head.Store(last)
		}
		if len(buf) < t.cfg.BatchSize {
			return nil
		}
	}
}

// ReadAfter appends to buf up to limit events with seq > after, in seq order.
func ReadAfter(ctx context.Context, q Querier, after int64, limit int, buf []Event, timeout time.Duration) ([]Event, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rows, err := q.Query(ctx, selectEvents+` WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
	if err != nil {
		return buf, err
	}
	defer rows.Close()
	for rows.Next() {
		var e Event
		if err := scanEvent(rows, &e); err != nil {
			return buf, err
		}
		buf = append(buf, e)
	}
	return buf, rows.Err()
}

// Querier is satisfied by *pgxpool.Pool, *pgx.Conn and pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}
