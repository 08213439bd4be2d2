package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/pgcluster"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/stream"
	"github.com/grupogad/outboxd/ws"
)

// readsOf is /ws/stats relay.reads of p.
func readsOf(t *testing.T, p *proctest.Process) stream.ReadsStatus {
	t.Helper()
	reads := wsStats(t, p).Relay.Reads
	if reads == nil {
		t.Fatal("/ws/stats has no relay.reads with READ_DATABASE_URL set")
	}
	return *reads
}

func waitSource(t *testing.T, source string, ps ...*proctest.Process) {
	t.Helper()
	for _, p := range ps {
		eventually(t, 30*time.Second, func() bool { return readsOf(t, p).Source == source },
			func() string { return fmt.Sprintf("%s: reads %+v, want source %s", p.Addr, readsOf(t, p), source) })
	}
}

// READ_DATABASE_URL against a real streaming standby that the test
// creates (a primary and a standby of its own): two replicas read events
// there — the tailer of the one that does not sequence, and replays —
// and every client gets every event once, in order, while the standby
// keeps up, while its replay is paused (past READ_MAX_LAG reads go to the
// primary), once it resumes, while it is stopped, and once it is back.
//
// Serial: it runs clusters of its own.
func TestReadsFromAStandby(t *testing.T) {
	primary := pgcluster.StartPrimary(t)
	standby := primary.StartStandby()
	env := []string{"DATABASE_URL=" + primary.URL(""), "READ_DATABASE_URL=" + standby.URL(""),
		"READ_MAX_LAG=500ms", "LOG_LEVEL=info"}
	a := proctest.Start(t, binary, proctest.FreeAddr(t), env...)
	b := proctest.Start(t, binary, proctest.FreeAddr(t), env...)
	waitSource(t, "standby", a, b)

	pool, err := pgxpool.New(context.Background(), primary.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var emitted int64
	emit := func(n int) {
		t.Helper()
		if _, err := pool.Exec(context.Background(),
			`SELECT outbox.emit('task_event', jsonb_build_object('n', g)) FROM generate_series(1, $1) g`, n); err != nil {
			t.Fatal(err)
		}
		emitted += int64(n)
	}
	tok, err := ws.MintHS256(testSecret, "op", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{a.Addr, b.Addr}
	var followers []*proctest.Follower
	all := func() {
		t.Helper()
		for _, f := range followers {
			f.WaitFor(emitted, time.Minute)
			f.CheckExactly(emitted)
		}
	}

	// Caught up from the standby: events committed before the clients
	// come, replayed on both replicas, then followed live.
	emit(300)
	followers = append(followers, proctest.FollowSince(t, tok, addrs, 0, 0), proctest.FollowSince(t, tok, addrs, 1, 0))
	all()
	emit(200)
	all()
	ra, rb := readsOf(t, a), readsOf(t, b)
	if ra.StandbyPages+rb.StandbyPages == 0 {
		t.Fatalf("no page was read on the standby: %+v %+v", ra, rb)
	}

	// Replay paused: the standby falls behind, reads go to the primary
	// past READ_MAX_LAG, and a client catching up meanwhile gets it all.
	standby.Exec("", `SELECT pg_wal_replay_pause()`)
	emit(200)
	followers = append(followers, proctest.FollowSince(t, tok, addrs, 1, 0))
	all()
	waitSource(t, "primary", a, b)
	if rb := readsOf(t, b); rb.LagEvents == 0 || rb.LagSeconds == 0 {
		t.Fatalf("a paused standby shows no lag: %+v", rb)
	}
	emit(100)
	all()

	// Replay resumed: back to the standby.
	standby.Exec("", `SELECT pg_wal_replay_resume()`)
	waitSource(t, "standby", a, b)
	emit(100)
	followers = append(followers, proctest.FollowSince(t, tok, addrs, 0, 0))
	all()

	// Standby stopped: the primary serves, nothing is lost.
	standby.Stop()
	emit(100)
	followers = append(followers, proctest.FollowSince(t, tok, addrs, 1, 0))
	all()
	waitSource(t, "primary", a, b)
	if rb := readsOf(t, b); rb.StandbyUp {
		t.Fatalf("a stopped standby is reported up: %+v", rb)
	}

	// And back.
	before := readsOf(t, b).StandbyPages + readsOf(t, a).StandbyPages
	standby.Start()
	waitSource(t, "standby", a, b)
	emit(100)
	followers = append(followers, proctest.FollowSince(t, tok, addrs, 1, 0))
	all()
	if after := readsOf(t, b).StandbyPages + readsOf(t, a).StandbyPages; after <= before {
		t.Fatalf("no page read on the standby once it was back (%d, then %d): %+v %+v", before, after, readsOf(t, a), readsOf(t, b))
	}

	// A replica drains at SIGTERM: its clients are closed with 1001 and
	// resume on the other (TestStopWithinCountsFromTheCall holds the
	// deadline to the signal, not to start-up).
	if err := b.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if log := b.Stderr.String(); strings.Contains(log, "shutdown incomplete") {
		t.Fatalf("replica b did not drain:\n%s", log)
	}
	emit(50)
	all()
	moved := 0
	for _, f := range followers {
		moved += f.Stats().Closes[websocket.CloseGoingAway]
	}
	if moved == 0 {
		t.Fatal("no client of replica b was closed with 1001")
	}
}
