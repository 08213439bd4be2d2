package relay

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/outbox"
)

// The tailer's LISTEN connection goes half-open (no FIN, no RST, nothing
// forwarded): the listener's ping notices within seconds, a new connection
// LISTENs, and wake-ups work again. Nothing is lost.
func TestHalfOpenListenConnectionIsReplaced(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := proctest.NewProxy(t, u.Host)
	u.Host = proxy.Addr
	viaProxy, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer viaProxy.Close()

	seq := NewSequencer(db.Pool, SequencerConfig{PollInterval: 20 * time.Millisecond})
	col := newCollector()
	zero := int64(0)
	// No fallback poll to speak of: only notifications wake the tailer, so
	// a lost listener would show as an undelivered event.
	tail := NewTailer(viaProxy, col, TailerConfig{StartAfter: &zero, FallbackPoll: time.Hour,
		ListenPing: 300 * time.Millisecond, QueryTimeout: 2 * time.Second})
	tail.notifier.testSignals.listening.Init()
	for _, s := range []interface{ Start(context.Context) error }{seq, tail} {
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = tail.Stop(sctx)
		_ = seq.Stop(sctx)
	})
	waitSignal := func(what string) {
		t.Helper()
		t.Logf("waiting for the %s", what)
		tail.notifier.testSignals.listening.WaitOrTimeout(t)
	}
	emit := func(n int) {
		t.Helper()
		if _, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "task_event", Data: map[string]int{"n": n}, Broadcast: true}); err != nil {
			t.Fatal(err)
		}
	}
	waitSignal("first LISTEN")
	emit(1)
	col.waitFor(t, 10*time.Second, "event 1", func(e []Event) bool { return len(e) == 1 })

	proxy.FreezeExisting()
	waitSignal("LISTEN on a new connection after the old one went half-open")
	emit(2)
	emit(3)
	evs := col.waitFor(t, 15*time.Second, "events 2 and 3, woken by the new listener", func(e []Event) bool { return len(e) == 3 })
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
}
