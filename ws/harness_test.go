package ws

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/testsignal"
	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/relay"
)

const testSecret = "test-secret-0123456789abcdef"

// env is a running hub on a real database with a real relay and server.
type env struct {
	t    *testing.T
	db   *dbtest.DB
	hub  *Hub
	srv  *httptest.Server
	seq  *relay.Sequencer
	tail *relay.Tailer
	// relay is the relay wired as outboxd wires it; seq and tail are its
	// sequencer and tailer, started one by one (noSequencer).
	relay *relay.Relay
}

type envOpts struct {
	cfg          Config
	auth         *AuthConfig
	noSequencer  bool // start without a sequencer (a backlog builds up)
	db           *dbtest.DB
	sequencerCfg relay.SequencerConfig
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	db := o.db
	if db == nil {
		db = dbtest.New(t)
	}
	ac := AuthConfig{SecretKey: testSecret, RequireExp: true}
	if o.auth != nil {
		ac = *o.auth
	}
	actx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	auth, err := NewAuthenticator(actx, ac)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db}
	e.hub = New(auth, relay.NewStore(db.Pool), o.cfg)
	ctx := context.Background()
	if err := e.hub.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The relay as outboxd wires it (relay.NewRelay): the sequencer hands
	// its batches to this tailer and lets the hub's backlog shrink before
	// its next batch.
	e.relay = relay.NewRelay(db.Pool, e.hub, relay.RelayConfig{
		StartAfter: e.hub.Head(), Epoch: e.hub.Epoch(), Handoff: true,
		Tailer: relay.TailerConfig{FallbackPoll: 100 * time.Millisecond}, Sequencer: o.sequencerCfg,
	})
	e.seq, e.tail = e.relay.Sequencer, e.relay.Tailer
	if err := e.relay.Notifier.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.tail.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !o.noSequencer {
		e.startSequencer()
	}
	mux := http.NewServeMux()
	e.hub.Routes(mux)
	mux.Handle("GET /ws/stats", e.hub.StatsHandler())
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.stop)
	return e
}

func (e *env) startSequencer() {
	if err := e.seq.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = e.seq.Stop(ctx)
	_ = e.tail.Stop(ctx)
	_ = e.relay.Notifier.Stop(ctx)
	if err := e.hub.Stop(ctx); err != nil {
		e.t.Errorf("hub stop: %v", err)
	}
	e.srv.CloseClientConnections()
	e.srv.Close()
}

