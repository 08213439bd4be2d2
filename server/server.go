package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/grupogad/outboxd/examples/browser"
	"github.com/grupogad/outboxd/internal/backoff"
	"github.com/grupogad/outboxd/internal/connlimit"
	"github.com/grupogad/outboxd/internal/pgconfig"
	"github.com/grupogad/outboxd/presence"
	"github.com/grupogad/outboxd/relay"
	outboxsql "github.com/grupogad/outboxd/sql"
	"github.com/grupogad/outboxd/stream"
	"github.com/grupogad/outboxd/ws"
)

// Options are what the process gives the server besides its configuration.
type Options struct {
	Logger *slog.Logger
	// TracerProvider traces handshakes and events (nil: the OTel global).
	TracerProvider trace.TracerProvider
	// Metrics, if set, is served at GET /metrics (behind ADMIN_TOKEN).
	Metrics http.Handler
}

// Server is outboxd assembled: its pools, the hub, the relay, readiness
// and the HTTP handlers, wired once. New builds and migrates; Start starts
// the hub and the relay; Serve serves HTTP on listeners the caller bound;
// Stop stops everything in order (river's Client: one constructor, tests
// and tools call it too).
type Server struct {
	cfg    Config
	logger *slog.Logger

	pool, replayPool, sessions *pgxpool.Pool
	// READ_DATABASE_URL: a standby's pools for replay and tailer pages.
	standbyReplay, standbyTailer *pgxpool.Pool
	reads                        *relay.Reads
	readsDone                    chan struct{}
	readsCancel                  context.CancelFunc

	hub       *ws.Hub
	relay     *relay.Relay
	presence  *presence.Recorder // PRESENCE
	readiness *relay.Readiness

	public, admin *http.Server
	connLimit     connlimit.Config
	served        chan error
	// authCancel ends the authenticator's JWKS refresh (Stop).
	authCancel context.CancelFunc
}

