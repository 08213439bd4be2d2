package ws

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/memstore"
	"github.com/grupogad/outboxd/relay"
)

// newMemHub starts a hub over store, served by a test server; both stop
// with the test.
func newMemHub(t *testing.T, store *memstore.Store, cfg Config) (*Hub, *httptest.Server) {
	t.Helper()
	auth, err := NewAuthenticator(t.Context(), AuthConfig{SecretKey: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	h := New(auth, store, cfg)
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.Stop(ctx)
		srv.Close()
	})
	return h, srv
}

// The hub's resume and catch-up logic against the in-memory store: no
// PostgreSQL, the same frames.
func TestHubAgainstMemoryStore(t *testing.T) {
	t.Parallel()
	store := memstore.New("e1")
	h, srv := newMemHub(t, store, Config{SendBuffer: 8})
	mk := func(topic string, users, roles []string) relay.Event {
		return relay.Event{Topic: topic, Payload: json.RawMessage(`{"x":1}`), Users: users, Roles: roles, CreatedAt: time.Now()}
	}
	// 300 events, more than a catch-up page: every third for u1, one for
	// nobody, the rest for another user.
	var evs []relay.Event
	for i := range 300 {
		switch {
		case i == 7:
			evs = append(evs, mk("nobody", []string{}, nil))
		case i%3 == 0:
			evs = append(evs, mk("mine", []string{"u1"}, nil))
		default:
			evs = append(evs, mk("other", []string{"u2"}, nil))
		}
	}
	if err := h.Dispatch(context.Background(), store.Append(evs...)); err != nil {
		t.Fatal(err)
	}
	h.recent.reset() // replay from the store, not from memory

	dial := func(query string) *websocket.Conn {
		t.Helper()
		tok, _ := MintHS256(testSecret, "u1", nil, time.Hour)
		conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws/connect?token="+url.QueryEscape(tok)+"&"+query, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	read := func(conn *websocket.Conn) frame {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		var f frame
		if err := conn.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	conn := dial("since=0&epoch=e1")
	if f := read(conn); f.Type != TypeWelcome {
		t.Fatalf("first frame %+v", f)
	}
	for want := int64(1); want <= 300; want += 3 {
		if f := read(conn); f.Type != "mine" || f.Seq != want {
			t.Fatalf("replayed %s #%d, want mine #%d", f.Type, f.Seq, want)
		}
	}
	// Another epoch: resync, nothing replayed.
	other := dial("since=0&epoch=e0")
	read(other) // welcome
	var d ResyncData
	if f := read(other); f.Type != TypeResyncRequired || json.Unmarshal(f.Data, &d) != nil || d.Reason != ResyncEpoch {
		t.Fatalf("frame %+v, want resync_required (epoch)", f)
	}
	// Past retention.
	store.DeleteThrough(100)
	old := dial("since=50")
	read(old)
	if f := read(old); f.Type != TypeResyncRequired || json.Unmarshal(f.Data, &d) != nil || d.Reason != ResyncRetention || d.OldestSeq != 101 {
		t.Fatalf("frame %+v (%+v), want resync_required (retention, 101)", f, d)
	}
}

// Both stores are ws.Stores: the relay's over PostgreSQL, memstore's in
// memory. (Here, in a test: ws itself does not import the relay.)
var (
	_ Store = (*relay.Store)(nil)
	_ Store = (*memstore.Store)(nil)
)
