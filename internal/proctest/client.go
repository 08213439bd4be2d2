package proctest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/wsclient"
)

// Follower is a WebSocket client that follows the event stream across
// replicas: when its connection ends, for any reason, it reconnects to the
// next address with since=<last seq>, as the browser client (clients/js) does. It records
// every event frame it receives, before and after dedupe.
type Follower struct {
	t     testing.TB
	token string
	addrs []string

	mu         sync.Mutex
	seqs       []int64 // deduplicated, in arrival order
	raw        int     // event frames received, duplicates included
	duplicates int
	outOfOrder int // a seq above last+1 (a gap) or a step backwards that is not a duplicate
	reconnects int
	closes     map[int]int // close codes seen
	last       int64

	cancel context.CancelFunc
	done   chan struct{}
}

// Follow starts a Follower connected first to addrs[first], live from
// the head.
func Follow(t testing.TB, token string, addrs []string, first int) *Follower {
	return FollowSince(t, token, addrs, first, -1)
}

// FollowSince is Follow from since (a catch-up; -1: live from the head).
func FollowSince(t testing.TB, token string, addrs []string, first int, since int64) *Follower {
	f := &Follower{t: t, token: token, addrs: addrs, closes: map[int]int{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go f.run(ctx, first, since)
	t.Cleanup(f.Stop)
	return f
}

// Stop ends the follower and waits for it.
func (f *Follower) Stop() {
	f.cancel()
	<-f.done
}

func (f *Follower) run(ctx context.Context, first int, since int64) {
	defer close(f.done)
	urls := make([]string, len(f.addrs))
	for i := range f.addrs {
		urls[i] = "ws://" + f.addrs[(first+i)%len(f.addrs)] + "/ws/connect"
	}
	r := &wsclient.Resumer{URLs: urls, Token: f.token, Since: since, HandshakeTimeout: 2 * time.Second}
	r.Backoff = func(_ int, err error) time.Duration {
		f.mu.Lock()
		defer f.mu.Unlock()
		if ce, ok := err.(*websocket.CloseError); ok {
			f.closes[ce.Code]++
		}
		f.reconnects++
		return 50 * time.Millisecond // and on to the next replica
	}
	r.OnFrame = func(fr wsclient.Frame) error {
		if fr.Seq == 0 {
			return nil
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.raw++
		switch {
		case fr.Duplicate:
			f.duplicates++
		case f.last != 0 && fr.Seq != f.last+1:
			f.outOfOrder++
			fallthrough
		default:
			f.seqs = append(f.seqs, fr.Seq)
			f.last = fr.Seq
		}
		return nil
	}
	_ = r.Run(ctx)
}

// Stats is what a Follower saw.
type Stats struct {
	Seqs                        []int64
	Raw, Duplicates, OutOfOrder int
	Reconnects                  int
	Closes                      map[int]int
}

// Stats returns a copy of what the follower saw so far.
func (f *Follower) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	closes := map[int]int{}
	for k, v := range f.closes {
		closes[k] = v
	}
	return Stats{Seqs: append([]int64(nil), f.seqs...), Raw: f.raw, Duplicates: f.duplicates,
		OutOfOrder: f.outOfOrder, Reconnects: f.reconnects, Closes: closes}
}

// Last returns the last seq received.
func (f *Follower) Last() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// WaitFor waits until the follower has received seq n, or fails the test.
func (f *Follower) WaitFor(n int64, d time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(d)
	for f.Last() < n {
		if time.Now().After(deadline) {
			s := f.Stats()
			f.t.Fatalf("follower reached seq %d of %d in %s (reconnects %d, closes %v)", f.Last(), n, d, s.Reconnects, s.Closes)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CheckExactly asserts the follower received seq 1..n, each once after
// dedupe, in order.
func (f *Follower) CheckExactly(n int64) Stats {
	f.t.Helper()
	s := f.Stats()
	if int64(len(s.Seqs)) != n || s.OutOfOrder != 0 {
		f.t.Fatalf("follower: %d distinct events (want %d), %d out of order, %d duplicates, %d reconnects",
			len(s.Seqs), n, s.OutOfOrder, s.Duplicates, s.Reconnects)
	}
	for i, q := range s.Seqs {
		if q != int64(i+1) {
			f.t.Fatalf("follower: event %d has seq %d", i, q)
		}
	}
	return s
}
