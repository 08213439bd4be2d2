package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/ws"
)

// benchSecret signs the benchmark's tokens; outboxd is started with it.
const benchSecret = "outboxbench-secret-0123456789abcdef"

type benchEnv struct {
	o options
	// proxy holds outboxd's database traffic (-pg-delay), or is nil.
	proxy *delayProxy
}

func newBenchEnv(o options) (*benchEnv, error) {
	e := &benchEnv{o: o}
	if o.pgDelay > 0 {
		u, err := url.Parse(o.adminURL)
		if err != nil {
			return nil, fmt.Errorf("-admin-url: %w", err)
		}
		port := u.Port()
		if port == "" {
			port = "5432"
		}
		if e.proxy, err = startDelayProxy(net.JoinHostPort(u.Hostname(), port), o.pgDelay); err != nil {
			return nil, fmt.Errorf("-pg-delay: %w", err)
		}
	}
	return e, nil
}

func (e *benchEnv) close() {
	if e.proxy != nil {
		e.proxy.Close()
	}
}

func (e *benchEnv) n(x int) int { return max(1, int(float64(x)*e.o.scale)) }
func (e *benchEnv) d(x time.Duration) time.Duration {
	return max(time.Second, time.Duration(float64(x)*e.o.scale))
}

func (e *benchEnv) dbURL() string {
	u, _ := url.Parse(e.o.adminURL)
	u.Path = "/" + e.o.dbName
	return u.String()
}

// sidecarDBURL is outboxd's DATABASE_URL: through the delay proxy with
// -pg-delay.
func (e *benchEnv) sidecarDBURL() string {
	if e.proxy == nil {
		return e.dbURL()
	}
	u, _ := url.Parse(e.dbURL())
	u.Host = e.proxy.Addr()
	return u.String()
}

// freshDB drops and recreates the benchmark database and migrates it.
func (e *benchEnv) freshDB(ctx context.Context) (*pgxpool.Pool, error) {
	admin, err := pgx.Connect(ctx, e.o.adminURL)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", e.o.adminURL, err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{e.o.dbName}.Sanitize()+" WITH (FORCE)"); err != nil {
		return nil, err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{e.o.dbName}.Sanitize()); err != nil {
		return nil, err
	}
	// Start every run from a clean slate: flush what the previous scenario
	// left dirty (a million-row backlog, say), so its checkpoint does not
	// land in the middle of this one's measurement.
	if _, err := admin.Exec(ctx, "CHECKPOINT"); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	cmd := exec.CommandContext(ctx, e.o.outboxd, "migrate", "up")
	cmd.Env = []string{"DATABASE_URL=" + e.dbURL()}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("migrate: %w\n%s", err, out)
	}
	cfg, err := pgxpool.ParseConfig(e.dbURL())
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 32
	return pgxpool.NewWithConfig(ctx, cfg)
}

// sidecar is a running outboxd.
type sidecar struct {
	cmd   *exec.Cmd
	addr  string
	done  chan struct{}
	start time.Time
}

func (s *sidecar) pid() int      { return s.cmd.Process.Pid }
func (s *sidecar) wsURL() string { return "ws://" + s.addr + "/ws/connect" }

// server is what a load runs against: outboxd (sidecar) or a peer.
type server interface {
	pid() int
	// dial connects client i and waits until it is subscribed.
	dial(ctx context.Context, i int) (*client, error)
	// position is the last event number committed (outboxd: the head,
	// once sequenced).
	position(ctx context.Context, pool *pgxpool.Pool) (int64, error)
	// inserter writes one event in a producer's transaction (nil: outbox.Emit).
	inserter() insertFunc
}

// insertFunc writes one event carrying its insert time t in tx.
type insertFunc func(ctx context.Context, tx pgx.Tx, producer int, t int64, pad string) error

// dial connects client i live.
func (s *sidecar) dial(ctx context.Context, i int) (*client, error) { return s.dialSince(-1)(ctx, i) }

// dialSince connects clients that resume after since (-1: live).
func (s *sidecar) dialSince(since int64) func(ctx context.Context, i int) (*client, error) {
	return func(ctx context.Context, i int) (*client, error) {
		tok, err := ws.MintHS256(benchSecret, fmt.Sprintf("bench-%d", i), []string{"bench"}, 6*time.Hour)
		if err != nil {
			return nil, err
		}
		return dialClient(ctx, s.wsURL(), tok, since)
	}
}

func (s *sidecar) position(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	return head(ctx, pool)
}

// inserter is nil for outboxd: the producers use outbox.Emit.
func (s *sidecar) inserter() insertFunc { return nil }

// startSidecar starts outboxd on a free 127.0.0.1 port with limits opened
// for a load test, and waits until it is ready.
func (e *benchEnv) startSidecar(ctx context.Context) (*sidecar, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	return e.startSidecarAt(ctx, addr, false)
}

// startSidecarAt starts outboxd on addr; shipped keeps the shipped limits
// (a deployment as it comes) instead of opening them for a load test.
func (e *benchEnv) startSidecarAt(ctx context.Context, addr string, shipped bool) (*sidecar, error) {
	s := &sidecar{addr: addr, done: make(chan struct{}), start: time.Now()}
	s.cmd = exec.Command(e.o.outboxd)
	s.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "DATABASE_URL=" + e.sidecarDBURL(), "LISTEN_ADDR=" + addr, "SECRET_KEY=" + benchSecret,
		"LOG_LEVEL=warn", "AUTO_MIGRATE=false",
	}
	if !shipped {
		s.cmd.Env = append(s.cmd.Env, "MAX_CONNECTIONS=0", "MAX_CONNECTIONS_PER_USER=0", "CONNECT_RATE=0", "REPLAY_MAX=2000000")
	}
	if e.o.pprofAddr != "" {
		s.cmd.Env = append(s.cmd.Env, "PPROF_ADDR="+e.o.pprofAddr)
	}
	for _, kv := range strings.Split(e.o.extraEnv, ",") {
		if kv = strings.TrimSpace(kv); kv != "" {
			s.cmd.Env = append(s.cmd.Env, kv)
		}
	}
	s.cmd.Stderr = os.Stderr
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return nil, fmt.Errorf("outboxd exited at start")
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		default:
		}
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("outboxd not ready on %s", addr)
}

func (s *sidecar) stop() { interruptAndWait(s.cmd, s.done) }

// interruptAndWait stops a process started here: SIGINT, then SIGKILL if
// it has not exited (done closed) within 10 s.
func interruptAndWait(cmd *exec.Cmd, done <-chan struct{}) {
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// progress prints a one-line progress bar to stderr until stop is closed.
func progress(label string, total time.Duration, line func() string) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(finished)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprintf(os.Stderr, "\r%-100s\r", "")
				return
			case <-t.C:
				frac := min(1, float64(time.Since(start))/float64(total))
				bar := strings.Repeat("█", int(frac*20)) + strings.Repeat("░", 20-int(frac*20))
				fmt.Fprintf(os.Stderr, "\r%s %s %5.1fs %s", label, bar, time.Since(start).Seconds(), line())
			}
		}
	}()
	return func() { close(done); <-finished }
}

// setup gives a scenario a fresh database and a running outboxd; cleanup
// stops both.
func (e *benchEnv) setup(ctx context.Context) (pool *pgxpool.Pool, sc *sidecar, cleanup func(), err error) {
	pool, err = e.freshDB(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	sc, err = e.startSidecar(ctx)
	if err != nil {
		pool.Close()
		return nil, nil, nil, err
	}
	return pool, sc, func() { sc.stop(); pool.Close() }, nil
}
