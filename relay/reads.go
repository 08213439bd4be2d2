package relay

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/grupogad/outboxd/stream"
)

// ReadsConfig configures Reads.
type ReadsConfig struct {
	// MaxLag is how long the standby may lack an event this replica knows
	// of before reads go to the primary (READ_MAX_LAG).
	MaxLag time.Duration
	// Head, if set, is a position this replica knows the primary has
	// reached (the hub's dispatched head), sampled at every check; the
	// tailer announces what NOTIFY and the local hand-off tell it.
	Head          func() int64
	Logger        *slog.Logger
	MeterProvider metric.MeterProvider
}

// Reads sends event reads — the tailer's pages and clients' replay pages —
// to a streaming standby (READ_DATABASE_URL) while it keeps up, and to the
// primary otherwise. Everything else (sequencing, retention, history and
// epoch checks, resume decisions, heads, readiness) stays on the primary.
//
// Because seqs are gap-free, a standby that lags returns a prefix of what
// the primary would: less, never a hole. A page that comes back short is
// lag, never another history. The standby's lag is the time since the
// primary first held an event the standby still lacks (the announced heads
// are kept with the time they were learnt): past MaxLag, or when the
// standby does not answer, reads go to the primary until it catches up.
type Reads struct {
	standby *pgxpool.Pool // replay pages and the checks
	tailer  *pgxpool.Pool // the tailer's pages: never behind clients' reads
	cfg     ReadsConfig

	mu      sync.Mutex
	pending []headSample // announced heads the standby had not shown yet, oldest first

	announced atomic.Int64 // the highest head this replica knows of
	lagNanos  atomic.Int64
	lagEvents atomic.Int64
	up        atomic.Bool // answered its last check
	use       atomic.Bool // reads go there now
	pages     [2]atomic.Int64
}

type headSample struct {
	head int64
	at   time.Time
}

const (
	fromPrimary = 0
	fromStandby = 1
	// sampleWindow coalesces announcements closer than this into one
	// sample (keeping the older time: lag is over-, never underestimated).
	sampleWindow = 5 * time.Millisecond
	maxSamples   = 512
)

// NewReads routes event reads to a standby while it keeps up: replay
// pages through standby, the tailer's through tailer (pools on the same
// READ_DATABASE_URL, so that the tailer never waits behind clients).
func NewReads(standby, tailer *pgxpool.Pool, cfg ReadsConfig) *Reads {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = 2 * time.Second
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	if tailer == nil {
		tailer = standby
	}
	r := &Reads{standby: standby, tailer: tailer, cfg: cfg}
	m := cfg.MeterProvider.Meter(scope)
	inUse, _ := m.Int64ObservableGauge("outboxd.relay.standby.in_use",
		metric.WithDescription("1 while event reads go to the standby (READ_DATABASE_URL), 0 while they go to the primary."))
	lag, _ := m.Float64ObservableGauge("outboxd.relay.standby.lag", metric.WithUnit("s"),
		metric.WithDescription("How long the standby has lacked an event this replica knows of (0: it has them all)."))
	lagSeqs, _ := m.Int64ObservableGauge("outboxd.relay.standby.lag_events", metric.WithUnit("{event}"),
		metric.WithDescription("Seqs the standby is behind the head this replica knows of."))
	pages, _ := m.Int64ObservableCounter("outboxd.relay.reads", metric.WithUnit("{page}"),
		metric.WithDescription("Event pages read (the tailer's and replays'), by source: standby or primary."))
	_, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := r.Status()
		o.ObserveInt64(inUse, map[bool]int64{true: 1}[st.Source == "standby"])
		o.ObserveFloat64(lag, st.LagSeconds)
		o.ObserveInt64(lagSeqs, st.LagEvents)
		o.ObserveInt64(pages, st.StandbyPages, metric.WithAttributes(attribute.String("source", "standby")))
		o.ObserveInt64(pages, st.PrimaryPages, metric.WithAttributes(attribute.String("source", "primary")))
		return nil
	}, inUse, lag, lagSeqs, pages)
	return r
}