// New opens the pools (waiting for the database up to DATABASE_WAIT),
// applies the migrations when AUTO_MIGRATE, and builds the hub. Close the
// server with Stop.
func New(ctx context.Context, cfg Config, o Options) (_ *Server, err error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, logger: o.Logger, served: make(chan error, 2)}
	defer func() {
		if err != nil {
			s.closePools()
			if s.authCancel != nil {
				s.authCancel()
			}
		}
	}()
	// Two pools: the relay's few connections never wait behind clients'
	// replay reads, whose pool size bounds how many run at once.
	if s.pool, err = newPool(ctx, cfg, "relay", cfg.RelayDBConns); err != nil {
		return nil, err
	}
	if s.replayPool, err = newPool(ctx, cfg, "replay", cfg.ReplayDBConns); err != nil {
		return nil, err
	}
	if err := waitForDatabase(ctx, s.pool, cfg.DatabaseWait, s.logger); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// LISTEN, migrations and RELAY_WAKEUP=idle's lock need sessions of
	// their own: through a transaction pooler, LISTEN_DATABASE_URL's.
	s.sessions = s.pool
	if cfg.Pooled() {
		if s.sessions, err = newSessionPool(ctx, cfg, "listen", 3); err != nil {
			return nil, err
		}
	}
	if cfg.AutoMigrate {
		if err := outboxsql.Up(ctx, s.sessions, s.logger); err != nil {
			return nil, err
		}
	}
	if cfg.ReadDatabaseURL != "" {
		// Pools connect lazily: a standby that is down at start is used
		// once it answers.
		if s.standbyReplay, err = openPool(ctx, cfg, "READ_DATABASE_URL", cfg.ReadDatabaseURL, "standby replay", cfg.ReplayDBConns); err != nil {
			return nil, err
		}
		if s.standbyTailer, err = openPool(ctx, cfg, "READ_DATABASE_URL", cfg.ReadDatabaseURL, "standby tailer", 2); err != nil {
			return nil, err
		}
		s.reads = relay.NewReads(s.standbyReplay, s.standbyTailer, relay.ReadsConfig{
			MaxLag: cfg.ReadMaxLag, Head: func() int64 { return s.hub.Head() }, Logger: s.logger,
		})
	}
	secret, _ := cfg.SigningKey()
	proxies, err := ws.ParseTrustedProxies(cfg.TrustedProxies)
	if err != nil { // validated with the configuration
		return nil, fmt.Errorf("TRUSTED_PROXIES: %w", err)
	}
	authCtx, cancel := context.WithCancel(context.Background())
	s.authCancel = cancel
	auth, err := ws.NewAuthenticator(authCtx, ws.AuthConfig{
		SecretKey: secret, JWKSURL: cfg.JWKSURL, Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience,
		RequireExp: cfg.JWTRequireExp, MaxTTL: cfg.JWTMaxTTL,
	})
	if err != nil {
		return nil, err
	}
	var pres ws.Presence
	if cfg.Presence {
		s.presence = presence.New(s.pool, presence.Config{
			Roles: cfg.PresenceRoles, TTL: cfg.PresenceTTL, Interval: cfg.PresenceInterval, Logger: s.logger,
		})
		pres = s.presence
	}
	var readsStatus func() stream.ReadsStatus
	if s.reads != nil {
		readsStatus = s.reads.Status
	}
	s.hub = ws.New(auth, relay.NewStore(s.replayPool).WithReads(s.reads), ws.Config{
		Production: cfg.Production(), TestTokens: cfg.TestTokensEnabled(), TrustedProxies: proxies,
		HideRoleNames: cfg.StatsHideRoles, MetricsTopicsMax: cfg.MetricsTopicsMax,
		AllowedOrigins:    cfg.AllowedOrigins,
		HeartbeatInterval: cfg.HeartbeatInterval, SendBuffer: cfg.WSSendBuffer, SendBufferBytes: cfg.WSSendBufferBytes,
		CatchUpPageBytes: cfg.CatchUpPageBytes, CatchUpMemory: cfg.CatchUpMemory,
		MaxMessageSize: cfg.WSMaxMessageSize, ReplayMax: cfg.ReplayMax, Logger: s.logger,
		TracerProvider: o.TracerProvider,
		Limits: ws.Limits{
			MaxHandshakes:  cfg.MaxHandshakes,
			MaxConnections: cfg.MaxConnections, MaxConnectionsPerUser: cfg.MaxConnectionsPerUser,
			ConnectRate: cfg.ConnectRate, ConnectBurst: cfg.ConnectBurst,
			MessageRate: cfg.ClientMessageRate, MessageBurst: cfg.ClientMessageBurst,
		},
		Ready: s.ready, Degraded: s.degraded, Presence: pres, Reads: readsStatus,
	})
	s.buildHTTP(o.Metrics, proxies)
	return s, nil
}

// ready and degraded are readiness's, once the relay exists (Start).
func (s *Server) ready(ctx context.Context) error {
	if s.readiness == nil {
		return errors.New("relay not started")
	}
	return s.readiness.Check(ctx)
}

func (s *Server) degraded() string {
	if s.readiness == nil {
		return ""
	}
	return s.readiness.Degraded()
}

// Hub is the server's WebSocket hub.
func (s *Server) Hub() *ws.Hub { return s.hub }

// Relay is the server's relay (nil before Start).
func (s *Server) Relay() *relay.Relay { return s.relay }

// Start starts the hub (it reads the head its clients start from) and the
// relay after it.
func (s *Server) Start(ctx context.Context) error {
	if err := s.hub.Start(ctx); err != nil {
		return err
	}
	if changed, err := relay.SetWakeup(ctx, s.pool, s.cfg.RelayWakeup); err != nil {
		return err
	} else if changed {
		s.logger.Info("sequencer wake-up mode set", "mode", s.cfg.RelayWakeup)
	}
	rcfg := relay.RelayConfig{
		StartAfter: s.hub.Head(), Epoch: s.hub.Epoch(), Handoff: s.cfg.RelayHandoff,
		Tailer: relay.TailerConfig{BatchBytes: s.cfg.RelayBatchBytes, Logger: s.logger, Reads: s.reads},
		Sequencer: relay.SequencerConfig{
			BatchSize: s.cfg.RelayBatchSize, PollInterval: s.cfg.RelayPollInterval, MinPollInterval: s.cfg.RelayMinPollInterval,
			Logger: s.logger, HandoffBytes: s.cfg.RelayBatchBytes, WakeWhenIdle: s.cfg.RelayWakeup == relay.WakeupIdle,
		},
		Retention: relay.RetentionConfig{Window: s.cfg.OutboxRetention, RevocationTTL: s.cfg.JWTMaxTTL, Logger: s.logger},
	}
	if s.cfg.Pooled() {
		rcfg.SessionPool = s.sessions
	}
	if s.reads != nil {
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		s.readsCancel, s.readsDone = cancel, make(chan struct{})
		go func() { defer close(s.readsDone); s.reads.Run(rctx) }()
		s.logger.Info("event reads from a standby", "max_lag", s.cfg.ReadMaxLag)
	}
	s.relay = relay.NewRelay(s.pool, s.hub, rcfg)
	s.readiness = s.relay.Readiness(s.pool, s.hub.Head, s.hub.Epoch, s.cfg.RelayStallTimeout)
	if err := s.relay.Start(ctx); err != nil {
		return err
	}
	if s.presence != nil {
		s.logger.Info("presence recorded", "replica", s.presence.ReplicaID(), "roles", s.cfg.PresenceRoles,
			"ttl", s.cfg.PresenceTTL, "interval", s.cfg.PresenceInterval)
		return s.presence.Start(ctx)
	}
	return nil
}

