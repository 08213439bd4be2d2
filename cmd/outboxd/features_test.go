package main

import (
	"context"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/outbox"
)

// outbox.disconnect across replicas: two sessions of u1, one on each of two
// replicas, each get the event committed before the disconnect and then
// 4003; u2 is untouched; the event committed after it, in another
// transaction, reaches u2 and not u1's closed sessions.
func TestDisconnectOnEveryReplica(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	a := startOutboxd(t, db)
	b := startOutboxd(t, db)
	read := func(conn *websocket.Conn) (map[string]any, error) {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		var m map[string]any
		err := conn.ReadJSON(&m)
		return m, err
	}
	u1a, _ := dialAs(t, a, "u1", "LEVEL_1")
	u1b, _ := dialAs(t, b, "u1", "LEVEL_1")
	u2, _ := dialAs(t, a, "u2", "LEVEL_1")
	for _, c := range []*websocket.Conn{u1a, u1b, u2} {
		if m, err := read(c); err != nil || m["type"] != "welcome" {
			t.Fatalf("welcome: %v %v", m, err)
		}
	}
	ctx := context.Background()
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": "before"}', NULL, ARRAY['LEVEL_1'])`)
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Disconnect(ctx, tx, []string{"u1"}, "role changed to LEVEL_2"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": "after"}', NULL, ARRAY['LEVEL_1'])`)

	for name, c := range map[string]*websocket.Conn{"u1 on replica a": u1a, "u1 on replica b": u1b} {
		m, err := read(c)
		if err != nil || m["seq"] != 1.0 {
			t.Fatalf("%s: first %v %v, want the event before the disconnect", name, m, err)
		}
		m, err = read(c)
		ce, ok := err.(*websocket.CloseError)
		if !ok || ce.Code != 4003 || ce.Text != "role changed to LEVEL_2" {
			t.Fatalf("%s: then %v %v, want close 4003", name, m, err)
		}
	}
	for _, want := range []float64{1, 3} {
		if m, err := read(u2); err != nil || m["seq"] != want {
			t.Fatalf("u2: %v %v, want seq %v", m, err, want)
		}
	}
}

// RELAY_WAKEUP=idle end to end: outboxd creates the idle trigger (and no
// other) at start, its sequencer holds the wake-up key while rows keep
// coming (producers then do not notify), and every row reaches a client in
// order. Under RELAY_WAKEUP=poll the key is never taken, so the wait below
// cannot pass by chance.
func TestRelayWakeupIdle(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := startOutboxd(t, db, "RELAY_WAKEUP=idle")
	conn, _ := dialAs(t, p, "op1", "LEVEL_1")
	if m := readFrame(t, conn); m["type"] != "welcome" {
		t.Fatalf("first frame %v", m)
	}
	if n := db.Int64(t, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'outbox.events'::regclass AND tgname LIKE 'events_notify_pending%'`); n != 1 {
		t.Fatalf("%d wake-up triggers, want 1", n)
	}
	if n := db.Int64(t, `SELECT count(*) FROM pg_trigger WHERE tgname = 'events_notify_pending_if_idle'`); n != 1 {
		t.Fatal("the idle trigger is missing")
	}
	held := func() bool {
		return db.Int64(t, `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
			WHERE l.locktype = 'advisory' AND l.classid = 1869968482 AND l.objid = 2003919717 AND l.granted
			AND a.application_name LIKE 'outboxd%' AND a.datname = current_database()`) == 1
	}
	ctx := context.Background()
	sent := 0
	deadline := time.Now().Add(20 * time.Second)
	for !held() {
		if time.Now().After(deadline) || sent >= 20000 {
			t.Fatalf("the sequencer never held the wake-up key while %d rows came", sent)
		}
		sent++
		if _, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "task_event", Data: map[string]int{"n": sent}, Broadcast: true}); err != nil {
			t.Fatal(err)
		}
	}
	for want := 1; want <= sent; want++ {
		if m := readFrame(t, conn); m["seq"] != float64(want) {
			t.Fatalf("frame %v, want seq %d", m, want)
		}
	}
}
