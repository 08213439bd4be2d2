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
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/backoff"
	"github.com/grupogad/outboxd/internal/startstop"
)

// Defaults for TailerConfig.
const (
	TailBatchSizeDefault  = 1000
	TailBatchBytesDefault = 1 << 20
	FallbackPollDefault   = time.Second
	ListenPingDefault     = 5 * time.Second
)

// TailerConfig configures a Tailer. Zero values take the defaults.
type TailerConfig struct {
	// BatchSize is the most events read and dispatched at once (1000).
	BatchSize int
	// BatchBytes bounds the payload bytes of one read (1 MiB): with rows of
	// up to 256 KiB, a batch of BatchSize rows could hold a gigabyte.
	BatchBytes int
	// FallbackPoll is how often the tailer reads without a notification (1 s).
	FallbackPoll time.Duration
	// ListenPing (5 s): after this long without a notification the
	// listener pings its connection, and replaces it when the ping does not
	// come back within ListenPing. A half-open TCP connection would
	// otherwise hold the listener for the OS keepalive (minutes), with
	// every wake-up lost meanwhile.
	ListenPing time.Duration
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
	// Epoch is the history StartAfter belongs to ("": read at start). The
	// tailer checks the database's history on every fallback poll; when it
	// changed, or the head went back behind the cursor, it rebases (see
	// Rebaser).
	Epoch  string
	Logger *slog.Logger
	// Notifier, if set, is the relay's notifier (NewRelay's): the tailer
	// subscribes to it, and the notifier's owner starts it. Unset, the
	// tailer runs a notifier of its own, on ListenPool or its pool.
	Notifier *Notifier
	// ListenPool, if set, is where a notifier of the tailer's own takes
	// its connection (LISTEN_DATABASE_URL): a direct session when the
	// tailer's pool goes through a transaction pooler.
	ListenPool *pgxpool.Pool
	// Reads, if set, sends the tailer's pages to a streaming standby while
	// it keeps up (READ_DATABASE_URL); the history checks stay here.
	Reads *Reads
}

func (c *TailerConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = TailBatchSizeDefault
	}
	if c.BatchBytes <= 0 {
		c.BatchBytes = TailBatchBytesDefault
	}
	if c.FallbackPoll <= 0 {
		c.FallbackPoll = FallbackPollDefault
	}
	if c.ListenPing <= 0 {
		c.ListenPing = ListenPingDefault
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
	// lastRead is when a read of the table last succeeded (unix ns).
	lastRead atomic.Int64
	// epoch is the history the cursor belongs to; run loop only.
	epoch string

	// notifier wakes the tailer; own says the tailer runs it.
	notifier *Notifier
	own      bool

	// offered holds batches handed over by the local sequencer (Offer),
	// within cfg.BatchBytes; taken whole by the run loop.
	offerMu      sync.Mutex
	offered      []Event
	offeredBytes int
	// committing: the local sequencer is committing a batch whose offer
	// follows (Committing).
	committing atomic.Bool
	// mustRead asks the run loop to read the table whatever the head it
	// heard of (set after every LISTEN: notifications may have been missed
	// meanwhile).
	mustRead atomic.Bool
	// standbyRetrying: a read of a lagging standby is scheduled.
	standbyRetrying atomic.Bool
	// handedOff and read count the events dispatched from Offer and from
	// table reads.
	handedOff, read atomic.Int64
}

// LastRead returns when a read of the table last succeeded.
func (t *Tailer) LastRead() time.Time { return time.Unix(0, t.lastRead.Load()) }

// NewTailer returns a Tailer dispatching to d.
func NewTailer(pool *pgxpool.Pool, d Dispatcher, cfg TailerConfig) *Tailer {
	cfg.setDefaults()
	t := &Tailer{pool: pool, cfg: cfg, d: d, wake: make(chan struct{}, 1), notifier: cfg.Notifier}
	if t.notifier == nil {
		lp := pool
		if cfg.ListenPool != nil {
			lp = cfg.ListenPool
		}
		t.notifier = NewNotifier(lp, NotifierConfig{Ping: cfg.ListenPing, QueryTimeout: cfg.QueryTimeout, Logger: cfg.Logger})
		t.own = true
		if cfg.OnPending != nil {
			t.notifier.Subscribe(PendingChannel, func(string) { cfg.OnPending() })
		}
	}
	t.notifier.Subscribe(NotifyChannel, t.notified)
	t.notifier.OnListen(t.relistened)
	return t
}

