package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
)

// presenceFrame is a presence event as a client receives it.
type presenceFrame struct {
	Type string `json:"type"`
	Seq  int64  `json:"seq"`
	Data struct {
		UserID string   `json:"user_id"`
		Online bool     `json:"online"`
		Roles  []string `json:"roles"`
	} `json:"data"`
}

// presenceWatcher reads a session's frames and keeps its presence events.
type presenceWatcher struct {
	frames chan presenceFrame
	errs   chan error
}

func watchPresence(t *testing.T, conn *websocket.Conn) *presenceWatcher {
	w := &presenceWatcher{frames: make(chan presenceFrame, 1000), errs: make(chan error, 1)}
	go func() {
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				w.errs <- err
				return
			}
			var f presenceFrame
			if json.Unmarshal(b, &f) == nil && f.Type == "presence" {
				w.frames <- f
			}
		}
	}()
	return w
}

// next returns the next presence event within d.
func (w *presenceWatcher) next(t *testing.T, d time.Duration) presenceFrame {
	t.Helper()
	select {
	case f := <-w.frames:
		return f
	case err := <-w.errs:
		t.Fatalf("watcher's session ended: %v", err)
	case <-time.After(d):
		t.Fatalf("no presence event within %s", d)
	}
	return presenceFrame{}
}

// noneSoFar checks that no presence event has arrived yet.
func (w *presenceWatcher) noneSoFar(t *testing.T) {
	t.Helper()
	select {
	case f := <-w.frames:
		t.Fatalf("unexpected presence event %+v", f)
	default:
	}
}

func onlineSessions(t *testing.T, db *dbtest.DB) map[string]int {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT user_id, sessions FROM outbox.online_users`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var u string
		var n int
		if err := rows.Scan(&u, &n); err != nil {
			t.Fatal(err)
		}
		out[u] = n
	}
	return out
}

// Three replicas on one database: the view counts sessions across them,
// online/offline events reach PRESENCE_ROLES only, once per transition; a
// replica killed with -9 is swept by a survivor within PRESENCE_TTL plus
// one interval; a graceful stop writes no offline event for a user who
// reconnects elsewhere before the TTL.
func TestPresenceAcrossReplicas(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	const ttl, interval = 3 * time.Second, 250 * time.Millisecond
	env := []string{"PRESENCE=true", "PRESENCE_ROLES=despacho,jefe", "PRESENCE_TTL=" + ttl.String(), "PRESENCE_INTERVAL=" + interval.String()}
	a, b, c := startOutboxd(t, db, env...), startOutboxd(t, db, env...), startOutboxd(t, db, env...)

	watchConn, _ := dialAs(t, c, "central", "despacho")
	watch := watchPresence(t, watchConn)
	// An operator without a presence role: counted, but sent no presence
	// events (checked at the end).
	plain, _ := dialAs(t, c, "mirón", "operador")

	if got := watch.next(t, 10*time.Second); got.Data.UserID != "central" || !got.Data.Online {
		t.Fatalf("first event %+v; want the watcher itself online", got)
	}
	if got := watch.next(t, 10*time.Second); got.Data.UserID != "mirón" || !got.Data.Online || !slices.Equal(got.Data.Roles, []string{"operador"}) {
		t.Fatalf("event %+v; want mirón online as operador", got)
	}

	dialAs(t, a, "alice", "operador")
	dialAs(t, b, "alice", "operador")
	dialAs(t, a, "bob", "efectivo")
	seen := map[string]bool{}
	for range 2 {
		f := watch.next(t, 10*time.Second)
		if !f.Data.Online || seen[f.Data.UserID] {
			t.Fatalf("event %+v after %v; want alice and bob online once each", f, seen)
		}
		seen[f.Data.UserID] = true
	}
	if !seen["alice"] || !seen["bob"] {
		t.Fatalf("online events for %v; want alice and bob", seen)
	}
	eventually(t, 10*time.Second, func() bool {
		s := onlineSessions(t, db)
		return s["alice"] == 2 && s["bob"] == 1 && s["central"] == 1 && s["mirón"] == 1
	}, func() string { return fmt.Sprint(onlineSessions(t, db)) })
	watch.noneSoFar(t) // alice's second session, on another replica: no event

	// kill -9 of a: bob's only session goes; alice keeps b's.
	killed := time.Now()
	a.Kill()
	f := watch.next(t, ttl+interval+10*time.Second)
	took := time.Since(killed)
	if f.Data.UserID != "bob" || f.Data.Online || !slices.Equal(f.Data.Roles, []string{"efectivo"}) {
		t.Fatalf("event %+v; want bob offline as efectivo", f)
	}
	t.Logf("bob's offline event %s after kill -9 (PRESENCE_TTL %s + interval %s)", took.Round(time.Millisecond), ttl, interval)
	// The bound, with room for a loaded host to relay the event: the sweep
	// itself is due by TTL + one interval after the last heartbeat.
	if took > ttl+interval+2*time.Second {
		t.Fatalf("offline event %s after kill -9; want within PRESENCE_TTL + PRESENCE_INTERVAL (+2 s to deliver)", took)
	}
	if s := onlineSessions(t, db); s["alice"] != 1 || s["bob"] != 0 {
		t.Fatalf("online_users after the sweep: %v", s)
	}

	// Graceful stop of b; alice reconnects to c before the TTL.
	if err := b.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.Wait(); err != nil {
		t.Fatalf("b's graceful stop: %v", err)
	}
	dialAs(t, c, "alice", "operador")
	eventually(t, 10*time.Second, func() bool { return onlineSessions(t, db)["alice"] == 2 },
		func() string { return fmt.Sprint(onlineSessions(t, db)) }) // b's row (until swept) and c's
	// b is swept after the TTL: alice stays online, and no event is written.
	eventually(t, ttl+interval+10*time.Second, func() bool {
		return db.Int64(t, `SELECT count(*) FROM outbox.presence_replicas`) == 1
	}, func() string { return "b's replica row is not swept" })
	if s := onlineSessions(t, db); s["alice"] != 1 {
		t.Fatalf("online_users after b's sweep: %v", s)
	}
	if n := db.Int64(t, `SELECT count(*) FROM outbox.events WHERE topic = 'presence' AND payload->>'user_id' = 'alice'`); n != 1 {
		t.Fatalf("%d presence events for alice; want only her first online event", n)
	}
	// Every presence row is targeted at PRESENCE_ROLES, and mirón (an
	// operador) got none of them.
	if n := db.Int64(t, `SELECT count(*) FROM outbox.events WHERE topic = 'presence' AND target_roles <> '{despacho,jefe}'`); n != 0 {
		t.Fatalf("%d presence events targeted elsewhere", n)
	}
	// c routed every presence event to its recipients before the watcher
	// read the last one; the pong comes after whatever was routed to mirón.
	if err := plain.WriteJSON(map[string]string{"type": "ping"}); err != nil {
		t.Fatal(err)
	}
	for {
		m := readFrame(t, plain)
		if m["type"] == "presence" {
			t.Fatalf("operador got a presence event: %v", m)
		}
		if m["type"] == "pong" {
			break
		}
	}
}