// Presence is the server's presence recorder (nil without PRESENCE).
func (s *Server) Presence() *presence.Recorder { return s.presence }

// buildHTTP builds the public server and, with ADMIN_ADDR, the admin one.
func (s *Server) buildHTTP(metrics http.Handler, proxies []netip.Prefix) {
	mux := http.NewServeMux()
	s.hub.Routes(mux)
	if s.cfg.DemoPageEnabled() {
		browser.Routes(mux)
	}
	// Operational endpoints: on the admin address when there is one, and
	// behind ADMIN_TOKEN when it is set.
	ops := mux
	if s.cfg.AdminAddr != "" {
		ops = http.NewServeMux()
		ops.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { mux.ServeHTTP(w, r) })
		ops.Handle("GET /readyz", s.hub.ReadyHandler(true)) // with the checks: the admin address's
	}
	if metrics != nil {
		ops.Handle("GET /metrics", requireToken(s.cfg.AdminToken, metrics))
	}
	ops.Handle("GET /ws/stats", requireToken(s.cfg.AdminToken, s.hub.StatsHandler()))
	s.public = newHTTPServer(s.cfg, instrument(mux))
	if s.cfg.AdminAddr != "" {
		s.admin = newHTTPServer(s.cfg, instrument(ops))
	}
	s.connLimit = connlimit.Config{Max: s.cfg.OpenConnsLimit(), PerAddress: s.cfg.MaxConnsPerAddress, Exempt: proxies,
		OnRefuse: func(reason string) { s.logger.Debug("connection refused", "limit", reason) }}
}

// Serve serves HTTP on public (LISTEN_ADDR, under the open-connection
// limits) and admin (ADMIN_ADDR; nil without one) until Stop. The channel
// receives an error if a server fails.
func (s *Server) Serve(public, admin net.Listener) <-chan error {
	go s.serve(s.public, connlimit.New(public, s.connLimit))
	if s.admin != nil && admin != nil {
		go s.serve(s.admin, admin)
	}
	return s.served
}

func (s *Server) serve(srv *http.Server, ln net.Listener) {
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		s.served <- fmt.Errorf("http server failed: %w", err)
	}
}

// Stop stops, within ctx: presence (nothing more is written), the relay (its in-flight batch finishes, then
// dispatching stops), the hub (clients are closed with 1001: reconnect
// with since), HTTP, and the pools.
func (s *Server) Stop(ctx context.Context) error {
	var errs []error
	if s.presence != nil {
		// First, and nothing more is written: the sessions Stop closes
		// stay recorded until swept (PRESENCE_TTL), so that a deploy
		// writes no offline events for clients that reconnect elsewhere.
		errs = append(errs, s.presence.Stop(ctx))
	}
	if s.relay != nil {
		errs = append(errs, s.relay.Stop(ctx))
	}
	errs = append(errs, s.hub.Stop(ctx), s.public.Shutdown(ctx))
	if s.admin != nil {
		errs = append(errs, s.admin.Shutdown(ctx))
	}
	if s.readsCancel != nil {
		s.readsCancel()
		<-s.readsDone
	}
	s.closePools()
	s.authCancel()
	return errors.Join(errs...)
}

