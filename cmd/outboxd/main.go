// Command outboxd is the transactional-outbox sidecar: it relays rows
// committed to outbox.events, in commit order, to WebSocket clients.
//
//	outboxd                      run the sidecar (configuration from the environment)
//	outboxd migrate [up|down|status]
package main

import (
	"context"
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

	"github.com/grupogad/outboxd/observability"
	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/server"
	outboxsql "github.com/grupogad/outboxd/sql"
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
  outboxd health [--url]           exit 0 when a running outboxd is ready (container health checks)
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
	case "token", "emit", "tail", "health":
		var err error
		switch cmd {
		case "health":
			err = cmdHealth(ctx, cfg, args[1:], stdout, stderr)
		case "token":
			err = cmdToken(cfg, args[1:], stdout, stderr)
		case "emit":
			err = cmdEmit(ctx, cfg, args[1:], os.Stdin, stdout, stderr)
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

const migrateUsage = `Usage: outboxd migrate [up|down|status]

Apply the embedded migrations (up, the default), roll back the newest one
(down), or list them (status), on LISTEN_DATABASE_URL when set (a direct
session: goose takes a session lock), else DATABASE_URL.
`

func migrate(ctx context.Context, cfg Config, args []string, stdout io.Writer, logger *slog.Logger) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, migrateUsage)
		return nil
	}
	if len(args) > 1 {
		return fmt.Errorf("unexpected argument %q after %q (see outboxd migrate --help)", args[1], args[0])
	}
	if len(args) == 1 && args[0] != "up" && args[0] != "down" && args[0] != "status" {
		return fmt.Errorf("unknown subcommand %q: want up, down or status", args[0])
	}
	pool, err := server.NewSessionPool(ctx, cfg)
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

// Config is the sidecar's configuration (server.Config).
type Config = server.Config

// LoadConfig reads and validates the environment (server.LoadConfig).
func LoadConfig(environ map[string]string) (Config, error) { return server.LoadConfig(environ) }

// serve runs the sidecar until ctx ends: it says what is unusual about the
// configuration, binds its addresses (one that cannot be bound is a
// start-up failure, before any relay work), sets up telemetry, and runs
// the server (server.New, Start, Serve; Stop on a signal).
func serve(ctx context.Context, cfg Config, logger *slog.Logger) error {
	if dev := cfg.DevFeatures(); len(dev) > 0 {
		logger.Warn("development features on; never in production", "environment", cfg.Environment, "features", strings.Join(dev, "; "))
	}
	if cfg.TestTokens && !cfg.TestTokensEnabled() {
		logger.Warn("TEST_TOKENS ignored: never in production, and only with SECRET_KEY")
	}
	for _, w := range cfg.StartWarnings() {
		logger.Warn(w)
	}
	if cfg.SecretKey != "" && cfg.Production() && (cfg.JWTIssuer == "" || cfg.JWTAudience == "") {
		logger.Warn("JWT_ISSUER or JWT_AUDIENCE unset: any token signed with SECRET_KEY passes, whatever service it was minted for")
	}
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

	srv, err := server.New(ctx, cfg, server.Options{Logger: logger, TracerProvider: tel.TracerProvider, Metrics: tel.MetricsHandler})
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil // signalled while waiting for the database: a clean stop
	}
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		_ = stopWithin(srv, shutdownTimeout)
		return err
	}
	served := srv.Serve(ln, adminLn)
	if cfg.PprofAddr != "" {
		go servePprof(cfg.PprofAddr, logger)
	}
	logger.Info("outboxd started", "addr", ln.Addr().String(), "admin_addr", cfg.AdminAddr, "version", version,
		"environment", cfg.Environment, "head_seq", srv.Hub().Head(), "epoch", srv.Hub().Epoch())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	logger.Info("shutting down")
	if err := stopWithin(srv, shutdownTimeout); err != nil {
		logger.Warn("shutdown incomplete", "err", err)
	}
	logger.Info("stopped")
	return serveErr
}

// shutdownTimeout bounds the drain at SIGTERM (the chart's grace period
// and preStop are sized on it).
const shutdownTimeout = 4 * time.Second

// stopWithin stops srv — the drain: the in-flight batch, clients closed
// with 1001, HTTP — with d counted from this call, not from start-up (a
// deadline made at start left a replica up for longer with none).
func stopWithin(srv interface{ Stop(context.Context) error }, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return srv.Stop(ctx)
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
