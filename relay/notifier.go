package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/backoff"
	"github.com/grupogad/outboxd/internal/startstop"
	"github.com/grupogad/outboxd/internal/testsignal"
)

// NotifierConfig configures a Notifier. Zero values take the defaults.
type NotifierConfig struct {
	// Ping (ListenPingDefault, 5 s): after this long without a notification
	// the notifier pings its connection, and replaces it when the ping does
	// not come back within Ping. A half-open TCP connection would otherwise
	// hold it for the OS keepalive (minutes), with every wake-up lost.
	Ping time.Duration
	// QueryTimeout bounds acquiring the connection and the LISTEN.
	QueryTimeout time.Duration
	Logger       *slog.Logger
}

// Notifier owns the LISTEN connection (river's internal/notifier is the
// model): one dedicated session, LISTENing on every channel a subscriber
// asked for, pinged when quiet, replaced with backoff when lost, and each
// notification routed to its channel's subscribers. Services subscribe to
// it instead of holding connections, or each other, to be woken.
//
// A notification sent while the connection was being replaced is lost:
// every subscriber is told (OnListen) after each LISTEN, and catches up.
type Notifier struct {
	startstop.Base
	pool *pgxpool.Pool
	cfg  NotifierConfig

	mu       sync.Mutex
	subs     map[string][]func(payload string)
	onListen []func()

	testSignals notifierSignals
}

// notifierSignals are the notifier's test signals (off in production).
type notifierSignals struct {
	// listening: a LISTEN succeeded, at that time (each reconnect too).
	listening testsignal.TestSignal[time.Time]
	// pinged: a quiet connection answered its ping.
	pinged testsignal.TestSignal[struct{}]
}

// NewNotifier returns a Notifier taking its connection from pool (a direct
// session: LISTEN does not work through a transaction pooler).
func NewNotifier(pool *pgxpool.Pool, cfg NotifierConfig) *Notifier {
	if cfg.Ping <= 0 {
		cfg.Ping = ListenPingDefault
	}
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = QueryTimeoutDefault
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Notifier{pool: pool, cfg: cfg, subs: map[string][]func(string){}}
}

// Subscribe calls fn with the payload of every notification on channel,
// on the notifier's goroutine (fn must not block). Subscribe before Start.
func (n *Notifier) Subscribe(channel string, fn func(payload string)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.subs[channel] = append(n.subs[channel], fn)
}

// OnListen calls fn after every successful LISTEN — the first and each
// after a lost connection — when notifications may have been missed.
func (n *Notifier) OnListen(fn func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onListen = append(n.onListen, fn)
}

// Start launches the listening loop.
func (n *Notifier) Start(ctx context.Context) error { return n.StartFunc(ctx, n.run) }

func (n *Notifier) run(ctx context.Context) {
	var bo backoff.Backoff
	for ctx.Err() == nil {
		err := n.listenOnce(ctx, &bo)
		if ctx.Err() != nil {
			return
		}
		n.cfg.Logger.Warn("listen connection lost; reconnecting", "err", err)
		recoverPool(n.pool, err, n.cfg.Logger)
		if !bo.Wait(ctx) {
			return
		}
	}
}

func (n *Notifier) listenOnce(ctx context.Context, bo *backoff.Backoff) error {
	n.mu.Lock()
	channels := make([]string, 0, len(n.subs))
	for ch := range n.subs {
		channels = append(channels, ch)
	}
	onListen := append([]func(){}, n.onListen...)
	n.mu.Unlock()
	sort.Strings(channels)

	actx, cancel := context.WithTimeout(ctx, n.cfg.QueryTimeout)
	pc, err := n.pool.Acquire(actx)
	cancel()
	if err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	// The connection is ours now: a LISTEN must not go back to the pool.
	conn := pc.Hijack()
	defer conn.Close(context.Background())
	if len(channels) > 0 {
		lctx, cancel := context.WithTimeout(ctx, n.cfg.QueryTimeout)
		_, err = conn.Exec(lctx, "LISTEN "+strings.Join(channels, "; LISTEN "))
		cancel()
		if err != nil {
			return fmt.Errorf("LISTEN: %w", err)
		}
	}
	bo.Reset()
	n.testSignals.listening.Signal(time.Now())
	for _, fn := range onListen {
		fn()
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, n.cfg.Ping)
		note, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil && ctx.Err() == nil && pgconn.Timeout(err) {
			// Quiet: prove the connection still answers.
			pctx, cancel := context.WithTimeout(ctx, n.cfg.Ping)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("listen connection did not answer a ping within %s: %w", n.cfg.Ping, err)
			}
			n.testSignals.pinged.Signal(struct{}{})
			continue
		}
		if err != nil {
			return err
		}
		n.mu.Lock()
		subs := n.subs[note.Channel]
		n.mu.Unlock()
		for _, fn := range subs {
			fn(note.Payload)
		}
	}
}
