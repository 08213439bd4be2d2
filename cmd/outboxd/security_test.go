package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/outbox"
)

// closedWithin reads from c until the server closes it; it fails the test
// if that takes longer than d.
func closedWithin(t *testing.T, c net.Conn, d time.Duration, what string) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: still open after %s", what, d)
	}
	return string(b)
}

// A request that never sends its body, an idle keep-alive connection and
// oversized headers cannot hold the server's connections.
func TestHTTPLimitsReleaseConnections(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := startOutboxd(t, db, "HTTP_READ_TIMEOUT=1s", "HTTP_IDLE_TIMEOUT=1s", "MAX_OPEN_CONNS=50")
	// A WebSocket opened now must outlive both timeouts: the two closes
	// below are the signal that they have passed.
	conn, _ := dialAs(t, p, "u1")
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	var welcome map[string]any
	if err := conn.ReadJSON(&welcome); err != nil {
		t.Fatal(err)
	}

	held, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	fmt.Fprintf(held, "POST /ws/_test/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
	closedWithin(t, held, 10*time.Second, "a held body")

	idle, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", err, resp)
	}
	resp.Body.Close()
	closedWithin(t, idle, 10*time.Second, "an idle keep-alive connection")

	req, _ := http.NewRequest("GET", "http://"+p.Addr+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 1<<20))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("1 MB of headers: %d, want 431", resp.StatusCode)
	}
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": 1}')`)
	var ev map[string]any
	if err := conn.ReadJSON(&ev); err != nil || ev["seq"] != 1.0 {
		t.Fatalf("after the HTTP timeouts the session got %v, %v", ev, err)
	}
}

