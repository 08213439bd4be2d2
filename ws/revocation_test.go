package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/memstore"
	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/relay"
)

// mintClaims signs claims with the test secret, as an app would.
func mintClaims(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// tokenIssued is a token for sub/role issued at iat, valid for an hour.
func tokenIssued(t *testing.T, sub, role string, iat time.Time) string {
	return mintClaims(t, jwt.MapClaims{"sub": sub, "role": role, "iat": iat.Unix(), "exp": iat.Add(time.Hour).Unix()})
}

// connectWith dials with a raw token (and extra query) and returns the
// client after its welcome, or the HTTP refusal.
func (e *env) connectWith(tok, extra string) (*wsClient, int, string) {
	e.t.Helper()
	q := "token=" + url.QueryEscape(tok)
	if extra != "" {
		q += "&" + extra
	}
	c, resp, err := e.dial(q, dialOpts{})
	if err != nil {
		if resp == nil {
			e.t.Fatalf("dial: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		return nil, resp.StatusCode, string(b)
	}
	if w := c.next(5 * time.Second); w.Type != TypeWelcome {
		e.t.Fatalf("first frame %+v, want welcome", w)
	}
	return c, http.StatusSwitchingProtocols, ""
}

// outbox.disconnect revokes: once the relay reaches it, alice's token
// issued before it is refused on both replicas — at connect and at resume
// — and on a replica started afterwards (it loads the revocation from the
// table); a token issued since connects and resumes from before the
// disconnect; a token without iat is refused for her, and other users are
// not affected.
func TestDisconnectRevokesOldTokens(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	a := newEnv(t, envOpts{db: db})
	b := newEnv(t, envOpts{db: db, noSequencer: true})
	ctx := context.Background()
	before := time.Now().Add(-2 * time.Second)
	old := tokenIssued(t, "alice", "LEVEL_1", before)
	bob := tokenIssued(t, "bob", "LEVEL_1", before)
	ca, _, _ := a.connectWith(old, "")
	cb, _, _ := b.connectWith(old, "")
	a.emit(ev("task_event", 1, nil, []string{"LEVEL_1"}))
	ca.events(1, 5*time.Second)
	cb.events(1, 5*time.Second)

	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Disconnect(ctx, tx, []string{"alice"}, "role changed"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*wsClient{"a": ca, "b": cb} {
		if code, err := c.closed(10 * time.Second); code != CloseRevoked.Code {
			t.Fatalf("replica %s: closed with %d (%v), want 4003", name, code, err)
		}
	}
	late := newEnv(t, envOpts{db: db, noSequencer: true})
	for name, e := range map[string]*env{"a": a, "b": b, "started later": late} {
		for _, extra := range []string{"", "since=1", "since=0"} {
			if _, status, body := e.connectWith(old, extra); status != http.StatusUnauthorized || !strings.Contains(body, "token revoked") {
				t.Errorf("replica %s, old token, %q: %d %s, want 401 token revoked", name, extra, status, body)
			}
		}
		noIat := mintClaims(t, jwt.MapClaims{"sub": "alice", "role": "LEVEL_1", "exp": time.Now().Add(time.Hour).Unix()})
		if _, status, body := e.connectWith(noIat, ""); status != http.StatusUnauthorized || !strings.Contains(body, "without iat") {
			t.Errorf("replica %s, token without iat: %d %s", name, status, body)
		}
		// Bob was not revoked: his old token still works.
		if c, status, body := e.connectWith(bob, ""); c == nil {
			t.Errorf("replica %s, bob: %d %s", name, status, body)
		}
		// A token issued since (in the revocation's second or later)
		// resumes from before the disconnect, and is given the event.
		fresh := tokenIssued(t, "alice", "LEVEL_1", time.Now())
		c, status, body := e.connectWith(fresh, "since=0")
		if c == nil {
			t.Fatalf("replica %s, fresh token: %d %s", name, status, body)
		}
		if f := c.events(1, 5*time.Second)[0]; f.Seq != 1 {
			t.Fatalf("replica %s: resumed with %+v", name, f)
		}
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox.revocations WHERE user_id = 'alice'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("revocations for alice: %d (%v)", n, err)
	}
}

// A replica that reaches a disconnect late does not cut a session opened
// with a token issued after it, and does cut one opened before.
func TestLateDisconnectSparesFreshTokens(t *testing.T) {
	t.Parallel()
	store := memstore.New("e1")
	h, srv := newMemHub(t, store, Config{})
	dial := func(tok string) *wsClient {
		t.Helper()
		conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws/connect?token="+url.QueryEscape(tok), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		c := &wsClient{t: t, conn: conn, frames: make(chan frame, 100), done: make(chan struct{})}
		go c.readLoop()
		if f := c.next(5 * time.Second); f.Type != TypeWelcome {
			t.Fatalf("first frame %+v", f)
		}
		return c
	}
	revokedAt := time.Now().Add(-10 * time.Second)
	stale := dial(tokenIssued(t, "alice", "LEVEL_1", revokedAt.Add(-5*time.Second)))
	fresh := dial(tokenIssued(t, "alice", "LEVEL_1", revokedAt.Add(5*time.Second)))
	payload, _ := json.Marshal(map[string]any{"reason": "role changed", "revoked_at": revokedAt.Unix()})
	evs := store.Append(relay.Event{Topic: TopicDisconnect, Payload: payload, Users: []string{"alice"}, Roles: []string{}, CreatedAt: time.Now()},
		relay.Event{Topic: "task_event", Payload: json.RawMessage(`{"after":true}`), CreatedAt: time.Now()})
	if err := h.Dispatch(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	if code, err := stale.closed(5 * time.Second); code != CloseRevoked.Code {
		t.Fatalf("stale session closed with %d (%v), want 4003", code, err)
	}
	if f := fresh.events(1, 5*time.Second)[0]; f.Seq != 2 {
		t.Fatalf("fresh session got %+v, want the event after the disconnect", f)
	}
}

// Claims of the wrong JSON type, and lifetimes over JWT_MAX_TTL, are
// refused with a reason; the limits themselves pass.
func TestTokenTypesAndLifetime(t *testing.T) {
	t.Parallel()
	auth, err := NewAuthenticator(t.Context(), AuthConfig{SecretKey: testSecret, RequireExp: true, MaxTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, c := range []struct {
		name   string
		claims jwt.MapClaims
		want   string // "" = accepted
	}{
		{"exp as a string", jwt.MapClaims{"sub": "u", "exp": fmt.Sprint(now.Add(time.Hour).Unix())}, "claim exp is not a number"},
		{"iat as a string", jwt.MapClaims{"sub": "u", "iat": fmt.Sprint(now.Unix()), "exp": now.Add(time.Hour).Unix()}, "claim iat is not a number"},
		{"nbf as a bool", jwt.MapClaims{"sub": "u", "nbf": true, "exp": now.Add(time.Hour).Unix()}, "claim nbf is not a number"},
		{"sub as a number", jwt.MapClaims{"sub": 42, "exp": now.Add(time.Hour).Unix()}, "claim sub is not a string"},
		{"role as an array", jwt.MapClaims{"sub": "u", "role": []string{"A"}, "exp": now.Add(time.Hour).Unix()}, "claim role is not a string"},
		{"roles as a string", jwt.MapClaims{"sub": "u", "roles": "A", "exp": now.Add(time.Hour).Unix()}, "claim roles is not an array"},
		{"exp in 9e18 seconds", jwt.MapClaims{"sub": "u", "exp": 9e18}, "lifetime (exp − now)"},
		{"exp − iat of 25 h", jwt.MapClaims{"sub": "u", "iat": now.Unix(), "exp": now.Add(25 * time.Hour).Unix()}, "lifetime (exp − iat)"},
		{"exp − iat of 24 h", jwt.MapClaims{"sub": "u", "iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix()}, ""},
		{"no iat, exp in 23 h", jwt.MapClaims{"sub": "u", "exp": now.Add(23 * time.Hour).Unix()}, ""},
		{"roles as an array", jwt.MapClaims{"sub": "u", "roles": []string{"A", "B"}, "exp": now.Add(time.Hour).Unix()}, ""},
	} {
		_, err := auth.Validate(context.Background(), mintClaims(t, c.claims))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
	}
}
