package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/stream"
	"github.com/grupogad/outboxd/ws"
)

// exitOf runs the binary with env until it exits (at most 30 s) and
// returns its exit code and output.
func exitOf(t *testing.T, env ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary)
	cmd.Env = append([]string{"LOG_LEVEL=debug"}, env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("still running after 30 s:\n%s", out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

// Start-up failures end the process with a non-zero status and one clear
// line, never after claiming it started.
func TestBinaryExitStatusOnStartupFailure(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	broken := dbtest.NewEmpty(t)
	broken.Exec(t, `CREATE SCHEMA outbox; CREATE TABLE outbox.events (id int)`) // the first migration cannot run

	for _, tc := range []struct {
		name string
		env  []string
		code int
		says string
	}{
		{"busy port", []string{"DATABASE_URL=" + db.URL, "LISTEN_ADDR=" + busy.Addr().String()}, 1, "cannot listen on LISTEN_ADDR"},
		{"bad config", []string{"HEARTBEAT_INTERVAL=soon", "TRUSTED_PROXIES=proxy.local"}, 2, "TRUSTED_PROXIES"},
		{"unreachable database", []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/none?sslmode=disable",
			"DATABASE_WAIT=1s", "LISTEN_ADDR=127.0.0.1:0"}, 1, "database unreachable for 1s"},
		{"failed migration", []string{"DATABASE_URL=" + broken.URL, "LISTEN_ADDR=127.0.0.1:0"}, 1, "migrate up"},
	} {
		code, out := exitOf(t, tc.env...)
		if code != tc.code || !strings.Contains(out, tc.says) || strings.Contains(out, "outboxd started") {
			t.Errorf("%s: exit %d (want %d), output:\n%s", tc.name, code, tc.code, out)
		}
	}
}

// /ws/_test/token mints only outside production and only with the
// development key or TEST_TOKENS=true (DESIGN, "Development endpoints").
func TestTestTokenMatrix(t *testing.T) {
	t.Parallel()
	const secret = "0123456789abcdef0123"
	for _, environment := range []string{"development", "staging", "production"} {
		for _, key := range []string{"none", "secret", "jwks"} {
			for _, flag := range []string{"", "true", "false"} {
				env := map[string]string{"ENVIRONMENT": environment, "ALLOWED_ORIGINS": "https://app.example"}
				switch key {
				case "secret":
					env["SECRET_KEY"] = secret
				case "jwks":
					env["JWKS_URL"] = "https://id.example/jwks.json"
					env["JWT_ISSUER"], env["JWT_AUDIENCE"] = "https://id.example", "outboxd"
				}
				if flag != "" {
					env["TEST_TOKENS"] = flag
				}
				c, err := LoadConfig(env)
				name := fmt.Sprintf("%s/%s/TEST_TOKENS=%q", environment, key, flag)
				if environment == "production" && key == "none" {
					if err == nil {
						t.Errorf("%s: accepted without a key source", name)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				want := environment != "production" && (key == "none" || (key == "secret" && flag == "true"))
				if got := c.TestTokensEnabled(); got != want {
					t.Errorf("%s: mints %v, want %v", name, got, want)
				}
			}
		}
	}

	// And through the real binary: staging with a real key says 403.
	db := dbtest.New(t)
	post := func(p *proctest.Process) (int, map[string]string) {
		t.Helper()
		resp, err := http.Post("http://"+p.Addr+"/ws/_test/token", "application/json",
			strings.NewReader(`{"sub":"admin","roles":["ADMIN"]}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	staging := startOutboxd(t, db, "ENVIRONMENT=staging")
	if code, body := post(staging); code != http.StatusForbidden || body["status"] != "forbidden" {
		t.Fatalf("staging with SECRET_KEY: %d %v", code, body)
	}
	if !strings.Contains(staging.Stderr.String(), "development features on") {
		t.Fatalf("start-up log does not list the development features:\n%s", staging.Stderr)
	}
	optIn := startOutboxd(t, db, "ENVIRONMENT=staging", "TEST_TOKENS=true")
	if code, body := post(optIn); code != http.StatusOK || body["token"] == "" {
		t.Fatalf("staging with TEST_TOKENS=true: %d %v", code, body)
	}
	if !strings.Contains(optIn.Stderr.String(), "POST /ws/_test/token") {
		t.Fatalf("start-up log does not name the token endpoint:\n%s", optIn.Stderr)
	}
}

// A deploy through a reverse proxy: every client comes from one address,
// the sidecar restarts, and with the shipped defaults every client is back
// and resumed, with nothing lost or repeated (the 5,000-client figure is in
// BENCHMARKS.md).
func TestReconnectStormThroughOneAddress(t *testing.T) {
	t.Parallel()
	const clients = 300
	db := dbtest.New(t)
	p := startOutboxd(t, db)
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": 1}')`)
	followers := make([]*proctest.Follower, clients)
	for i := range followers {
		tok, err := ws.MintHS256(testSecret, fmt.Sprintf("op%d", i), []string{"LEVEL_1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		followers[i] = proctest.Follow(t, tok, []string{p.Addr}, 0)
	}
	// Live followers start from the head: wait until every one is in, then
	// one more event proves each is following.
	waitConnected(t, p, clients, time.Minute)
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": 2}')`)
	for _, f := range followers {
		f.WaitFor(2, 30*time.Second)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	db.Exec(t, `SELECT outbox.emit('task_event', jsonb_build_object('n', g)) FROM generate_series(3, 12) g`)
	restarted := startOutboxdAt(t, db, p.Addr)
	for _, f := range followers {
		f.WaitFor(12, 60*time.Second)
	}
	for i, f := range followers {
		s := f.Stats()
		// Contiguous (OutOfOrder counts gaps) up to 12, from 1 or 2
		// depending on when the follower joined.
		if len(s.Seqs) < 11 || s.Seqs[len(s.Seqs)-1] != 12 || s.OutOfOrder != 0 {
			t.Fatalf("follower %d: seqs %v, %d out of order", i, s.Seqs, s.OutOfOrder)
		}
	}
	// Nobody was refused for coming through the proxy's address (a
	// per-address rate would refuse most of them, and deliver late).
	resp, err := http.Get("http://" + restarted.Addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	metrics, _ := io.ReadAll(resp.Body)
	// The counter is present at zero from start: it must be there, and 0.
	found := false
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, "outboxd_ws_rejections") && strings.Contains(line, `reason="rate_limited"`) {
			found = true
			if fields := strings.Fields(line); fields[len(fields)-1] != "0" {
				t.Fatalf("clients were rate limited: %s", line)
			}
		}
	}
	if !found {
		t.Fatalf("no rate_limited rejections series in /metrics:\n%s", metrics)
	}
}

func connected(t *testing.T, p *proctest.Process) int {
	t.Helper()
	return wsStats(t, p).TotalConnections
}

// statsBody is the part of /ws/stats's "stats" the tests read.
type statsBody struct {
	TotalConnections int `json:"total_connections"`
	Relay            struct {
		Reads *stream.ReadsStatus `json:"reads"`
	} `json:"relay"`
}

// wsStats reads /ws/stats of p.
func wsStats(t *testing.T, p *proctest.Process) statsBody {
	t.Helper()
	resp, err := http.Get("http://" + p.Addr + "/ws/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Stats statsBody `json:"stats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.Stats
}

// 2,000 clients resume at once while producers run: the relay keeps its own
// connections (replay reads wait on theirs), nothing resets the pool, the
// sequencer keeps numbering, and every client gets every event once, in
// order.
func TestResumeStormDoesNotStarveTheRelay(t *testing.T) {
	t.Parallel()
	const clients = 2000
	db := dbtest.New(t)
	p := startOutboxd(t, db, "LOG_LEVEL=info", "MAX_CONNECTIONS_PER_USER=0")
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": 0}')`)
	followers := make([]*proctest.Follower, clients)
	tok, err := ws.MintHS256(testSecret, "operator", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for i := range followers {
		followers[i] = proctest.Follow(t, tok, []string{p.Addr}, 0)
	}
	waitConnected(t, p, clients, 2*time.Minute)
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": 1}')`)
	for _, f := range followers {
		f.WaitFor(2, time.Minute)
	}

	// Producers keep committing, one event per transaction, through the
	// restart and the resume storm.
	ctx, stop := context.WithCancel(context.Background())
	produced := make(chan int64, 1)
	go func() {
		var n int64
		defer func() { produced <- n }()
		for ctx.Err() == nil && n < 3000 {
			if _, err := db.Pool.Exec(ctx, `SELECT outbox.emit('task_event', jsonb_build_object('n', $1::int))`, n+2); err != nil {
				if ctx.Err() == nil {
					t.Errorf("producer: %v", err)
				}
				return
			}
			n++
		}
	}()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = p.Wait()
	restarted := startOutboxdAt(t, db, p.Addr, "LOG_LEVEL=info", "MAX_CONNECTIONS_PER_USER=0")
	waitConnected(t, restarted, clients, 2*time.Minute)
	stop()
	n := <-produced
	// An Exec cancelled by stop() may have committed: count the rows.
	last := db.Int64(t, `SELECT count(*) FROM outbox.events`)
	for _, f := range followers {
		f.WaitFor(last, 2*time.Minute)
	}
	for i, f := range followers {
		s := f.Stats()
		if s.OutOfOrder != 0 || s.Seqs[len(s.Seqs)-1] != last {
			t.Fatalf("follower %d: last %d of %d, %d out of order", i, s.Seqs[len(s.Seqs)-1], last, s.OutOfOrder)
		}
	}
	if log := restarted.Stderr.String(); strings.Contains(log, "resetting the pool") {
		t.Fatalf("a pool was reset during the resume storm:\n%s", log)
	}
	// The sequencer's batches while 2,000 clients resumed.
	resp, err := http.Get("http://" + restarted.Addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum, count float64
	for _, line := range strings.Split(string(body), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) < 2:
		case strings.HasPrefix(line, "outboxd_relay_batch_duration_seconds_sum"):
			fmt.Sscan(fields[len(fields)-1], &sum)
		case strings.HasPrefix(line, "outboxd_relay_batch_duration_seconds_count"):
			fmt.Sscan(fields[len(fields)-1], &count)
		}
	}
	if count == 0 {
		t.Fatal("the restarted sequencer committed no batch")
	}
	t.Logf("%d events produced through the storm; the restarted sequencer committed %.0f batches, %.2f ms each on average",
		n, count, sum/count*1000)
}
