// Command outboxd is the transactional-outbox sidecar: it relays rows
// committed to outbox.events, in commit order, to WebSocket clients.
//
//	outboxd                      run the sidecar (configuration from the environment)
//	outboxd migrate [up|down|status]
package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/grupogad/outboxd/examples/browser"
	"github.com/grupogad/outboxd/internal/backoff"
	"github.com/grupogad/outboxd/internal/connlimit"
	"github.com/grupogad/outboxd/internal/pgconfig"
	"github.com/grupogad/outboxd/observability"
	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/relay"
	outboxsql "github.com/grupogad/outboxd/sql"
	"github.com/grupogad/outboxd/ws"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], environ(), os.Stdout, os.Stderr))
}

func environ() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

const usage = `outboxd — transactional outbox to WebSocket relay

Usage:
  outboxd                          run the sidecar
  outboxd migrate [up|down|status] manage the outbox schema
  outboxd token [--sub --roles --ttl]            mint a development token
  outboxd emit --topic T [--data] --users/--roles | --broadcast   insert an event
  outboxd tail [--url --token --since --count]   print events from a running outboxd
  outboxd version                  print the version

Each subcommand takes --help.

Configuration comes from the environment; see README.md.
`

func run(args []string, env map[string]string, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return 0
	}
	cfg, err := LoadConfig(env)
	if err != nil {
		fmt.Fprintln(stderr, "outboxd:", err)
		return 2
	}
	level, _ := observability.ParseLevel(cfg.LogLevel)
	logger := observability.NewLogger(stderr, level, cfg.LogFormat)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case "", "serve":
		if err := serve(ctx, cfg, logger); err != nil {
			logger.Error("outboxd failed", "err", err)
			return 1
		}
		return 0
	case "migrate":
		if err := migrate(ctx, cfg, args[1:], stdout, logger); err != nil {
			fmt.Fprintln(stderr, "outboxd migrate:", err)
			return 1
		}
		return 0
	case "token", "emit", "tail":
		var err error
		switch cmd {
		case "token":
			err = cmdToken(cfg, args[1:], stdout, stderr)
		case "emit":
			err = cmdEmit(ctx, cfg, args[1:], stdout, stderr)
		case "tail":
			err = cmdTail(ctx, cfg, args[1:], stdout, stderr)
		}
		switch {
		case errors.Is(err, flag.ErrHelp):
			return 0
		case err != nil:
			fmt.Fprintf(stderr, "outboxd %s: %v\n", cmd, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "outboxd: unknown command %q\n\n%s", cmd, usage)
	return 2
}

