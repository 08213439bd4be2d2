package relay

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// RelayConfig configures a Relay: the three services and how they are
// wired to each other and to the dispatcher.
type RelayConfig struct {
	// StartAfter is the seq the tailer starts after, and Epoch the history
	// it belongs to: the dispatcher's own head (a hub's, read at its start).
	StartAfter int64
	Epoch      string
	// Handoff: the sequencer hands each committed batch to this relay's
	// tailer directly (RELAY_HANDOFF).
	Handoff bool
	// SessionPool, when set (LISTEN_DATABASE_URL), holds the sessions a
	// transaction pooler cannot: the tailer's LISTEN and WakeWhenIdle's
	// lock; the relay's pool then gets pooler-safe settings (Pooled).
	SessionPool *pgxpool.Pool
	Sequencer   SequencerConfig
	Tailer      TailerConfig
	Retention   RetentionConfig
}

// Relay is the relay's services wired once: the sequencer numbers rows,
// the tailer hands them to the dispatcher in seq order (with the
// sequencer's batches handed off locally, and producers' wake-ups passed
// to the sequencer), retention deletes old ones. If the dispatcher also
// reports its fan-out's backlog (Fanout), the sequencer paces itself by
// it. The services stay reachable for readiness and tests.
type Relay struct {
	Notifier  *Notifier
	Sequencer *Sequencer
	Tailer    *Tailer
	Retention *Retention
}

// NewRelay wires the relay's services on pool for d.
func NewRelay(pool *pgxpool.Pool, d Dispatcher, cfg RelayConfig) *Relay {
	r := &Relay{}
	listen := pool
	if cfg.SessionPool != nil {
		listen = cfg.SessionPool
	}
	r.Notifier = NewNotifier(listen, NotifierConfig{Ping: cfg.Tailer.ListenPing, QueryTimeout: cfg.Tailer.QueryTimeout, Logger: cfg.Tailer.Logger})
	tcfg := cfg.Tailer
	tcfg.StartAfter, tcfg.Epoch, tcfg.Notifier = &cfg.StartAfter, cfg.Epoch, r.Notifier
	r.Tailer = NewTailer(pool, d, tcfg)
	scfg := cfg.Sequencer
	if cfg.Handoff && scfg.Handoff == nil {
		scfg.Handoff = r.Tailer
	}
	if f, ok := d.(Fanout); ok && scfg.Fanout == nil {
		scfg.Fanout = f
	}
	if cfg.SessionPool != nil {
		scfg.Pooled, scfg.SessionPool = true, cfg.SessionPool
	}
	r.Sequencer = NewSequencer(pool, scfg)
	// Producers' wake-ups (RELAY_WAKEUP=idle or notify) reach the
	// sequencer through the notifier.
	r.Notifier.Subscribe(PendingChannel, func(string) { r.Sequencer.Wake() })
	if tcfg.OnPending != nil {
		r.Notifier.Subscribe(PendingChannel, func(string) { tcfg.OnPending() })
	}
	r.Retention = NewRetention(pool, cfg.Retention)
	return r
}

// Start starts the notifier, the tailer, the sequencer and retention; if
// one fails, the ones started are stopped again.
func (r *Relay) Start(ctx context.Context) error {
	var started []interface{ Stop(context.Context) error }
	for _, s := range []interface {
		Start(context.Context) error
		Stop(context.Context) error
	}{r.Notifier, r.Tailer, r.Sequencer, r.Retention} {
		if err := s.Start(ctx); err != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			for _, st := range started {
				_ = st.Stop(sctx)
			}
			cancel()
			return err
		}
		started = append(started, s)
	}
	return nil
}

// Stop stops the sequencer first (its in-flight batch finishes), then the
// tailer, the notifier and retention, within ctx.
func (r *Relay) Stop(ctx context.Context) error {
	return errors.Join(r.Sequencer.Stop(ctx), r.Tailer.Stop(ctx), r.Notifier.Stop(ctx), r.Retention.Stop(ctx))
}

// Readiness is the readiness check of this relay, reading the database
// through q, for a dispatcher at dispatched() in history epoch().
func (r *Relay) Readiness(q Querier, dispatched func() int64, epoch func() string, stallAfter time.Duration) *Readiness {
	return &Readiness{Querier: q, Sequencer: r.Sequencer, Tailer: r.Tailer, Dispatched: dispatched, Epoch: epoch, StallAfter: stallAfter}
}