func (e *env) token(sub string, roles ...string) string {
	e.t.Helper()
	tok, err := MintHS256(testSecret, sub, roles, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *env) wsURL(query string) string {
	return "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/ws/connect?" + query
}

// frame is any server message.
type frame struct {
	Type      string          `json:"type"`
	Seq       int64           `json:"seq"`
	ID        int64           `json:"id"`
	Timestamp string          `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

// wsClient reads frames in the background into a channel.
type wsClient struct {
	t      *testing.T
	conn   *websocket.Conn
	frames chan frame
	mu     sync.Mutex
	err    error // the read error that ended the stream (a CloseError for a close frame)
	done   chan struct{}
	// messages counts WebSocket messages (a batched one holds several
	// envelopes).
	messages atomic.Int64
}

type dialOpts struct {
	header   http.Header
	rcvBuf   int  // SO_RCVBUF for a slow client
	noReader bool // never read: no pongs, no frames
	// pings, if set, receives a value for every ping the server sends
	// (answered with a pong, as gorilla's default handler does).
	pings chan<- struct{}
}

func (e *env) dial(query string, o dialOpts) (*wsClient, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	if o.rcvBuf > 0 {
		nd := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.rcvBuf)
			})
			return errors.Join(err, serr)
		}}
		d.NetDialContext = nd.DialContext
		d.ReadBufferSize = 1024
	}
	conn, resp, err := d.Dial(e.wsURL(query), o.header)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{t: e.t, conn: conn, frames: make(chan frame, 100000), done: make(chan struct{})}
	e.t.Cleanup(func() { _ = conn.Close() })
	if o.pings != nil {
		conn.SetPingHandler(func(data string) error {
			select {
			case o.pings <- struct{}{}:
			default:
			}
			return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
	}
	if !o.noReader {
		go c.readLoop()
	}
	return c, resp, nil
}

// connect dials with a token for sub/roles (and extra query) and returns the
// client after checking its welcome frame.
func (e *env) connect(extra string, sub string, roles ...string) *wsClient {
	e.t.Helper()
	q := "token=" + url.QueryEscape(e.token(sub, roles...))
	if extra != "" {
		q += "&" + extra
	}
	c, resp, err := e.dial(q, dialOpts{})
	if err != nil {
		e.t.Fatalf("dial %s: %v (%v)", sub, err, resp)
	}
	w := c.next(5 * time.Second)
	if w.Type != TypeWelcome {
		e.t.Fatalf("first frame %+v, want welcome", w)
	}
	return c
}

func (c *wsClient) readLoop() {
	defer close(c.done)
	for {
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		c.messages.Add(1)
		// A batch=1 client may get several envelopes per frame, one per
		// line; no other frame holds a newline.
		for _, line := range bytes.Split(b, []byte{'\n'}) {
			var f frame
			if err := json.Unmarshal(line, &f); err != nil {
				c.mu.Lock()
				c.err = fmt.Errorf("bad frame %q: %w", b, err)
				c.mu.Unlock()
				return
			}
			c.frames <- f
		}
	}
}

func (c *wsClient) next(d time.Duration) frame {
	c.t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-time.After(d):
		c.t.Fatalf("no frame within %s (stream error: %v)", d, c.readErr())
	}
	return frame{}
}

// nextControl returns the next frame that is not an event.
func (c *wsClient) nextControl(d time.Duration) frame {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		f := c.next(time.Until(deadline))
		if f.Seq == 0 {
			return f
		}
	}
}

func (c *wsClient) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// events reads n event frames (skipping control frames other than those
// in allow), failing after d.
func (c *wsClient) events(n int, d time.Duration) []frame {
	c.t.Helper()
	out := make([]frame, 0, n)
	deadline := time.After(d)
	for len(out) < n {
		select {
		case f := <-c.frames:
			if f.Seq > 0 {
				out = append(out, f)
			}
		case <-deadline:
			c.t.Fatalf("got %d of %d events within %s (stream error: %v)", len(out), n, d, c.readErr())
		}
	}
	return out
}

// quiet asserts that no frame arrives for d.
func (c *wsClient) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case f := <-c.frames:
		c.t.Fatalf("unexpected frame %+v", f)
	case <-time.After(d):
	}
}

// closed waits for the stream to end and returns the close code (or -1 if
// it ended without a close frame).
func (c *wsClient) closed(d time.Duration) (int, error) {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(d):
		c.t.Fatalf("connection still open after %s", d)
	}
	err := c.readErr()
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, err
	}
	return -1, err
}

func (e *env) emit(evs ...outbox.Event) []int64 {
	e.t.Helper()
	ids, err := outbox.EmitBatch(context.Background(), e.db.Pool, evs)
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

func ev(topic string, n int, users, roles []string) outbox.Event {
	// No targets in these tests means everyone: an explicit broadcast.
	return outbox.Event{Topic: topic, Data: map[string]int{"n": n}, Users: users, Roles: roles, Broadcast: users == nil && roles == nil}
}

func (e *env) stats() map[string]any {
	e.t.Helper()
	resp, err := http.Get(e.srv.URL + "/ws/stats")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		e.t.Fatal(err)
	}
	return m
}

func (e *env) connections() int {
	e.hub.mu.RLock()
	defer e.hub.mu.RUnlock()
	return len(e.hub.routes.all)
}

func (e *env) userConnections(user string) int {
	e.hub.mu.RLock()
	defer e.hub.mu.RUnlock()
	return len(e.hub.routes.byUser[user])
}

// waitFor is testsignal.Eventually, saying what it waited for.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testsignal.Eventually(t, d, cond, func() string { return "waiting for " + what })
}
