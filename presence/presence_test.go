package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/testsignal"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// event is one presence row of outbox.events, in id order.
type event struct {
	Payload
	Targets []string
}

func presenceEvents(t *testing.T, db *dbtest.DB) []event {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(),
		`SELECT payload, coalesce(target_users, '{}'), target_roles FROM outbox.events WHERE topic = 'presence' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []event
	for rows.Next() {
		var raw []byte
		var users, roles []string
		if err := rows.Scan(&raw, &users, &roles); err != nil {
			t.Fatal(err)
		}
		var e event
		if err := json.Unmarshal(raw, &e.Payload); err != nil {
			t.Fatal(err)
		}
		if len(users) != 0 {
			t.Fatalf("presence event targets users %v", users)
		}
		e.Targets = roles
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

type online struct {
	User     string
	Roles    []string
	Sessions int
}

func onlineUsers(t *testing.T, db *dbtest.DB) []online {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT user_id, roles, sessions FROM outbox.online_users ORDER BY user_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []online
	for rows.Next() {
		var o online
		if err := rows.Scan(&o.User, &o.Roles, &o.Sessions); err != nil {
			t.Fatal(err)
		}
		out = append(out, o)
	}
	return out
}

func flush(t *testing.T, rs ...*Recorder) {
	t.Helper()
	for _, r := range rs {
		if err := r.Flush(context.Background()); err != nil {
			t.Fatalf("flush %s: %v", r.ReplicaID(), err)
		}
	}
}

func newRecorder(db *dbtest.DB, id string, roles ...string) *Recorder {
	return New(db.Pool, Config{ReplicaID: id, Roles: roles, TTL: time.Hour})
}

func TestViewCountsSessionsOverReplicas(t *testing.T) {
	db := dbtest.New(t)
	a, b, c := newRecorder(db, "a", "despacho"), newRecorder(db, "b", "despacho"), newRecorder(db, "c", "despacho")
	a.SessionOpened("alice", []string{"operador"})
	a.SessionOpened("alice", []string{"operador"})
	b.SessionOpened("alice", []string{"operador", "jefe"})
	c.SessionOpened("bob", []string{"efectivo"})
	b.SessionOpened("carol", nil)
	flush(t, a, b, c)
	got := onlineUsers(t, db)
	want := []online{
		{"alice", []string{"jefe", "operador"}, 3},
		{"bob", []string{"efectivo"}, 1},
		{"carol", []string{}, 1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("online_users = %v, want %v", got, want)
	}
	ev := presenceEvents(t, db)
	if len(ev) != 3 {
		t.Fatalf("events = %+v, want one online event per user", ev)
	}
	for _, e := range ev {
		if !e.Online || !slices.Equal(e.Targets, []string{"despacho"}) {
			t.Fatalf("event %+v: want online, targeted at despacho", e)
		}
	}
	// A session closing that is not the user's last: no event.
	a.SessionClosed("alice", []string{"operador"})
	a.SessionClosed("alice", []string{"operador"})
	flush(t, a, b, c)
	if n := len(presenceEvents(t, db)); n != 3 {
		t.Fatalf("%d events after alice's other sessions closed; want still 3", n)
	}
	if got := onlineUsers(t, db); got[0].Sessions != 1 || !slices.Equal(got[0].Roles, []string{"jefe", "operador"}) {
		t.Fatalf("alice after a's sessions closed: %+v", got[0])
	}
	// The last one: offline, with the roles last announced.
	b.SessionClosed("alice", []string{"operador", "jefe"})
	flush(t, b)
	ev = presenceEvents(t, db)
	if len(ev) != 4 || ev[3].UserID != "alice" || ev[3].Online || !slices.Equal(ev[3].Roles, []string{"jefe", "operador"}) {
		t.Fatalf("events = %+v; want alice offline last, roles [jefe operador]", ev)
	}
	if got := onlineUsers(t, db); len(got) != 2 {
		t.Fatalf("online_users = %v, want bob and carol", got)
	}
}

func TestShortSessionWithinAnIntervalWritesNothing(t *testing.T) {
	db := dbtest.New(t)
	a := newRecorder(db, "a", "despacho")
	flush(t, a)
	a.SessionOpened("alice", []string{"operador"})
	a.SessionClosed("alice", []string{"operador"})
	flush(t, a)
	if ev := presenceEvents(t, db); len(ev) != 0 {
		t.Fatalf("events = %+v; want none", ev)
	}
}

func TestNoRolesNoEvents(t *testing.T) {
	db := dbtest.New(t)
	a := newRecorder(db, "a")
	a.SessionOpened("alice", []string{"operador"})
	flush(t, a)
	if got := onlineUsers(t, db); len(got) != 1 {
		t.Fatalf("online_users = %v", got)
	}
	a.SessionClosed("alice", []string{"operador"})
	flush(t, a)
	if ev := presenceEvents(t, db); len(ev) != 0 {
		t.Fatalf("events = %+v; want none with no PRESENCE_ROLES", ev)
	}
	if got := onlineUsers(t, db); len(got) != 0 {
		t.Fatalf("online_users = %v", got)
	}
}

// Two replicas closing one user's last sessions at the same moment:
// exactly one offline event (and one online event when both open).
func TestConcurrentLastCloseWritesOneEvent(t *testing.T) {
	db := dbtest.New(t)
	const rounds = 30
	a, b := newRecorder(db, "a", "despacho"), newRecorder(db, "b", "despacho")
	both := func() {
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		start := make(chan struct{})
		for _, r := range []*Recorder{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs <- r.Flush(context.Background())
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	for range rounds {
		for _, u := range []string{"alice", "bob", "carol"} {
			a.SessionOpened(u, []string{"operador"})
			b.SessionOpened(u, []string{"operador"})
		}
		both()
		for _, u := range []string{"carol", "alice", "bob"} {
			a.SessionClosed(u, []string{"operador"})
			b.SessionClosed(u, []string{"operador"})
		}
		both()
	}
	ev := presenceEvents(t, db)
	per := map[string][]bool{}
	for _, e := range ev {
		per[e.UserID] = append(per[e.UserID], e.Online)
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		got := per[u]
		if len(got) != 2*rounds {
			t.Fatalf("%s: %d events over %d rounds; want %d", u, len(got), rounds, 2*rounds)
		}
		for i, on := range got {
			if on != (i%2 == 0) {
				t.Fatalf("%s: event %d online=%v; want alternating online/offline: %v", u, i, on, got)
			}
		}
	}
}

func TestDeadReplicaIsSweptBySurvivor(t *testing.T) {
	db := dbtest.New(t)
	dead := newRecorder(db, "dead", "despacho")
	dead.SessionOpened("alice", []string{"operador"})
	dead.SessionOpened("bob", []string{"efectivo"})
	survivor := New(db.Pool, Config{ReplicaID: "survivor", Roles: []string{"despacho"}, TTL: 200 * time.Millisecond})
	survivor.SessionOpened("bob", []string{"efectivo"})
	flush(t, dead, survivor)
	// The survivor keeps its heartbeat; dead writes no more.
	testsignal.Eventually(t, 10*time.Second, func() bool {
		flush(t, survivor)
		n, err := survivor.Sweep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}, func() string { return "the survivor sweeps the dead replica" })
	ev := presenceEvents(t, db)
	if len(ev) != 3 || ev[2].UserID != "alice" || ev[2].Online {
		t.Fatalf("events = %+v; want alice's offline event (bob is still on the survivor)", ev)
	}
	if got := onlineUsers(t, db); len(got) != 1 || got[0].User != "bob" || got[0].Sessions != 1 {
		t.Fatalf("online_users = %v, want bob's one session", got)
	}
	if n := db.Int64(t, `SELECT count(*) FROM outbox.presence_replicas WHERE replica_id = 'dead'`); n != 0 {
		t.Fatal("the dead replica's row is left")
	}
	// Back from the dead: it finds its row gone and writes every session again.
	flush(t, dead)
	ev = presenceEvents(t, db)
	if len(ev) != 4 || ev[3].UserID != "alice" || !ev[3].Online {
		t.Fatalf("events = %+v; want alice online again", ev)
	}
	if got := onlineUsers(t, db); len(got) != 2 || got[1].Sessions != 2 {
		t.Fatalf("online_users = %v, want alice 1 and bob 2", got)
	}
}

func TestEmitRefusesThePresenceTopic(t *testing.T) {
	db := dbtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `SELECT outbox.emit('presence', '{"user_id":"x","online":true}')`); err == nil {
		t.Fatal("outbox.emit accepted topic presence")
	}
	if _, err := db.Pool.Exec(ctx, `SELECT outbox.emit_batch(ARRAY['a', 'presence'], ARRAY['{}'::jsonb, '{}'], NULL, NULL, NULL)`); err == nil {
		t.Fatal("outbox.emit_batch accepted topic presence")
	}
	if _, err := db.Pool.Exec(ctx, `SELECT outbox.emit('presence.x', '{}')`); err != nil {
		t.Fatalf("presence.x is an ordinary topic: %v", err)
	}
}

// A failed write leaves its changes to the next one.
func TestFailedWriteIsRetried(t *testing.T) {
	db := dbtest.New(t)
	a := newRecorder(db, "a", "despacho")
	a.SessionOpened("alice", []string{"operador"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.Flush(ctx); err == nil {
		t.Fatal("a flush with a cancelled context succeeded")
	}
	flush(t, a)
	if got := onlineUsers(t, db); len(got) != 1 {
		t.Fatalf("online_users = %v after the retry", got)
	}
}

// BenchmarkFlushConnectStorm: one replica's write after 5,000 users
// connected within one interval — "online": nobody was online, 5,000 flips
// and events; "takeover": the users are still online through another
// replica (a deploy's reconnect storm), no flips — and the write after
// they all left again.
func BenchmarkFlushConnectStorm(b *testing.B) {
	const n = 5000
	users := make([]string, n)
	for u := range users {
		users[u] = fmt.Sprintf("user-%d", u)
	}
	for _, takeover := range []bool{false, true} {
		name := map[bool]string{false: "online", true: "takeover"}[takeover]
		b.Run(name, func(b *testing.B) {
			db := dbtest.New(b)
			if takeover {
				old := newRecorder(db, "old", "despacho")
				for _, u := range users {
					old.SessionOpened(u, []string{"bench"})
				}
				if err := old.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			var took time.Duration
			for i := 0; b.Loop(); i++ {
				r := newRecorder(db, fmt.Sprintf("r%d", i), "despacho")
				for _, u := range users {
					r.SessionOpened(u, []string{"bench"})
				}
				start := time.Now()
				if err := r.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
				took += time.Since(start)
				for _, u := range users {
					r.SessionClosed(u, []string{"bench"})
				}
				if err := r.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "ms/connect-write")
		})
	}
}