// Past MAX_OPEN_CONNS, or MAX_CONNS_PER_ADDRESS for an address that is not
// a trusted proxy, a connection gets a clean 503 at once.
func TestOpenConnectionCaps(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	// hold opens n connections the server has admitted (each answers a
	// keep-alive request). A connection may be refused while the server
	// still counts one that the readiness poll closed: try again.
	hold := func(p *proctest.Process, n int) {
		t.Helper()
		for held, tries := 0, 0; held < n; tries++ {
			if tries > 50 {
				t.Fatalf("only %d of %d connections admitted", held, n)
			}
			c, err := net.Dial("tcp", p.Addr)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil {
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != http.StatusOK {
				c.Close()
				continue
			}
			held++
			t.Cleanup(func() { c.Close() })
		}
	}
	refused := func(p *proctest.Process) bool {
		t.Helper()
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "1"
	}
	total := startOutboxd(t, db, "MAX_OPEN_CONNS=5")
	hold(total, 5)
	if !refused(total) {
		t.Fatal("a sixth connection was not refused")
	}
	perAddr := startOutboxd(t, db, "MAX_CONNS_PER_ADDRESS=3")
	hold(perAddr, 3)
	if !refused(perAddr) {
		t.Fatal("a fourth connection from one address was not refused")
	}
	proxied := startOutboxd(t, db, "MAX_CONNS_PER_ADDRESS=3", "TRUSTED_PROXIES=127.0.0.1/32")
	hold(proxied, 3)
	if refused(proxied) {
		t.Fatal("a trusted proxy's connections were capped")
	}
}

// ADMIN_ADDR moves /metrics and /ws/stats off the public address, and
// ADMIN_TOKEN guards them.
func TestAdminAddressAndToken(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	admin := proctest.FreeAddr(t)
	const token = "admin-token-0123456789"
	p := startOutboxd(t, db, "ADMIN_ADDR="+admin, "ADMIN_TOKEN="+token)
	get := func(url, bearer string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, path := range []string{"/metrics", "/ws/stats"} {
		if got := get("http://"+p.Addr+path, token); got != http.StatusNotFound {
			t.Errorf("public %s: %d, want 404", path, got)
		}
		if got := get("http://"+admin+path, ""); got != http.StatusUnauthorized {
			t.Errorf("admin %s without the token: %d, want 401", path, got)
		}
		if got := get("http://"+admin+path, "wrong-token-0123456789"); got != http.StatusUnauthorized {
			t.Errorf("admin %s with a wrong token: %d, want 401", path, got)
		}
		if got := get("http://"+admin+path, token); got != http.StatusOK {
			t.Errorf("admin %s: %d, want 200", path, got)
		}
	}
	if got := get("http://"+admin+"/readyz", ""); got != http.StatusOK {
		t.Errorf("admin /readyz: %d", got)
	}
}

func TestProductionRefusesWeakKeySources(t *testing.T) {
	t.Parallel()
	base := map[string]string{"ENVIRONMENT": "production", "ALLOWED_ORIGINS": "https://app.example"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		env  map[string]string
		says []string // empty: accepted
	}{
		{with("JWKS_URL", "http://id.example/jwks", "JWT_ISSUER", "i", "JWT_AUDIENCE", "a"), []string{"JWKS_URL: http://"}},
		{with("JWKS_URL", "http://id.example/jwks", "JWT_ISSUER", "i", "JWT_AUDIENCE", "a", "JWKS_ALLOW_HTTP", "true"), nil},
		{with("JWKS_URL", "https://id.example/jwks"), []string{"JWT_ISSUER: required", "JWT_AUDIENCE: required"}},
		{with("JWKS_URL", "https://id.example/jwks", "JWT_ISSUER", "i", "JWT_AUDIENCE", "a"), nil},
		{with("SECRET_KEY", "0123456789abcdef0123"), nil}, // HS256: warned at start, not refused
		{with("SECRET_KEY", "0123456789abcdef0123", "ADMIN_TOKEN", "short"), []string{"ADMIN_TOKEN"}},
	} {
		_, err := LoadConfig(c.env)
		if len(c.says) == 0 {
			if err != nil {
				t.Errorf("%v: %v", c.env, err)
			}
			continue
		}
		for _, s := range c.says {
			if err == nil || !strings.Contains(err.Error(), s) {
				t.Errorf("%v: %v, want %q", c.env, err, s)
			}
		}
	}
	// Outside production http JWKS is accepted (a local identity provider).
	if _, err := LoadConfig(map[string]string{"JWKS_URL": "http://127.0.0.1:9/jwks"}); err != nil {
		t.Fatal(err)
	}
}

// The least-privilege roles of docs/least-privilege.sql, end to end: the
// sidecar serves as a role with no DDL and no INSERT, the producer emits
// with EXECUTE only and can touch nothing else.
func TestLeastPrivilegeRoles(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	script, err := os.ReadFile(filepath.Join("..", "..", "docs", "least-privilege.sql"))
	if err != nil {
		t.Fatal(err)
	}
	sidecar, producer := "sc_"+db.Name, "pr_"+db.Name
	sql := strings.NewReplacer("outboxd_sidecar", sidecar, "outboxd_producer", producer).Replace(string(script))
	t.Cleanup(func() {
		for _, r := range []string{sidecar, producer} {
			_, _ = db.Pool.Exec(ctx, "DROP OWNED BY "+r)
			_, _ = db.Pool.Exec(ctx, "DROP ROLE IF EXISTS "+r)
		}
	})
	db.Exec(t, sql)
	asRole := func(role string) string {
		cfg, err := pgx.ParseConfig(db.URL)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", role, cfg.Host, cfg.Port, cfg.Database)
	}
	p := proctest.Start(t, binary, proctest.FreeAddr(t), "DATABASE_URL="+asRole(sidecar), "AUTO_MIGRATE=false", "OUTBOX_RETENTION=1m")
	conn, _ := dialAs(t, p, "u1", "LEVEL_1")
	read := func() map[string]any { t.Helper(); return readFrame(t, conn) }
	read() // welcome

	pool, err := pgxpool.New(ctx, asRole(producer))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `SELECT outbox.emit('task_event', '{"via": "sql"}', NULL, ARRAY['LEVEL_1'])`); err != nil {
		t.Fatalf("producer emit: %v", err)
	}
	if _, err := outbox.Emit(ctx, pool, outbox.Event{Topic: "task_event", Data: map[string]string{"via": "go"}, Roles: []string{"LEVEL_1"}}); err != nil {
		t.Fatalf("producer outbox.Emit: %v", err)
	}
	if _, err := outbox.EmitBatch(ctx, pool, []outbox.Event{{Topic: "task_event", Data: map[string]string{"via": "batch"}, Broadcast: true}}); err != nil {
		t.Fatalf("producer outbox.EmitBatch: %v", err)
	}
	var head int64
	var epoch string
	if err := pool.QueryRow(ctx, `SELECT outbox.head(), outbox.epoch()`).Scan(&head, &epoch); err != nil || epoch == "" {
		t.Fatalf("producer head/epoch: %v", err)
	}
	for i, via := range []string{"sql", "go", "batch"} {
		if m := read(); m["seq"] != float64(i+1) || m["data"].(map[string]any)["via"] != via {
			t.Fatalf("event %d: %v", i+1, m)
		}
	}
	for _, forbidden := range []string{
		`INSERT INTO outbox.events (topic, payload) VALUES ('x', '{}')`,
		`UPDATE outbox.events SET seq = seq + 1000`,
		`DELETE FROM outbox.events`,
		`SELECT count(*) FROM outbox.events`,
		`UPDATE outbox.relay_state SET last_seq = 1000000`,
		`SELECT last_seq FROM outbox.relay_state`,
	} {
		if _, err := pool.Exec(ctx, forbidden); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("producer ran %q: %v", forbidden, err)
		}
	}
	// The sidecar itself cannot write events or change the schema.
	side, err := pgxpool.New(ctx, asRole(sidecar))
	if err != nil {
		t.Fatal(err)
	}
	defer side.Close()
	for _, forbidden := range []string{
		`INSERT INTO outbox.events (topic, payload) VALUES ('x', '{}')`,
		`SELECT outbox.emit('x', '{}')`,
		`CREATE TABLE outbox.extra (id int)`,
		`ALTER TABLE outbox.events ADD COLUMN extra int`,
	} {
		if _, err := side.Exec(ctx, forbidden); err == nil {
			t.Errorf("sidecar ran %q", forbidden)
		}
	}
}
