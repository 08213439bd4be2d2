package chaos

import (
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/ws"
)

var binary string

func TestMain(m *testing.M) { os.Exit(proctest.RunWithBinary(m, &binary)) }

func long() bool { return os.Getenv("OUTBOXD_CHAOS_LONG") == "1" }

func pick[T any](short, longer T) T {
	if long() {
		return longer
	}
	return short
}

func token(t *testing.T, sub string) string {
	t.Helper()
	tok, err := ws.MintHS256(proctest.SecretKey, sub, []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// producer commits n broadcast events in batches, from its own pool,
// retrying a batch whose transaction failed (the database may be restarting).
type producer struct {
	done      chan struct{}
	committed int
	err       error
}

func produce(t *testing.T, url string, n, batch int, pause time.Duration) *producer {
	t.Helper()
	p := &producer{done: make(chan struct{})}
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		defer pool.Close()
		deadline := time.Now().Add(5 * time.Minute)
		for p.committed < n {
			k := min(batch, n-p.committed)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := pool.Exec(ctx, `INSERT INTO outbox.events (topic, payload)
				SELECT 'task_event', jsonb_build_object('n', $1::int + g) FROM generate_series(1, $2::int) g`, p.committed, k)
			cancel()
			if err != nil {
				if time.Now().After(deadline) {
					p.err = err
					return
				}
				pool.Reset()
				time.Sleep(100 * time.Millisecond)
				continue
			}
			p.committed += k
			time.Sleep(pause)
		}
	}()
	return p
}

func (p *producer) wait(t *testing.T) {
	t.Helper()
	<-p.done
	if p.err != nil {
		t.Fatalf("producer: %v", p.err)
	}
}

func assertGapFree(t *testing.T, db *dbtest.DB, want int64) {
	t.Helper()
	var n, distinct, hi, pending int64
	err := db.Pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0),
		count(*) FILTER (WHERE seq IS NULL) FROM outbox.events`).Scan(&n, &distinct, &hi, &pending)
	if err != nil {
		t.Fatal(err)
	}
	if n != want || distinct != want || hi != want || pending != 0 {
		t.Fatalf("table: %d rows, %d distinct seq, max %d, %d pending; want %d rows numbered 1..%[5]d", n, distinct, hi, pending, want)
	}
}

// Scenario 1: three replicas, one SIGKILLed and restarted every interval
// while events stream; clients reconnect to survivors with since.
func TestReplicasKilledAndRestarted(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	n := pick(6000, 20000)
	every := pick(time.Second, 2*time.Second)
	addrs := []string{proctest.FreeAddr(t), proctest.FreeAddr(t), proctest.FreeAddr(t)}
	env := []string{"DATABASE_URL=" + db.URL, "RELAY_BATCH_SIZE=200"}
	replicas := make([]*proctest.Process, len(addrs))
	for i, a := range addrs {
		replicas[i] = proctest.Start(t, binary, a, env...)
	}
	var followers []*proctest.Follower
	for i := range 6 {
		followers = append(followers, proctest.Follow(t, token(t, fmt.Sprintf("op%d", i)), addrs, i))
	}
	time.Sleep(200 * time.Millisecond) // followers connected
	prod := produce(t, db.URL, n, 10, 10*time.Millisecond)

	kills := 0
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			i := k % len(replicas)
			mu.Lock()
			replicas[i].Kill() // SIGKILL: no graceful anything
			replicas[i] = proctest.Start(t, binary, addrs[i], env...)
			kills++
			mu.Unlock()
		}
	})
	prod.wait(t)
	close(stop)
	wg.Wait()
	if kills < 2 {
		t.Fatalf("only %d kills during the stream", kills)
	}
	reconnects := 0
	for _, f := range followers {
		f.WaitFor(int64(n), 60*time.Second)
		reconnects += f.CheckExactly(int64(n)).Reconnects
	}
	if reconnects == 0 {
		t.Fatal("no follower ever reconnected: the kills did not hit anyone")
	}
	assertGapFree(t, db, int64(n))
	t.Logf("%d events, %d kills, %d reconnects across 6 followers", n, kills, reconnects)
}

// twoReplicas starts two outboxd on db and a follower on each (each moving
// to the other replica when its connection ends).
func twoReplicas(t *testing.T, db *dbtest.DB) (addrs []string, f1, f2 *proctest.Follower) {
	t.Helper()
	addrs = []string{proctest.FreeAddr(t), proctest.FreeAddr(t)}
	for _, a := range addrs {
		proctest.Start(t, binary, a, "DATABASE_URL="+db.URL)
	}
	f1 = proctest.Follow(t, token(t, "a"), addrs, 0)
	f2 = proctest.Follow(t, token(t, "b"), addrs, 1)
	time.Sleep(200 * time.Millisecond) // followers connected
	return addrs, f1, f2
}

func terminate(t *testing.T, db *dbtest.DB) int64 {
	t.Helper()
	admin, err := pgxpool.New(context.Background(), dbtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var k int64
	err = admin.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = $1 AND application_name LIKE 'outboxd%'`, db.Name).Scan(&k)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Scenario 3: pg_terminate_backend on every relay connection (sequencer,
// LISTEN, tailer, hub), repeatedly, while events stream.
func TestTerminateBackendsRepeatedly(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	n := pick(3000, 20000)
	_, f1, f2 := twoReplicas(t, db)
	prod := produce(t, db.URL, n, 10, 5*time.Millisecond)
	killed := int64(0)
	for {
		select {
		case <-prod.done:
		case <-time.After(300 * time.Millisecond):
			killed += terminate(t, db)
			continue
		}
		break
	}
	prod.wait(t)
	if killed == 0 {
		t.Fatal("no backend terminated")
	}
	// Recovery: after a last termination, a new event reaches both within 2 s.
	terminate(t, db)
	at := time.Now()
	db.Exec(t, `SELECT outbox.emit('system_event', '{"after": "termination"}')`)
	f1.WaitFor(int64(n+1), 10*time.Second)
	f2.WaitFor(int64(n+1), 10*time.Second)
	if took := time.Since(at); took > 2*time.Second {
		t.Fatalf("recovery took %s, want ≤ 2 s", took)
	}
	f1.CheckExactly(int64(n + 1))
	f2.CheckExactly(int64(n + 1))
	assertGapFree(t, db, int64(n+1))
	t.Logf("%d backends terminated", killed)
}

// Scenario 4: a network cut between one replica and PostgreSQL. The other
// replica carries on meanwhile; the cut one catches up after; no seq is
// issued twice.
func TestNetworkCutOneReplica(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	proxy := proctest.NewProxy(t, "127.0.0.1:5432")
	viaProxy := fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable&idle_in_transaction_session_timeout=2000", proxy.Addr, db.Name)
	a := proctest.Start(t, binary, proctest.FreeAddr(t), "DATABASE_URL="+viaProxy, "RELAY_BATCH_SIZE=20")
	b := proctest.Start(t, binary, proctest.FreeAddr(t), "DATABASE_URL="+db.URL, "RELAY_BATCH_SIZE=20")
	fa := proctest.Follow(t, token(t, "on-a"), []string{a.Addr}, 0)
	fb := proctest.Follow(t, token(t, "on-b"), []string{b.Addr}, 0)
	time.Sleep(200 * time.Millisecond)

	// Both replicas sequence a backlog in small batches; cut A mid-stream.
	const before, during = 2000, 2000
	prod := produce(t, db.URL, before, 200, 0)
	prod.wait(t)
	time.Sleep(20 * time.Millisecond)
	proxy.Cut()
	cutAt := time.Now()
	prod = produce(t, db.URL, during, 20, 2*time.Millisecond)
	prod.wait(t)
	fb.WaitFor(before+during, 30*time.Second)
	if fa.Last() >= before+during {
		t.Fatal("the cut replica delivered everything while cut: the proxy did not cut")
	}
	t.Logf("B delivered all %d events %s after the cut; A was at seq %d", before+during, time.Since(cutAt).Round(time.Millisecond), fa.Last())
	proxy.Restore()
	fa.WaitFor(before+during, 60*time.Second)
	fa.CheckExactly(before + during)
	fb.CheckExactly(before + during)
	assertGapFree(t, db, before+during)
}

// Scenario 6: a burst of rows committed at once drains, in order, with the
// sidecar's memory bounded.
func TestBurstDrainsWithBoundedMemory(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	n := pick(200000, 1000000)
	p := proctest.Start(t, binary, proctest.FreeAddr(t), "DATABASE_URL="+db.URL, "LOG_LEVEL=info")
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(p.Stderr.String())
		}
	})
	f := proctest.Follow(t, token(t, "reader"), []string{p.Addr}, 0)
	time.Sleep(200 * time.Millisecond)
	db.Exec(t, `INSERT INTO outbox.events (topic, payload)
		SELECT 'task_event', jsonb_build_object('n', g, 'pad', repeat('x', 100)) FROM generate_series(1, $1::int) g`, n)
	f.WaitFor(int64(n), pick(90*time.Second, 5*time.Minute))
	// A reader slower than the burst is behind by more than REPLAY_MAX for a
	// while, but gains on the head: it is not cut.
	if s := f.CheckExactly(int64(n)); s.Reconnects != 0 {
		t.Fatalf("the reader was disconnected %d times (%v)", s.Reconnects, s.Closes)
	}
	peak, err := p.RSSPeakKiB()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events drained; outboxd peak RSS %d MiB", n, peak>>10)
	if peak > 256<<10 {
		t.Fatalf("outboxd peak RSS %d MiB for a %d-row burst: memory is not bounded", peak>>10, n)
	}
	_ = p.Signal(syscall.SIGTERM)
	if err := p.Wait(); err != nil {
		t.Fatalf("exit after burst: %v", err)
	}
}