// newPool connects with the session settings of pgconfig.Apply; maxConns
// 0 keeps pgxpool's default.
// newPool opens a pool on DATABASE_URL: with LISTEN_DATABASE_URL set it
// may be a transaction pooler, and gets pooler-safe settings.
func newPool(ctx context.Context, cfg Config, name string, maxConns int) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	if cfg.Pooled() {
		pgconfig.ApplyPooled(pc, cfg.DatabaseURL)
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

func migrate(ctx context.Context, cfg Config, args []string, stdout io.Writer, logger *slog.Logger) error {
	pool, err := newSessionPool(ctx, cfg, "migrate", 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	m, err := outboxsql.NewMigrator(pool, logger)
	if err != nil {
		return err
	}
	defer m.Close()
	sub := "up"
	if len(args) > 0 {
		sub = args[0]
	}
	switch sub {
	case "up":
		vs, err := m.Up(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "applied %d migration(s) %v\n", len(vs), vs)
	case "down":
		v, err := m.Down(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rolled back version %d\n", v)
	case "status":
		st, err := m.Status(ctx)
		if err != nil {
			return err
		}
		for _, s := range st {
			state := "pending"
			if s.Applied {
				state = "applied"
			}
			fmt.Fprintf(stdout, "%05d  %-8s %s\n", s.Version, state, s.Path)
		}
	default:
		return fmt.Errorf("unknown subcommand %q: want up, down or status", sub)
	}
	return nil
}

// service is what serve starts and stops.
type service interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

func serve(ctx context.Context, cfg Config, logger *slog.Logger) error {
	secret, _ := cfg.SigningKey()
	if dev := cfg.DevFeatures(); len(dev) > 0 {
		logger.Warn("development features on; never in production", "environment", cfg.Environment, "features", strings.Join(dev, "; "))
	}
	if cfg.TestTokens && !cfg.TestTokensEnabled() {
		logger.Warn("TEST_TOKENS ignored: never in production, and only with SECRET_KEY")
	}
	proxies, err := ws.ParseTrustedProxies(cfg.TrustedProxies)
	if err != nil { // validated with the configuration
		return fmt.Errorf("TRUSTED_PROXIES: %w", err)
	}

	for _, w := range cfg.StartWarnings() {
		logger.Warn(w)
	}
	if cfg.SecretKey != "" && cfg.Production() && (cfg.JWTIssuer == "" || cfg.JWTAudience == "") {
		logger.Warn("JWT_ISSUER or JWT_AUDIENCE unset: any token signed with SECRET_KEY passes, whatever service it was minted for")
	}

	// Bind first: an address that cannot be bound is a start-up failure
	// (exit status 1), before any relay work starts.
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("cannot listen on LISTEN_ADDR %s: %w", cfg.ListenAddr, err)
	}
	defer ln.Close()
	var adminLn net.Listener
	if cfg.AdminAddr != "" {
		if adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			return fmt.Errorf("cannot listen on ADMIN_ADDR %s: %w", cfg.AdminAddr, err)
		}
		defer adminLn.Close()
	}

	tel, err := observability.Setup(ctx, observability.Options{Version: version})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			logger.Warn("telemetry flush failed", "err", err)
		}
	}()
	outbox.SetTraceparentFunc(observability.Traceparent)

	// Two pools: the relay's few connections never wait behind clients'
	// replay reads, whose pool size bounds how many run at once.
	pool, err := newPool(ctx, cfg, "relay", cfg.RelayDBConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	replayPool, err := newPool(ctx, cfg, "replay", cfg.ReplayDBConns)
	if err != nil {
		return err
	}
	defer replayPool.Close()
	if err := waitForDatabase(ctx, pool, cfg.DatabaseWait, logger); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil // signalled while waiting: a clean stop
	}
	// LISTEN, migrations and RELAY_WAKEUP=idle's lock need sessions of
	// their own: through a transaction pooler, LISTEN_DATABASE_URL's.
	sessions := pool
	if cfg.Pooled() {
		if sessions, err = newSessionPool(ctx, cfg, "listen", 3); err != nil {
			return err
		}
		defer sessions.Close()
	}
	if cfg.AutoMigrate {
		if err := outboxsql.Up(ctx, sessions, logger); err != nil {
			return err
		}
	}

	authCtx, cancelAuth := context.WithCancel(context.Background())
	defer cancelAuth()
	auth, err := ws.NewAuthenticator(authCtx, ws.AuthConfig{
		SecretKey: secret, JWKSURL: cfg.JWKSURL, Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience,
		RequireExp: cfg.JWTRequireExp, MaxTTL: cfg.JWTMaxTTL,
	})
	if err != nil {
		return err
	}
	readiness := &relay.Readiness{Querier: pool, StallAfter: cfg.RelayStallTimeout}
	hub := ws.New(auth, relay.NewStore(replayPool), ws.Config{
		Production: cfg.Production(), TestTokens: cfg.TestTokensEnabled(), TrustedProxies: proxies,
		HideRoleNames: cfg.StatsHideRoles, MetricsTopicsMax: cfg.MetricsTopicsMax,
		AllowedOrigins:    cfg.AllowedOrigins,
		HeartbeatInterval: cfg.HeartbeatInterval, SendBuffer: cfg.WSSendBuffer, SendBufferBytes: cfg.WSSendBufferBytes,
		CatchUpPageBytes: cfg.CatchUpPageBytes, CatchUpMemory: cfg.CatchUpMemory,
		MaxMessageSize: cfg.WSMaxMessageSize, ReplayMax: cfg.ReplayMax, Logger: logger,
		TracerProvider: tel.TracerProvider,
		Limits: ws.Limits{
			MaxHandshakes:  cfg.MaxHandshakes,
			MaxConnections: cfg.MaxConnections, MaxConnectionsPerUser: cfg.MaxConnectionsPerUser,
			ConnectRate: cfg.ConnectRate, ConnectBurst: cfg.ConnectBurst,
			MessageRate: cfg.ClientMessageRate, MessageBurst: cfg.ClientMessageBurst,
		},
		Ready: readiness.Check, Degraded: readiness.Degraded,
	})
	if err := hub.Start(ctx); err != nil {
		return err
	}
	head := hub.Head()
	if changed, err := relay.SetWakeup(ctx, pool, cfg.RelayWakeup); err != nil {
		return err
	} else if changed {
		logger.Info("sequencer wake-up mode set", "mode", cfg.RelayWakeup)
	}
	var seq *relay.Sequencer
	tail := relay.NewTailer(pool, hub, relay.TailerConfig{StartAfter: &head, Epoch: hub.Epoch(), BatchBytes: cfg.RelayBatchBytes, ListenPool: sessions,
		Logger: logger, OnPending: func() { seq.Wake() }})
	seqCfg := relay.SequencerConfig{
		BatchSize: cfg.RelayBatchSize, PollInterval: cfg.RelayPollInterval, MinPollInterval: cfg.RelayMinPollInterval,
		Logger: logger, HandoffBytes: cfg.RelayBatchBytes, WakeWhenIdle: cfg.RelayWakeup == relay.WakeupIdle,
		Fanout: hub, Pooled: cfg.Pooled(), SessionPool: sessions,
	}
	if cfg.RelayHandoff {
		seqCfg.Handoff = tail
	}
	seq = relay.NewSequencer(pool, seqCfg)
	readiness.Sequencer, readiness.Tailer, readiness.Dispatched, readiness.Epoch = seq, tail, hub.Head, hub.Epoch
	ret := relay.NewRetention(pool, relay.RetentionConfig{Window: cfg.OutboxRetention, RevocationTTL: cfg.JWTMaxTTL, Logger: logger})
	services := []service{tail, seq, ret}
	for _, s := range services {
		if err := s.Start(ctx); err != nil {
			return err
		}
	}

	mux := http.NewServeMux()
	hub.Routes(mux)
	if cfg.DemoPageEnabled() {
		browser.Routes(mux)
	}
	// Operational endpoints: on the admin address when there is one, and
	// behind ADMIN_TOKEN when it is set.
	ops := mux
	if adminLn != nil {
		ops = http.NewServeMux()
		ops.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { mux.ServeHTTP(w, r) })
		ops.Handle("GET /readyz", hub.ReadyHandler(true)) // with the checks: the admin address's
	}
	ops.Handle("GET /metrics", requireToken(cfg.AdminToken, tel.MetricsHandler))
	ops.Handle("GET /ws/stats", requireToken(cfg.AdminToken, hub.StatsHandler()))
	public := connlimit.New(ln, connlimit.Config{Max: cfg.OpenConnsLimit(), PerAddress: cfg.MaxConnsPerAddress, Exempt: proxies,
		OnRefuse: func(reason string) { logger.Debug("connection refused", "limit", reason) }})
	srv := newHTTPServer(cfg, instrument(mux))
	srvErr := make(chan error, 2)
	go func() { srvErr <- srv.Serve(public) }()
	var adminSrv *http.Server
	if adminLn != nil {
		adminSrv = newHTTPServer(cfg, instrument(ops))
		go func() { srvErr <- adminSrv.Serve(adminLn) }()
	}
	if cfg.PprofAddr != "" {
		go servePprof(cfg.PprofAddr, logger)
	}
	logger.Info("outboxd started", "addr", ln.Addr().String(), "admin_addr", cfg.AdminAddr, "version", version,
		"environment", cfg.Environment, "head_seq", head, "epoch", hub.Epoch())

	var serveErr error
	select {
	case <-ctx.Done():
	case err := <-srvErr:
		if !errors.Is(err, http.ErrServerClosed) {
			serveErr = fmt.Errorf("http server failed: %w", err)
		}
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	// Order: finish the in-flight batch, stop dispatching, close clients
	// with 1001, stop HTTP, stop retention.
	var errs []error
	errs = append(errs, seq.Stop(sctx), tail.Stop(sctx), hub.Stop(sctx), srv.Shutdown(sctx), ret.Stop(sctx))
	if adminSrv != nil {
		errs = append(errs, adminSrv.Shutdown(sctx))
	}
	if err := errors.Join(errs...); err != nil {
		logger.Warn("shutdown incomplete", "err", err)
	}
	logger.Info("stopped")
	return serveErr
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
// /ws/connect, which records its own short handshake span.
func instrument(mux *http.ServeMux) http.Handler {
	traced := otelhttp.NewHandler(mux, "http", otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
		return r.Method + " " + r.URL.Path
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws/connect" {
			mux.ServeHTTP(w, r)
			return
		}
		traced.ServeHTTP(w, r)
	})
}

func servePprof(addr string, logger *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	logger.Info("pprof listening", "addr", addr)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		logger.Warn("pprof server stopped", "err", err)
	}
}