// announce records a head the primary has reached.
func (r *Reads) announce(head int64) {
	if r == nil || head <= r.announced.Load() {
		return
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if head <= r.announced.Load() {
		return
	}
	r.announced.Store(head)
	if n := len(r.pending); n > 0 && (now.Sub(r.pending[n-1].at) < sampleWindow || n >= maxSamples) {
		r.pending[n-1].head = head
		return
	}
	r.pending = append(r.pending, headSample{head, now})
}

// pick returns the standby's pool — the tailer's, or the replays' — when
// reads go there now.
func (r *Reads) pick(forTailer bool) (*pgxpool.Pool, bool) {
	switch {
	case r == nil || !r.use.Load():
		return nil, false
	case forTailer:
		return r.tailer, true
	default:
		return r.standby, true
	}
}

// counted records where a page was read.
func (r *Reads) counted(standby bool) {
	if r == nil {
		return
	}
	if standby {
		r.pages[fromStandby].Add(1)
	} else {
		r.pages[fromPrimary].Add(1)
	}
}

// failed takes the standby out of use after a read there failed; a later
// check brings it back.
func (r *Reads) failed(err error) {
	if r == nil {
		return
	}
	r.up.Store(false)
	if r.use.Swap(false) {
		r.cfg.Logger.Warn("standby read failed: reading from the primary", "err", err)
	}
}

// Run checks the standby's head every interval (a quarter of MaxLag, at
// most 250 ms) until ctx ends.
func (r *Reads) Run(ctx context.Context) {
	every := min(r.cfg.MaxLag/4, 250*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		r.check(ctx, max(every, 100*time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check reads the standby's head and decides where reads go.
func (r *Reads) check(ctx context.Context, timeout time.Duration) {
	if r.cfg.Head != nil {
		r.announce(r.cfg.Head())
	}
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var head int64
	err := r.standby.QueryRow(qctx, `SELECT last_seq FROM outbox.relay_state`).Scan(&head)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		was := r.use.Swap(false)
		if r.up.Swap(false) || was {
			r.cfg.Logger.Warn("standby unreachable: reading from the primary", "err", err)
			// Its connections are likely gone (a restart): open new ones
			// when it is back rather than fail a read on each.
			r.standby.Reset()
			r.tailer.Reset()
		}
		return
	}
	now := time.Now()
	r.up.Store(true)
	r.mu.Lock()
	i := 0
	for i < len(r.pending) && r.pending[i].head <= head {
		i++
	}
	r.pending = append(r.pending[:0], r.pending[i:]...)
	var lag time.Duration
	if len(r.pending) > 0 {
		lag = now.Sub(r.pending[0].at)
	}
	r.mu.Unlock()
	r.lagNanos.Store(int64(lag))
	r.lagEvents.Store(max(r.announced.Load()-head, 0))
	keepsUp := lag <= r.cfg.MaxLag
	switch was := r.use.Swap(keepsUp); {
	case keepsUp && !was:
		r.cfg.Logger.Info("reading events from the standby", "standby_head", head, "head", r.announced.Load())
	case !keepsUp && was:
		r.cfg.Logger.Warn("standby behind by more than READ_MAX_LAG: reading from the primary",
			"standby_head", head, "head", r.announced.Load(), "lag", lag.Round(time.Millisecond), "max_lag", r.cfg.MaxLag)
	}
}

// Status reports where event reads go and the standby's lag.
func (r *Reads) Status() stream.ReadsStatus {
	if r == nil {
		return stream.ReadsStatus{Source: "primary"}
	}
	st := stream.ReadsStatus{Source: "primary", StandbyUp: r.up.Load(),
		StandbyPages: r.pages[fromStandby].Load(), PrimaryPages: r.pages[fromPrimary].Load()}
	if r.use.Load() {
		st.Source = "standby"
	}
	if st.StandbyUp {
		st.LagEvents = r.lagEvents.Load()
		st.LagSeconds = time.Duration(r.lagNanos.Load()).Seconds()
	}
	return st
}
