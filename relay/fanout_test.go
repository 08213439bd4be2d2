package relay

import (
	"context"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/outbox"
)

// scripted is a Fanout whose backlog follows a script, one value a look;
// past its end it repeats the last value.
type scripted struct {
	backlog []int
	looks   int
}

func (s *scripted) Unwritten() int {
	s.looks++
	return s.backlog[min(s.looks, len(s.backlog))-1]
}

func TestAwaitFanout(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name      string
		backlog   []int
		limit     time.Duration
		wantLooks int
		wantSlept time.Duration
	}{
		{"within the slack: no wait", []int{FanoutSlack}, 14 * ms, 1, 0},
		{"shrinking: waits until within the slack", []int{1000, 700, 300, 64, 900}, 14 * ms, 4, 3 * ms},
		{"stuck (slow clients): one look more", []int{1000, 1000}, 14 * ms, 2, 1 * ms},
		{"growing (catch-ups): one look more", []int{500, 800}, 14 * ms, 2, 1 * ms},
		{"shrinking slowly: stops at the limit", []int{1000, 999, 998, 997, 996, 995, 994}, 4 * ms, 5, 4 * ms},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clock := time.Unix(0, 0)
			slept := time.Duration(0)
			sleep := func(_ context.Context, d time.Duration) bool {
				slept += d
				clock = clock.Add(d)
				return true
			}
			f := &scripted{backlog: c.backlog}
			if !awaitFanout(context.Background(), f, c.limit, sleep, func() time.Time { return clock }) {
				t.Fatal("awaitFanout reported a cancelled context")
			}
			if f.looks != c.wantLooks || slept != c.wantSlept {
				t.Errorf("looked %d times and slept %s, want %d and %s", f.looks, slept, c.wantLooks, c.wantSlept)
			}
		})
	}
	t.Run("no fan-out: no wait", func(t *testing.T) {
		sleep := func(context.Context, time.Duration) bool { t.Fatal("slept"); return false }
		if !awaitFanout(context.Background(), nil, time.Second, sleep, time.Now) {
			t.Fatal("awaitFanout reported a cancelled context")
		}
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		sleep := func(context.Context, time.Duration) bool { return false }
		if awaitFanout(context.Background(), &scripted{backlog: []int{1000, 900}}, time.Second, sleep, time.Now) {
			t.Fatal("awaitFanout did not report the cancelled context")
		}
	})
}

// gate is a Fanout that reports every look on asked and answers with what
// the test sends on answers — until free is closed: then 0 at once.
type gate struct {
	asked   chan struct{}
	answers chan int
	free    chan struct{}
}

func (g *gate) Unwritten() int {
	select {
	case g.asked <- struct{}{}:
	case <-g.free:
		return 0
	}
	select {
	case n := <-g.answers:
		return n
	case <-g.free:
		return 0
	}
}

// After a partial batch the sequencer numbers nothing more while the local
// fan-out's backlog is over the slack and shrinking, and goes on once it
// stops shrinking.
func TestSequencerWaitsForTheFanout(t *testing.T) {
	db := dbtest.New(t)
	ctx := context.Background()
	g := &gate{asked: make(chan struct{}), answers: make(chan int), free: make(chan struct{})}
	s := NewSequencer(db.Pool, SequencerConfig{Fanout: g})
	// The test answers each look at its own pace; the wait's bound is
	// TestAwaitFanout's to check.
	s.fanoutWait = time.Hour
	startAll(t, s)
	t.Cleanup(func() { close(g.free) }) // before the sequencer's Stop

	look := func() {
		t.Helper()
		select {
		case <-g.asked:
		case <-time.After(10 * time.Second):
			t.Fatal("the sequencer did not look at the fan-out")
		}
	}
	seqOf := func(id int64) *int64 {
		t.Helper()
		var seq *int64
		if err := db.Pool.QueryRow(ctx, `SELECT seq FROM outbox.events WHERE id = $1`, id).Scan(&seq); err != nil {
			t.Fatal(err)
		}
		return seq
	}
	emit := func() int64 {
		t.Helper()
		id, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "t", Data: map[string]any{"a": 1}, Broadcast: true})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	first := emit()
	look() // after the batch that numbered it, and its pause
	if seqOf(first) == nil {
		t.Fatal("the fan-out was consulted before the batch that found a row")
	}
	second := emit()
	g.answers <- 1000 // a backlog: wait
	look()
	if seq := seqOf(second); seq != nil {
		t.Fatalf("numbered %d while the fan-out's backlog was over the slack", *seq)
	}
	g.answers <- 600 // shrinking: wait on
	look()
	if seq := seqOf(second); seq != nil {
		t.Fatalf("numbered %d while the fan-out's backlog was shrinking", *seq)
	}
	g.answers <- 600 // no longer shrinking: the next batch
	look()           // after the batch that numbered the second row
	if seq := seqOf(second); seq == nil || *seq != 2 {
		t.Fatalf("second row's seq = %v after the wait, want 2", seq)
	}
}