// Stop stops the read loop, and the tailer's own notifier if it has one.
func (t *Tailer) Stop(ctx context.Context) error {
	err := t.Base.Stop(ctx)
	if t.own {
		err = errors.Join(err, t.notifier.Stop(ctx))
	}
	return err
}

// notified handles a NOTIFY of the sequencer's: payload is the new head.
func (t *Tailer) notified(payload string) {
	var seq int64
	if _, err := fmt.Sscan(payload, &seq); err == nil && seq > t.head.Load() {
		t.head.Store(seq)
		t.cfg.Reads.announce(seq)
	}
	t.poke()
}

// relistened: notifications may have been missed while the notifier was
// not listening; read the table.
func (t *Tailer) relistened() {
	t.mustRead.Store(true)
	t.poke()
}

// Cursor returns the last dispatched seq.
func (t *Tailer) Cursor() int64 { return t.cursor.Load() }

// Ready reports whether the tailer has read its starting position.
func (t *Tailer) Ready() bool { return t.ready.Load() && t.Running() }

// Start launches the listener and the read loop.
func (t *Tailer) Start(ctx context.Context) error {
	if t.own {
		if err := t.notifier.Start(ctx); err != nil {
			return err
		}
	}
	return t.StartFunc(ctx, t.run)
}

func (t *Tailer) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
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
			recoverPool(t.pool, err, t.cfg.Logger)
			if !bo.Wait(ctx) {
				return
			}
		}
	}
	ticker := time.NewTicker(t.cfg.FallbackPoll)
	defer ticker.Stop()
	readTable := true
	for {
		if err := t.step(ctx, readTable); err != nil {
			if ctx.Err() != nil {
				return
			}
			t.cfg.Logger.Warn("tailer read failed; retrying", "err", err, "cursor", t.cursor.Load())
			recoverPool(t.pool, err, t.cfg.Logger)
			if !bo.Wait(ctx) {
				return
			}
			readTable = true // an offer that failed to dispatch is in the table
			continue
		}
		bo.Reset()
		readTable = false
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		case <-ticker.C:
			readTable = true
			if err := t.checkHistory(ctx); err != nil && ctx.Err() == nil {
				t.cfg.Logger.Warn("tailer history check failed", "err", err)
				recoverPool(t.pool, err, t.cfg.Logger)
			}
		}
	}
}

// Committing records whether the local sequencer is committing a batch
// (Handoff): a notification meanwhile does not send the tailer to the
// table, the offer follows; when none does, the tailer looks again.
func (t *Tailer) Committing(inFlight bool) {
	t.committing.Store(inFlight)
	if !inFlight {
		t.poke()
	}
}

// Offer hands the tailer the rows of a batch the local sequencer has just
// committed (Handoff): when they follow its cursor they are dispatched
// without the NOTIFY → read round trip; otherwise they are dropped and read
// from the table as usual. It never blocks: beyond BatchBytes of offered
// payload the older offers are dropped (they are in the table).
func (t *Tailer) Offer(events []Event) {
	n := 0
	for i := range events {
		n += len(events[i].Payload)
	}
	t.offerMu.Lock()
	if len(t.offered) > 0 && (t.offered[len(t.offered)-1].Seq+1 != events[0].Seq || t.offeredBytes+n > t.cfg.BatchBytes) {
		t.offered, t.offeredBytes = nil, 0
	}
	t.offered = append(t.offered, events...)
	t.offeredBytes += n
	t.offerMu.Unlock()
	t.committing.Store(false)
	t.poke()
}

var _ Handoff = (*Tailer)(nil)

