package main

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/internal/testsignal"
	"github.com/grupogad/outboxd/ws"
)

var binary string

func TestMain(m *testing.M) { os.Exit(proctest.RunWithBinary(m, &binary)) }

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != "postgres://postgres@localhost:5432/postgres?sslmode=disable" || c.ListenAddr != ":8002" ||
		c.Environment != "development" || !c.JWTRequireExp || c.HeartbeatInterval != 30*time.Second ||
		c.OutboxRetention != 24*time.Hour || !c.AutoMigrate || c.LogFormat != "text" ||
		len(c.AllowedOrigins) != 1 || c.AllowedOrigins[0] != "*" || c.WSSendBuffer != ws.SendBufferDefault ||
		c.ReadDatabaseURL != "" || c.ReadMaxLag != 2*time.Second {
		t.Fatalf("defaults %+v", c)
	}
	c, err = LoadConfig(map[string]string{"ENVIRONMENT": "production", "SECRET_KEY": "0123456789abcdef0123",
		"ALLOWED_ORIGINS": "https://a.example, https://b.example:8443"})
	if err != nil {
		t.Fatal(err)
	}
	if c.LogFormat != "json" || c.AllowedOrigins[1] != "https://b.example:8443" {
		t.Fatalf("production %+v", c)
	}
}

func TestConfigNamesEveryBadVariable(t *testing.T) {
	t.Parallel()
	_, err := LoadConfig(map[string]string{
		"DATABASE_URL": "mysql://x", "LISTEN_ADDR": "8002", "ENVIRONMENT": "prod",
		"JWT_REQUIRE_EXP": "maybe", "HEARTBEAT_INTERVAL": "soon", "WS_SEND_BUFFER": "2",
		"WS_MAX_MESSAGE_SIZE": "-5", "RELAY_BATCH_SIZE": "0", "RELAY_POLL_INTERVAL": "1h", "RELAY_WAKEUP": "push",
		"OUTBOX_RETENTION": "1s", "REPLAY_MAX": "x", "AUTO_MIGRATE": "si", "LOG_LEVEL": "loud",
		"LOG_FORMAT": "xml", "SECRET_KEY": "short", "JWKS_URL": "ftp://keys", "ALLOWED_ORIGINS": "not-an-origin",
		"MAX_CONNECTIONS": "-1", "CONNECT_RATE": "NaN", "CLIENT_MESSAGE_BURST": "many",
		"READ_DATABASE_URL": "standby:5432", "READ_MAX_LAG": "10ms",
	})
	if err == nil {
		t.Fatal("bad configuration accepted")
	}
	for _, v := range []string{"DATABASE_URL", "LISTEN_ADDR", "ENVIRONMENT", "JWT_REQUIRE_EXP", "HEARTBEAT_INTERVAL",
		"WS_SEND_BUFFER", "WS_MAX_MESSAGE_SIZE", "RELAY_BATCH_SIZE", "RELAY_POLL_INTERVAL", "RELAY_WAKEUP", "OUTBOX_RETENTION",
		"REPLAY_MAX", "AUTO_MIGRATE", "LOG_LEVEL", "LOG_FORMAT", "SECRET_KEY", "JWKS_URL", "ALLOWED_ORIGINS",
		"MAX_CONNECTIONS", "CONNECT_RATE", "CLIENT_MESSAGE_BURST", "READ_DATABASE_URL", "READ_MAX_LAG"} {
		if !strings.Contains(err.Error(), v) {
			t.Errorf("error does not name %s:\n%v", v, err)
		}
	}
	_, err = LoadConfig(map[string]string{"ENVIRONMENT": "production", "ALLOWED_ORIGINS": "*"})
	if err == nil || !strings.Contains(err.Error(), "SECRET_KEY or JWKS_URL") || !strings.Contains(err.Error(), "ALLOWED_ORIGINS: * is not allowed") {
		t.Fatalf("production without keys: %v", err)
	}
}

const testSecret = proctest.SecretKey

func startOutboxd(t *testing.T, db *dbtest.DB, extra ...string) *proctest.Process {
	t.Helper()
	return startOutboxdAt(t, db, proctest.FreeAddr(t), extra...)
}

func startOutboxdAt(t *testing.T, db *dbtest.DB, addr string, extra ...string) *proctest.Process {
	t.Helper()
	return proctest.Start(t, binary, addr, append([]string{"DATABASE_URL=" + db.URL}, extra...)...)
}

