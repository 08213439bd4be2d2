package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/ws"
)

func pgbouncerPath() string {
	if p := os.Getenv("PGBOUNCER_PATH"); p != "" {
		return p
	}
	return "/usr/sbin/pgbouncer"
}

// startPgBouncer runs Debian's pgbouncer in transaction pooling mode with
// its default settings, in front of the test server, on a free port, as
// the postgres user (pgbouncer refuses to run as root), and returns its
// address.
func startPgBouncer(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(pgbouncerPath()); err != nil {
		t.Fatalf("pgbouncer is required (scripts/ensure-pgbouncer.sh): %v", err)
	}
	admin, err := url.Parse(dbtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	addr := proctest.FreeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	dir, err := os.MkdirTemp("", "outboxd-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%s

[pgbouncer]
listen_addr = %s
listen_port = %s
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
`, admin.Hostname(), admin.Port(), host, port, filepath.Join(dir, "users.txt"))
	if err := os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.txt"), []byte(`"postgres" ""`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "postgres"}, args...)
	}
	cmd := exec.Command(pgbouncerPath(), args...)
	var out proctest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	eventually(t, 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	}, func() string { return "pgbouncer did not listen:\n" + out.String() })
	return addr
}

// Behind PgBouncer in transaction mode with its default settings, with
// LISTEN_DATABASE_URL for the direct session: outboxd becomes ready (no
// startup parameter the pooler refuses), sequences, delivers live, resumes
// from the table and disconnects — producers writing through the pooler
// too. A default PgBouncer refuses statement_timeout as a startup
// parameter: outboxd never became healthy through it.
func TestThroughPgBouncerTransactionMode(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	bouncer := startPgBouncer(t)
	pooled := fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", bouncer, db.Name)
	// The pooler itself is what a default PgBouncer is: it refuses the
	// startup parameters a direct connection gets.
	if c, err := pgx.Connect(context.Background(), pooled+"&statement_timeout=1000"); err == nil {
		_ = c.Close(context.Background())
		t.Fatal("this pgbouncer accepts statement_timeout at startup: not a default configuration")
	}
	p := startOutboxd(t, db, "DATABASE_URL="+pooled, "LISTEN_DATABASE_URL="+db.URL, "RELAY_WAKEUP=idle")

	tok, err := ws.MintHS256(testSecret, "op1", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(query string) *websocket.Conn {
		t.Helper()
		conn, _, err := websocket.DefaultDialer.Dial("ws://"+p.Addr+"/ws/connect?token="+url.QueryEscape(tok)+query, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if f := readFrame(t, conn); f["type"] != "welcome" {
			t.Fatalf("first frame %v", f)
		}
		return conn
	}
	live := dial("")
	producer, err := pgx.Connect(context.Background(), pooled)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close(context.Background())
	for i := 1; i <= 50; i++ {
		if _, err := producer.Exec(context.Background(), `SELECT outbox.emit('task_event', jsonb_build_object('n', $1::int), NULL, ARRAY['LEVEL_1'])`,
			pgx.QueryExecModeSimpleProtocol, i); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 50; i++ {
		f := readFrame(t, live)
		if f["seq"] != float64(i) {
			t.Fatalf("live frame %d: %v", i, f)
		}
	}
	// A resume reads from the table, through the pooler.
	resumed := dial("&since=10")
	for i := 11; i <= 50; i++ {
		if f := readFrame(t, resumed); f["seq"] != float64(i) {
			t.Fatalf("resumed frame: %v, want seq %d", f, i)
		}
	}
	if _, err := producer.Exec(context.Background(), `SELECT outbox.disconnect(ARRAY['op1'], 'revoked')`, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*websocket.Conn{"live": live, "resumed": resumed} {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !asCloseError(err, &ce) || ce.Code != 4003 {
			t.Fatalf("%s: %v, want close 4003", name, err)
		}
	}
	if strings.Contains(p.Stderr.String(), "level=ERROR") || strings.Contains(p.Stderr.String(), "failed; retrying") {
		t.Fatalf("errors through the pooler:\n%s", p.Stderr.String())
	}
}

func asCloseError(err error, target **websocket.CloseError) bool {
	ce, ok := err.(*websocket.CloseError)
	if ok {
		*target = ce
	}
	return ok
}