// Handed reports how many events were dispatched from offers and how many
// from table reads.
func (t *Tailer) Handed() (offered, read int64) { return t.handedOff.Load(), t.read.Load() }

// takeOffered dispatches the offered events that follow the cursor; an
// offer that does not (another replica's batch came between, or an offer
// was dropped) is left to the table read that the notifications ask for.
func (t *Tailer) takeOffered(ctx context.Context) error {
	t.offerMu.Lock()
	evs := t.offered
	t.offered, t.offeredBytes = nil, 0
	t.offerMu.Unlock()
	cursor := t.cursor.Load()
	for len(evs) > 0 && evs[0].Seq <= cursor {
		evs = evs[1:] // already read from the table
	}
	if len(evs) == 0 || evs[0].Seq != cursor+1 {
		return nil
	}
	if err := t.d.Dispatch(ctx, evs); err != nil {
		return fmt.Errorf("dispatch: %w", err)
	}
	last := evs[len(evs)-1].Seq
	t.cursor.Store(last)
	if last > t.head.Load() {
		t.head.Store(last)
	}
	t.cfg.Reads.announce(last)
	t.handedOff.Add(int64(len(evs)))
	return nil
}

// step dispatches what the local sequencer offered, then reads the table
// when asked to (start, fallback poll, retry, a LISTEN (re)established) or
// when a notification announced a head beyond the cursor — unless the
// local sequencer is committing a batch: its offer comes first (or its
// failure, which pokes), and what the offer does not cover is read after.
func (t *Tailer) step(ctx context.Context, readTable bool) error {
	if err := t.takeOffered(ctx); err != nil {
		return err
	}
	if t.mustRead.Swap(false) {
		readTable = true
	}
	if readTable || (t.head.Load() > t.cursor.Load() && !t.committing.Load()) {
		return t.drain(ctx)
	}
	return nil
}

// checkHistory compares the database's history with the cursor's. Another
// epoch means the database was recreated or restored from another history;
// a head behind the cursor means it was restored to an earlier point of
// this one, and the seqs after that point will be reused for other events:
// the tailer then gives the history a new epoch, so that clients holding the
// old seqs are told to resync instead of being replayed the new ones.
func (t *Tailer) checkHistory(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, t.cfg.QueryTimeout)
	defer cancel()
	h, err := ReadHistory(qctx, t.pool)
	if err != nil {
		return err
	}
	t.lastRead.Store(time.Now().UnixNano())
	cursor := t.cursor.Load()
	if h.Epoch == t.epoch && h.Head >= cursor {
		return nil
	}
	if h.Epoch == t.epoch {
		// Only if nobody rotated it meanwhile (another replica, same finding).
		err := t.pool.QueryRow(qctx, `UPDATE outbox.relay_state
		  SET epoch = replace(gen_random_uuid()::text, '-', '') WHERE epoch = $1 RETURNING last_seq, epoch`, h.Epoch).Scan(&h.Head, &h.Epoch)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("relay: new epoch: %w", err)
		}
		if err != nil {
			if h, err = ReadHistory(qctx, t.pool); err != nil {
				return err
			}
		}
	}
	t.cfg.Logger.Warn("the database holds another outbox history (restored or recreated): clients will resync",
		"old_epoch", t.epoch, "epoch", h.Epoch, "cursor", cursor, "head", h.Head)
	if r, ok := t.d.(Rebaser); ok {
		r.Rebase(ctx, h.Epoch, h.Head)
	}
	t.epoch = h.Epoch
	t.cursor.Store(h.Head)
	t.head.Store(h.Head)
	return nil
}

func (t *Tailer) initCursor(ctx context.Context) error {
	if t.cfg.StartAfter != nil && *t.cfg.StartAfter >= 0 && t.cfg.Epoch != "" {
		t.cursor.Store(*t.cfg.StartAfter)
		t.epoch = t.cfg.Epoch
	} else {
		ctx, cancel := context.WithTimeout(ctx, t.cfg.QueryTimeout)
		defer cancel()
		h, err := ReadHistory(ctx, t.pool)
		if err != nil {
			return err
		}
		head := h.Head
		if t.cfg.StartAfter != nil && *t.cfg.StartAfter >= 0 {
			head = *t.cfg.StartAfter
		}
		t.cursor.Store(head)
		t.head.Store(head)
		t.epoch = h.Epoch
	}
	t.lastRead.Store(time.Now().UnixNano())
	t.ready.Store(true)
	return nil
}

