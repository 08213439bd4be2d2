package server

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/testsignal"
	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/ws"
)

const testSecret = "server-test-secret-0123456789"

// The composition root end to end, in process: New, Start and Serve on a
// real database and sockets give a client the events committed, resumed
// from since; Stop closes it with 1001 and ends every goroutine (goleak).
func TestServerServesAndStops(t *testing.T) {
	db := dbtest.NewEmpty(t) // AUTO_MIGRATE creates the schema
	cfg, err := LoadConfig(map[string]string{"DATABASE_URL": db.URL, "SECRET_KEY": testSecret, "LISTEN_ADDR": "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	srv, err := New(ctx, cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := srv.Serve(ln, nil)
	base := "http://" + ln.Addr().String()
	testsignal.Eventually(t, 20*time.Second, func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, func() string { return "not ready" })
	if _, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "task_event", Data: map[string]int{"n": 1}, Roles: []string{"LEVEL_1"}}); err != nil {
		t.Fatal(err)
	}
	tok, err := ws.MintHS256(testSecret, "op1", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/ws/connect?since=0&token="+url.QueryEscape(tok), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	read := func() map[string]any {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, b, err := conn.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return m
	}
	if f := read(); f["type"] != "welcome" {
		t.Fatalf("first frame %v", f)
	}
	if f := read(); f["type"] != "task_event" || f["seq"] != float64(1) {
		t.Fatalf("resumed frame %v", f)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop(sctx) }()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = conn.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("closed with %v, want 1001", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}
	select {
	case err := <-served:
		t.Fatalf("serve: %v", err)
	default:
	}
}
