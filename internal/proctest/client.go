package proctest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Follower is a WebSocket client that follows the event stream across
// replicas: when its connection ends, for any reason, it reconnects to the
// next address with since=<last seq>, as outboxd-client.js does. It records
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

// Follow starts a Follower connected first to addrs[first].
func Follow(t testing.TB, token string, addrs []string, first int) *Follower {
	f := &Follower{t: t, token: token, addrs: addrs, closes: map[int]int{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go f.run(ctx, first)
	t.Cleanup(f.Stop)
	return f
}

// Stop ends the follower and waits for it.
func (f *Follower) Stop() {
	f.cancel()
	<-f.done
}

func (f *Follower) run(ctx context.Context, i int) {
	defer close(f.done)
	for ctx.Err() == nil {
		err := f.once(ctx, f.addrs[i%len(f.addrs)])
		if ctx.Err() != nil {
			return
		}
		if ce, ok := err.(*websocket.CloseError); ok {
			f.mu.Lock()
			f.closes[ce.Code]++
			f.mu.Unlock()
		}
		f.mu.Lock()
		f.reconnects++
		f.mu.Unlock()
		i++ // another replica
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (f *Follower) once(ctx context.Context, addr string) error {
	q := url.Values{"token": {f.token}}
	f.mu.Lock()
	if f.last > 0 || f.reconnects > 0 {
		q.Set("since", strconv.FormatInt(f.last, 10))
	}
	f.mu.Unlock()
	d := websocket.Dialer{HandshakeTimeout: 2 * time.Second}
	conn, _, err := d.DialContext(ctx, "ws://"+addr+"/ws/connect?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		var fr struct {
			Type string `json:"type"`
			Seq  int64  `json:"seq"`
		}
		if err := json.Unmarshal(b, &fr); err != nil {
			return fmt.Errorf("bad frame %q", b)
		}
		if fr.Seq == 0 {
			continue
		}
		f.mu.Lock()
		f.raw++
		switch {
		case fr.Seq <= f.last:
			f.duplicates++
		case fr.Seq != f.last+1 && f.last != 0:
			f.outOfOrder++
			f.seqs = append(f.seqs, fr.Seq)
			f.last = fr.Seq
		default:
			f.seqs = append(f.seqs, fr.Seq)
			f.last = fr.Seq
		}
		f.mu.Unlock()
	}
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