// dialAs opens a WebSocket to p as sub with roles, and returns the token it
// used.
func dialAs(t *testing.T, p *proctest.Process, sub string, roles ...string) (*websocket.Conn, string) {
	t.Helper()
	tok, err := ws.MintHS256(testSecret, sub, roles, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+p.Addr+"/ws/connect?token="+url.QueryEscape(tok), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, tok
}

func TestBinaryRelaysAndStopsGracefully(t *testing.T) {
	t.Parallel()
	db := dbtest.NewEmpty(t) // AUTO_MIGRATE creates the schema
	p := startOutboxd(t, db)
	conn, tok := dialAs(t, p, "op1", "LEVEL_1")
	read := func() map[string]any { t.Helper(); return readFrame(t, conn) }
	if m := read(); m["type"] != "welcome" {
		t.Fatalf("first frame %v", m)
	}
	db.Exec(t, `SELECT outbox.emit('task_event', '{"task_id": 1, "status": "created"}', NULL, ARRAY['LEVEL_1'])`)
	if m := read(); m["type"] != "task_event" || m["seq"] != 1.0 || m["data"].(map[string]any)["status"] != "created" {
		t.Fatalf("event frame %v", m)
	}
	if strings.Contains(p.Stderr.String(), tok) {
		t.Fatal("the token appears in the log")
	}

	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := conn.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("client saw %v, want close 1001", err)
	}
	if err := p.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, p.Stderr)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("shutdown took %s", took)
	}
	if !strings.Contains(p.Stderr.String(), "stopped") {
		t.Fatalf("log:\n%s", p.Stderr)
	}
}

func TestBinaryRefusesBadConfig(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(binary)
	cmd.Env = []string{"RELAY_BATCH_SIZE=lots", "LOG_LEVEL=loud"}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want 2", err)
	}
	if !bytes.Contains(out, []byte("RELAY_BATCH_SIZE")) || !bytes.Contains(out, []byte("LOG_LEVEL")) {
		t.Fatalf("output:\n%s", out)
	}
}

func TestMigrateSubcommand(t *testing.T) {
	t.Parallel()
	db := dbtest.NewEmpty(t)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(binary, append([]string{"migrate"}, args...)...)
		cmd.Env = []string{"DATABASE_URL=" + db.URL}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("migrate %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	status := run("status")
	if !strings.Contains(status, "00001  pending") {
		t.Fatalf("status: %s", status)
	}
	// The expected versions come from the binary's own list, so that a new migration does
	// not need this test edited; 1..n, all pending, is what a fresh database must show.
	n := strings.Count(status, "  pending")
	if n < 11 || strings.Contains(status, "  applied") {
		t.Fatalf("status of a fresh database (%d pending): %s", n, status)
	}
	versions := make([]string, n)
	for i := range versions {
		versions[i] = strconv.Itoa(i + 1)
	}
	if out, want := run("up"), fmt.Sprintf("applied %d migration(s) [%s]", n, strings.Join(versions, " ")); !strings.Contains(out, want) {
		t.Fatalf("up: %s, want %q", out, want)
	}
	if out := run("status"); strings.Contains(out, "  pending") || strings.Count(out, "  applied") != n {
		t.Fatalf("status: %s", out)
	}
	if out := run("down"); !strings.Contains(out, fmt.Sprintf("rolled back version %d", n)) {
		t.Fatalf("down: %s", out)
	}
	if out := run(); !strings.Contains(out, fmt.Sprintf("applied 1 migration(s) [%d]", n)) {
		t.Fatalf("up (default): %s", out)
	}
	var head int64
	if err := db.Pool.QueryRow(context.Background(), `SELECT outbox.head()`).Scan(&head); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "migrate", "sideways")
	cmd.Env = []string{"DATABASE_URL=" + db.URL}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "sideways") {
		t.Fatalf("bad subcommand: %v %s", err, out)
	}
}

// readFrame reads one JSON frame within 10 s, or fails the test.
func readFrame(t *testing.T, conn *websocket.Conn) map[string]any {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var m map[string]any
	if err := conn.ReadJSON(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// eventually is testsignal.Eventually.
func eventually(t *testing.T, d time.Duration, cond func() bool, what func() string) {
	t.Helper()
	testsignal.Eventually(t, d, cond, what)
}

// waitConnected waits until p has n sessions.
func waitConnected(t *testing.T, p *proctest.Process, n int, d time.Duration) {
	t.Helper()
	eventually(t, d, func() bool { return connected(t, p) >= n },
		func() string { return fmt.Sprintf("%d of %d connected", connected(t, p), n) })
}

// stopRecorder is a server whose Stop records the deadline it was given.
type stopRecorder struct{ deadline time.Time }

func (s *stopRecorder) Stop(ctx context.Context) error {
	s.deadline, _ = ctx.Deadline()
	return nil
}

// The drain's deadline counts from the stop, however long the process has
// run: one made at start-up left a replica up for more than 4 s no time
// to drain at SIGTERM.
func TestStopWithinCountsFromTheCall(t *testing.T) {
	t.Parallel()
	var s stopRecorder
	called := time.Now()
	if err := stopWithin(&s, shutdownTimeout); err != nil {
		t.Fatal(err)
	}
	if s.deadline.Before(called.Add(shutdownTimeout)) {
		t.Fatalf("deadline %s is less than %s after the stop was called", s.deadline.Sub(called), shutdownTimeout)
	}
}