// drain reads and dispatches until a read comes back short. A read holds
// at most BatchBytes of payload (plus one row): when rows are large, the
// next read asks for only as many rows as fitted, so little is read and
// dropped.
func (t *Tailer) drain(ctx context.Context) error {
	buf := make([]Event, 0, min(t.cfg.BatchSize, 256))
	limit := t.cfg.BatchSize
	reads := t.cfg.Reads
	reads.announce(t.head.Load())
	for {
		var err error
		var full bool
		q, standby := Querier(t.pool), false
		if p, ok := reads.pick(true); ok {
			q, standby = p, true
		}
		buf, full, err = ReadAfter(ctx, q, t.cursor.Load(), limit, t.cfg.BatchBytes, buf[:0], t.cfg.QueryTimeout)
		if err != nil && standby && ctx.Err() == nil {
			reads.failed(err) // and read this page from the primary
			buf, full, err = ReadAfter(ctx, t.pool, t.cursor.Load(), limit, t.cfg.BatchBytes, buf[:0], t.cfg.QueryTimeout)
			standby = false
		}
		if err != nil {
			return err
		}
		reads.counted(standby)
		t.lastRead.Store(time.Now().UnixNano())
		if len(buf) == 0 {
			if standby && t.cursor.Load() < t.head.Load() {
				// The standby has not replayed what was announced yet: look
				// again shortly (it is bypassed past READ_MAX_LAG).
				t.retryStandby()
			}
			return nil
		}
		if err := t.d.Dispatch(ctx, buf); err != nil {
			return fmt.Errorf("dispatch: %w", err)
		}
		t.read.Add(int64(len(buf)))
		last := buf[len(buf)-1].Seq
		t.cursor.Store(last)
		if last > t.head.Load() {
			t.head.Store(last)
		}
		clear(buf) // the hub has what it needs: let the payloads go
		switch {
		case full:
			limit = len(buf) + 1
		case len(buf) < limit:
			if standby && last < t.head.Load() {
				t.retryStandby()
			}
			return nil
		default:
			limit = min(limit*2, t.cfg.BatchSize)
		}
	}
}

// standbyRetry is how soon the tailer reads a lagging standby again.
const standbyRetry = 5 * time.Millisecond

// retryStandby reads again shortly: the standby has not replayed what
// was announced yet (past READ_MAX_LAG it is bypassed). One retry is
// pending at a time.
func (t *Tailer) retryStandby() {
	if t.standbyRetrying.Swap(true) {
		return
	}
	time.AfterFunc(standbyRetry, func() {
		t.standbyRetrying.Store(false)
		t.mustRead.Store(true)
		t.poke()
	})
}

// ReadAfter appends to buf up to limit events with seq > after, in seq
// order, and stops early once maxBytes of payload are held (0: no byte
// bound); full reports that early stop.
func ReadAfter(ctx context.Context, q Querier, after int64, limit, maxBytes int, buf []Event, timeout time.Duration) (_ []Event, full bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rows, err := q.Query(ctx, selectEvents+` WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
	if err != nil {
		return buf, false, err
	}
	defer rows.Close()
	bytes := 0
	var created pgtype.Timestamptz
	for rows.Next() {
		var e Event
		if err := scanEvent(rows, &e, &created); err != nil {
			return buf, false, err
		}
		buf = append(buf, e)
		if bytes += len(e.Payload); maxBytes > 0 && bytes >= maxBytes {
			full = true
			break
		}
	}
	rows.Close()
	return buf, full, rows.Err()
}

// Querier is satisfied by *pgxpool.Pool, *pgx.Conn and pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}