func (s *Server) closePools() {
	if s.sessions != nil && s.sessions != s.pool {
		s.sessions.Close()
	}
	for _, p := range []*pgxpool.Pool{s.pool, s.replayPool, s.standbyReplay, s.standbyTailer} {
		if p != nil {
			p.Close()
		}
	}
}

// newPool opens a pool on DATABASE_URL: with LISTEN_DATABASE_URL set it
// may be a transaction pooler, and gets pooler-safe settings.
func newPool(ctx context.Context, cfg Config, name string, maxConns int) (*pgxpool.Pool, error) {
	return openPool(ctx, cfg, "DATABASE_URL", cfg.DatabaseURL, name, maxConns)
}

// openPool opens a pool on url (the variable envName's value) with the
// settings DATABASE_URL's pools get: pooler-safe with LISTEN_DATABASE_URL
// set. Pools connect lazily.
func openPool(ctx context.Context, cfg Config, envName, url, name string, maxConns int) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", envName, err)
	}
	if cfg.Pooled() {
		pgconfig.ApplyPooled(pc, url)
	} else {
		pgconfig.Apply(pc)
	}
	if name != "" {
		pc.ConnConfig.RuntimeParams["application_name"] = "outboxd " + name
	}
	if maxConns > 0 {
		pc.MaxConns = int32(maxConns)
	}
	return pgxpool.NewWithConfig(ctx, pc)
}

// NewPool is newPool for the CLI's subcommands (emit).
func NewPool(ctx context.Context, cfg Config) (*pgxpool.Pool, error) { return newPool(ctx, cfg, "", 0) }

// newSessionPool opens a pool of direct sessions: LISTEN_DATABASE_URL's
// when set, else the same as newPool.
func newSessionPool(ctx context.Context, cfg Config, name string, maxConns int) (*pgxpool.Pool, error) {
	if !cfg.Pooled() {
		return newPool(ctx, cfg, name, maxConns)
	}
	pc, err := pgxpool.ParseConfig(cfg.ListenDatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("LISTEN_DATABASE_URL: %w", err)
	}
	pgconfig.Apply(pc)
	pc.ConnConfig.RuntimeParams["application_name"] = "outboxd " + name
	pc.MaxConns = int32(maxConns)
	return pgxpool.NewWithConfig(ctx, pc)
}

// NewSessionPool is newSessionPool for the CLI's migrate subcommand.
func NewSessionPool(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
	return newSessionPool(ctx, cfg, "migrate", 2)
}

// newHTTPServer applies the HTTP limits: a request must arrive whole within
// HTTP_READ_TIMEOUT, an idle keep-alive connection is closed after
// HTTP_IDLE_TIMEOUT, headers are bounded. Upgraded WebSockets are hijacked
// and keep their own deadlines (heartbeat, write timeout).
func newHTTPServer(cfg Config, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(5*time.Second, cfg.HTTPReadTimeout),
		ReadTimeout:       cfg.HTTPReadTimeout,
		IdleTimeout:       cfg.HTTPIdleTimeout,
		MaxHeaderBytes:    cfg.HTTPMaxHeaderBytes,
	}
}

// requireToken guards h with "Authorization: Bearer token" (token "": open).
func requireToken(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="outboxd"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"unauthorized","detail":"ADMIN_TOKEN required"}` + "\n"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// waitForDatabase pings until the database answers: a sidecar may start
// before its database. After limit (0: never) it gives up with an error.
func waitForDatabase(ctx context.Context, pool *pgxpool.Pool, limit time.Duration, logger *slog.Logger) error {
	var bo backoff.Backoff
	start := time.Now()
	for {
		err := pool.Ping(ctx)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if limit > 0 && time.Since(start) >= limit {
			return fmt.Errorf("database unreachable for %s (DATABASE_WAIT): %w", limit, err)
		}
		logger.Warn("database unreachable; retrying", "err", err)
		if !bo.Wait(ctx) {
			return nil
		}
	}
}

// instrument traces HTTP requests with otelhttp, except the long-lived
// streams (/ws/connect, /ws/sse), which record a short handshake span of
// their own.
func instrument(mux *http.ServeMux) http.Handler {
	traced := otelhttp.NewHandler(mux, "http", otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
		return r.Method + " " + r.URL.Path
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws/connect" || r.URL.Path == "/ws/sse" {
			mux.ServeHTTP(w, r)
			return
		}
		traced.ServeHTTP(w, r)
	})
}
