package ws

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/outbox"
)

func expectRefused(t *testing.T, e *env, query string, status int, code string) *http.Response {
	t.Helper()
	_, resp, err := e.dial(query, dialOpts{})
	if err == nil || resp == nil || resp.StatusCode != status {
		t.Fatalf("dial %s: %v %v; want HTTP %d", query, err, resp, status)
	}
	var body httpError
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if body.Error != code {
		t.Fatalf("body %+v, want %s", body, code)
	}
	return resp
}

func TestConnectionLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{Limits: Limits{MaxConnections: 3, MaxConnectionsPerUser: 2}}})
	e.connect("", "u1")
	e.connect("", "u1")
	expectRefused(t, e, "token="+e.token("u1"), http.StatusTooManyRequests, "too_many_connections_for_user")
	e.connect("", "u2")
	expectRefused(t, e, "token="+e.token("u3"), http.StatusServiceUnavailable, "too_many_connections")
	if _, rej, _ := e.hub.Counts(); rej["too_many_connections_for_user"] != 1 || rej["too_many_connections"] != 1 {
		t.Fatalf("rejections %v", rej)
	}
	if e.connections() != 3 {
		t.Fatalf("%d connections", e.connections())
	}
}

func TestConnectRateLimitPerAddress(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{Limits: Limits{ConnectRate: 0.5, ConnectBurst: 3}}})
	for range 3 {
		c := e.connect("", "u1")
		_ = c.conn.Close()
	}
	resp := expectRefused(t, e, "token="+e.token("u1"), http.StatusTooManyRequests, "rate_limited")
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After %q", ra)
	}
	// A refused attempt spends no token: bad tokens are limited too, before
	// any signature check.
	expectRefused(t, e, "token=garbage", http.StatusTooManyRequests, "rate_limited")
}

func TestClientMessageFloodClosed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{Limits: Limits{MessageRate: 5, MessageBurst: 5}}})
	cl := e.connect("", "u1")
	for range 50 {
		if err := cl.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
			break
		}
	}
	code, err := cl.closed(5 * time.Second)
	if code != 1008 {
		t.Fatalf("flooding client closed with %d (%v), want 1008", code, err)
	}
	if drops, _, _ := e.hub.Counts(); drops["message_rate"] != 1 {
		t.Fatalf("drops %v", drops)
	}
}

// Hostile clients of every kind while a normal client streams: the normal
// client gets every event in order, each hostile one its documented answer.
func TestHostileClientsWhileStreaming(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{
		MaxMessageSize: 512,
		Limits:         Limits{ConnectRate: 50, ConnectBurst: 50, MaxConnectionsPerUser: 5, MessageRate: 50, MessageBurst: 50},
	}})
	good := e.connect("", "good")
	const n = 3000
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < n; i += 100 {
			batch := make([]outbox.Event, 100)
			for j := range batch {
				batch[j] = ev("task_event", i+j, nil, nil)
			}
			e.emit(batch...)
			time.Sleep(5 * time.Millisecond)
		}
	})
	// A connect flood: bounded count, bounded time.
	answers := map[int]int{}
	var amu sync.Mutex
	wg.Go(func() {
		deadline := time.Now().Add(5 * time.Second)
		for i := 0; i < 300 && time.Now().Before(deadline); i++ {
			q := "token=" + url.QueryEscape(e.token(fmt.Sprintf("flood%d", i%3)))
			if i%2 == 0 {
				q = "token=bad"
			}
			c, resp, err := e.dial(q, dialOpts{noReader: true})
			status := 101
			if err != nil && resp != nil {
				status = resp.StatusCode
			}
			if c != nil {
				_ = c.conn.Close()
			}
			amu.Lock()
			answers[status]++
			amu.Unlock()
		}
	})
	// Garbage, oversized and bad-since clients.
	garbage := e.connect("", "garbage")
	for _, f := range []string{"\x00\x01", "{", `{"type":"x"}`, strings.Repeat("[", 100)} {
		_ = garbage.conn.WriteMessage(websocket.TextMessage, []byte(f))
		if g := garbage.nextControl(5 * time.Second); g.Type != TypeError {
			t.Errorf("garbage %q → %+v", f, g)
		}
	}
	big := e.connect("", "big")
	_ = big.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping","x":"`+strings.Repeat("x", 1000)+`"}`))
	if code, _ := big.closed(5 * time.Second); code != websocket.CloseMessageTooBig {
		t.Errorf("oversized frame: close %d", code)
	}
	expectRefused(t, e, "since=-5&token="+e.token("bad-since"), http.StatusBadRequest, "invalid_since")
	half, _, err := e.dial("token="+e.token("half-open"), dialOpts{noReader: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = half

	fs := good.events(n, 60*time.Second)
	for i, f := range fs {
		if f.Seq != int64(i+1) {
			t.Fatalf("good client: event %d has seq %d", i, f.Seq)
		}
	}
	close(stop)
	wg.Wait()
	amu.Lock()
	defer amu.Unlock()
	if answers[http.StatusTooManyRequests] == 0 || answers[http.StatusUnauthorized] == 0 {
		t.Fatalf("connect flood answers %v: want some 401 (bad tokens) and 429 (rate limit)", answers)
	}
	for status := range answers {
		if status != 101 && status != 401 && status != 429 {
			t.Fatalf("connect flood answers %v", answers)
		}
	}
	resp, err := http.Get(e.srv.URL + "/ws/stats")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stats after the storm: %v %v", err, resp)
	}
	resp.Body.Close()
}
