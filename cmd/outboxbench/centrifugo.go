package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The peer: Centrifugo v6.9.1 with its PostgreSQL outbox consumer,
// configured as its documentation says — an outbox table (id, method,
// payload, partition), a NOTIFY trigger per row, one partition — and its
// clients subscribed to one channel through the connection token. Built by
// scripts/ensure-centrifugo.sh into .tools/bin (never committed).
//
// Producers insert a publish command per transaction; the payload carries
// the insert time (latency, the same definition as for outboxd) and the
// row id as "seq" (so each client's loss, duplicates and order are checked
// the same way: Centrifugo delivers in id order within a batch it reads,
// not in commit order).

const (
	centrifugoTable   = "centrifugo_outbox"
	centrifugoChannel = "bench"
	centrifugoNotify  = "centrifugo_partition_change"
)

type centrifugo struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

const centrifugoSchema = `
CREATE TABLE ` + centrifugoTable + ` (
  id bigserial PRIMARY KEY,
  method text NOT NULL,
  payload bytea NOT NULL,
  partition integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION ` + centrifugoNotify + `() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('` + centrifugoNotify + `', NEW.partition::text);
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER ` + centrifugoNotify + ` AFTER INSERT ON ` + centrifugoTable + `
  FOR EACH ROW EXECUTE FUNCTION ` + centrifugoNotify + `();`

func (e *benchEnv) startCentrifugo(ctx context.Context, pool *pgxpool.Pool) (*centrifugo, error) {
	if _, err := pool.Exec(ctx, centrifugoSchema); err != nil {
		return nil, fmt.Errorf("centrifugo outbox: %w", err)
	}
	cfg := centrifugoBase()
	cfg["consumers"] = []map[string]any{{
		"name": "outbox", "enabled": true, "type": "postgresql",
		"postgresql": map[string]any{
			"dsn": e.dbURL(), "outbox_table_name": centrifugoTable, "num_partitions": 1,
			"partition_select_limit": 100, "partition_poll_interval": "300ms",
			"partition_notification_channel": centrifugoNotify,
		},
	}}
	return e.runCentrifugo(ctx, cfg)
}

// centrifugoBase is the configuration both peers share: errors-only log,
// the benchmark's HMAC key, any origin.
func centrifugoBase() map[string]any {
	return map[string]any{
		"log": map[string]any{"level": "error"},
		"client": map[string]any{
			"token":           map[string]any{"hmac_secret_key": benchSecret},
			"allowed_origins": []string{"*"},
		},
	}
}

// runCentrifugo runs the Centrifugo binary with cfg on a free 127.0.0.1
// port, and waits until it accepts connections.
func (e *benchEnv) runCentrifugo(ctx context.Context, cfg map[string]any) (*centrifugo, error) {
	bin, err := filepath.Abs(e.o.centrifugo)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("centrifugo binary %s: %w (scripts/ensure-centrifugo.sh builds it)", bin, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	cfg["http_server"] = map[string]any{"address": "127.0.0.1", "port": mustAtoi(port)}
	if e.o.pprofAddr != "" {
		// -pprof profiles the peer too, on its own port.
		cfg["debug"] = map[string]any{"enabled": true}
		fmt.Fprintf(os.Stderr, "centrifugo pprof at http://%s/debug/pprof/\n", addr)
	}
	dir, err := os.MkdirTemp("", "centrifugo")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "config.json")
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, err
	}
	c := &centrifugo{addr: addr, done: make(chan struct{})}
	c.cmd = exec.Command(bin, "--config", path)
	c.cmd.Dir = dir
	c.cmd.Stderr = os.Stderr
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = c.cmd.Wait(); close(c.done); os.RemoveAll(dir) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return c, nil
		}
		select {
		case <-c.done:
			return nil, fmt.Errorf("centrifugo exited at start")
		case <-ctx.Done():
			c.stop()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("centrifugo not listening on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustAtoi(s string) int { n, _ := strconv.Atoi(s); return n }

func (c *centrifugo) pid() int { return c.cmd.Process.Pid }

func (c *centrifugo) stop() { interruptAndWait(c.cmd, c.done) }

// dial connects a client with a token that subscribes it to the channel
// (server-side subscription), and waits for the connect reply.
func (c *centrifugo) dial(ctx context.Context, i int) (*client, error) {
	return c.dialWith(ctx, i, nil)
}

// dialWith is dial with the field that numbers events (nil: "seq").
func (c *centrifugo) dialWith(ctx context.Context, i int, seqField []byte) (*client, error) {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": fmt.Sprintf("bench-%d", i), "exp": time.Now().Add(6 * time.Hour).Unix(),
		"channels": []string{centrifugoChannel},
	}).SignedString([]byte(benchSecret))
	if err != nil {
		return nil, err
	}
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 16 << 10}
	conn, _, err := d.DialContext(ctx, "ws://"+c.addr+"/connection/websocket", nil)
	if err != nil {
		return nil, fmt.Errorf("dial centrifugo: %w", err)
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"connect":{"token":"`+tok+`"}}`)); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, b, err := conn.ReadMessage()
	if err != nil || !bytes.Contains(b, []byte(`"connect"`)) || !bytes.Contains(b, []byte(centrifugoChannel)) {
		conn.Close()
		return nil, fmt.Errorf("centrifugo connect reply: %v %q", err, b)
	}
	_ = conn.SetReadDeadline(time.Time{})
	cl := &client{conn: conn, lat: newHist(), done: make(chan struct{}), first: -1, pong: true, seqKey: seqField}
	go cl.read()
	return cl, nil
}

// position is the last id handed out: Centrifugo deletes what it consumed.
func (c *centrifugo) position(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var last int64
	var called bool
	err := pool.QueryRow(ctx, `SELECT last_value, is_called FROM `+centrifugoTable+`_id_seq`).Scan(&last, &called)
	if !called {
		last = 0
	}
	return last, err
}

// inserter writes one publish command; its data carries the insert time
// and the row's own id as seq.
func (c *centrifugo) inserter() insertFunc {
	return func(ctx context.Context, tx pgx.Tx, producer int, t int64, pad string) error {
		_, err := tx.Exec(ctx, `WITH n AS (SELECT nextval('`+centrifugoTable+`_id_seq') AS id)
INSERT INTO `+centrifugoTable+` (id, method, payload, partition)
SELECT id, 'publish', convert_to(jsonb_build_object('channel', $1::text,
  'data', jsonb_build_object('t', $2::bigint, 'seq', id, 'p', $3::int, 'pad', $4::text))::text, 'UTF8'), 0 FROM n`,
			centrifugoChannel, t, producer, pad)
		return err
	}
}

var _ server = (*centrifugo)(nil)
