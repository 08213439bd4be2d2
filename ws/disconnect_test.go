package ws

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/grupogad/outboxd/outbox"
)

// outbox.disconnect in the middle of a stream: a live session and one
// catching up from the table each get every event before it, then 4003
// with the reason, and nothing after; another user goes on.
func TestDisconnectAfterEarlierEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	live := e.connect("", "u1", "LEVEL_1")
	other := e.connect("", "u2", "LEVEL_1")
	var evs []outbox.Event
	pad := strings.Repeat("x", 2000) // 600 KB in all: more than the socket buffers hold
	for i := range 300 {
		evs = append(evs, outbox.Event{Topic: "task_event", Data: map[string]any{"n": i, "pad": pad}, Roles: []string{"LEVEL_1"}})
	}
	e.emit(evs...)
	waitFor(t, 10*time.Second, "head 300", func() bool { return e.hub.Head() == 300 })
	// A second session of u1 resumes from the start and catches up from the
	// table (the recent frames dropped), reading nothing yet: it is behind
	// when the disconnect comes.
	e.hub.recent.reset()
	resumed, _, err := e.dial("token="+url.QueryEscape(e.token("u1", "LEVEL_1"))+"&since=0", dialOpts{noReader: true, rcvBuf: 4096})
	if err != nil {
		t.Fatal(err)
	}
	// It is still catching up (its socket is full): find it in the hub.
	var behind *client
	waitFor(t, 10*time.Second, "the resumed session to be stuck in catch-up", func() bool {
		e.hub.mu.RLock()
		defer e.hub.mu.RUnlock()
		for c := range e.hub.routes.byUser["u1"] {
			if c.hasSince {
				behind = c
			}
		}
		if behind == nil {
			return false
		}
		behind.mu.Lock()
		defer behind.mu.Unlock()
		return behind.state == stateCatchUp && behind.cursor > 0 && behind.cursor < 300
	})
	tx, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE outbox.relay_state SET last_seq = last_seq`); err != nil { // the app's own change, here a no-op
		t.Fatal(err)
	}
	if err := outbox.Disconnect(ctx, tx, []string{"u1"}, "role changed"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	e.emit(ev("task_event", 301, nil, []string{"LEVEL_1"}))
	waitFor(t, 10*time.Second, "head 302", func() bool { return e.hub.Head() == 302 })
	go resumed.readLoop()
	if f := resumed.next(5 * time.Second); f.Type != TypeWelcome {
		t.Fatalf("first frame %+v", f)
	}
	for name, cl := range map[string]*wsClient{"live": live, "resumed": resumed} {
		fs := cl.events(300, 10*time.Second)
		if fs[0].Seq != 1 || fs[299].Seq != 300 {
			t.Fatalf("%s: events %d..%d", name, fs[0].Seq, fs[299].Seq)
		}
		code, err := cl.closed(10 * time.Second)
		if code != CloseRevoked.Code || !strings.Contains(err.Error(), "role changed") {
			t.Fatalf("%s: closed %d (%v), want 4003 role changed", name, code, err)
		}
		for {
			select {
			case f := <-cl.frames:
				if f.Seq > 0 {
					t.Fatalf("%s: got seq %d after the disconnect", name, f.Seq)
				}
				continue
			default:
			}
			break
		}
	}
	if fs := other.events(301, 10*time.Second); fs[300].Seq != 302 {
		t.Fatalf("the other user's last event is %d, want 302 (the disconnect row is never a frame)", fs[300].Seq)
	}
	// Reserved topics are refused to producers.
	if _, err := e.db.Pool.Exec(ctx, `SELECT outbox.emit('outboxd.disconnect', '{}', ARRAY['u2'])`); err == nil {
		t.Fatal("a producer emitted a reserved topic")
	}
	if err := outbox.Disconnect(ctx, e.db.Pool, nil, "x"); err == nil {
		t.Fatal("Disconnect of nobody accepted")
	}
}
