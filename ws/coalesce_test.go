package ws

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/grupogad/outboxd/relay"
)

// slowWriter stands in for melody's queue and writer: Write queues a
// frame, and the frame counts as in flight (reserved) until written hands
// it to onSent, as melody's writer does after the socket write.
type slowWriter struct {
	c      *client
	mu     sync.Mutex
	queue  [][]byte
	ready  chan struct{} // poked on every Write
	frames [][]byte      // written, in order
}

func newSlowWriter(c *client) *slowWriter {
	w := &slowWriter{c: c, ready: make(chan struct{}, 1)}
	c.out = writeOnly{w}
	return w
}

func (w *slowWriter) Write(b []byte) error {
	w.mu.Lock()
	w.queue = append(w.queue, b)
	w.mu.Unlock()
	select {
	case w.ready <- struct{}{}:
	default:
	}
	return nil
}

// writeOne writes the oldest queued frame, if any.
func (w *slowWriter) writeOne() bool {
	w.mu.Lock()
	if len(w.queue) == 0 {
		w.mu.Unlock()
		return false
	}
	b := w.queue[0]
	w.queue = w.queue[1:]
	w.frames = append(w.frames, b)
	w.mu.Unlock()
	w.c.onSent(b)
	return true
}

func (w *slowWriter) written() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([][]byte(nil), w.frames...)
}

// seqsOf returns the seqs of the events in frames, in order.
func frameSeqs(t *testing.T, frames [][]byte) [][]int64 {
	t.Helper()
	var out [][]int64
	for _, f := range frames {
		var seqs []int64
		for _, line := range bytes.Split(f, []byte{'\n'}) {
			var fr frame
			if err := json.Unmarshal(line, &fr); err != nil {
				t.Fatalf("frame line %q: %v", line, err)
			}
			seqs = append(seqs, fr.Seq)
		}
		out = append(out, seqs)
	}
	return out
}

func coalesceHub(t *testing.T, batch bool) (*Hub, *client, *slowWriter) {
	t.Helper()
	h := New(nil, nil, Config{TracerProvider: noop.NewTracerProvider()})
	c := &client{hub: h, userID: "u", heapIdx: -1, batch: batch, sent: make(chan struct{}, 1), done: make(chan struct{})}
	w := newSlowWriter(c)
	h.routes.add(c)
	return h, c, w
}

func dispatchSeqs(t *testing.T, h *Hub, seqs ...int64) {
	t.Helper()
	var evs []relay.Event
	for _, s := range seqs {
		evs = append(evs, relay.Event{ID: s, Seq: s, Topic: "t", Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, s)), CreatedAt: time.Now()})
	}
	if err := h.Dispatch(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
}

// A batch session whose previous frame melody has not written yet gets
// the events of the next batches in one frame, written right after it;
// one that keeps up gets each batch at once.
func TestBatchSessionBehindGetsBatchesInOneFrame(t *testing.T) {
	h, c, w := coalesceHub(t, true)
	dispatchSeqs(t, h, 1, 2)
	if q := len(w.queue); q != 1 {
		t.Fatalf("first batch: %d frames queued, want 1 (nothing in flight: written at once)", q)
	}
	// Frame 1 is not written yet: the next two batches wait for it.
	dispatchSeqs(t, h, 3)
	dispatchSeqs(t, h, 4, 5)
	if q := len(w.queue); q != 1 {
		t.Fatalf("behind: %d frames queued, want 1 (the rest waits for its write)", q)
	}
	w.writeOne() // frame 1 written: the two waiting batches follow as one frame
	if q := len(w.queue); q != 1 {
		t.Fatalf("after the write: %d frames queued, want 1", q)
	}
	w.writeOne()
	if w.writeOne() {
		t.Fatal("a third frame: batches were written twice")
	}
	// Caught up: the next batch goes at once.
	dispatchSeqs(t, h, 6)
	w.writeOne()
	got := frameSeqs(t, w.written())
	want := [][]int64{{1, 2}, {3, 4, 5}, {6}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("frames %v, want %v", got, want)
	}
	if c.inflight.Load() != 0 || c.inflightBytes.Load() != 0 || c.deferred.Load() {
		t.Fatalf("after every write: inflight %d, bytes %d, deferred %v", c.inflight.Load(), c.inflightBytes.Load(), c.deferred.Load())
	}
}

// A session without batch=1 gets one frame per event, behind or not.
func TestSingleSessionBehindGetsAFrameEach(t *testing.T) {
	h, _, w := coalesceHub(t, false)
	dispatchSeqs(t, h, 1)
	dispatchSeqs(t, h, 2, 3)
	if q := len(w.queue); q != 3 {
		t.Fatalf("%d frames queued, want 3", q)
	}
	for w.writeOne() {
	}
	if got := frameSeqs(t, w.written()); fmt.Sprint(got) != "[[1] [2] [3]]" {
		t.Fatalf("frames %v", got)
	}
}

// With the writer racing Dispatch, every event arrives once, in order,
// and nothing is left waiting once the writer has written everything (run
// with -race: onSent and the end of Dispatch meet on deferred and mu).
func TestBatchSessionDeferredFlushRacesTheWriter(t *testing.T) {
	h, c, w := coalesceHub(t, true)
	const batches = 3000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-w.ready:
				for w.writeOne() {
				}
			case <-time.After(time.Second):
				return // nothing queued for a second: the test is over or stuck
			}
		}
	}()
	seq := int64(0)
	for i := range batches {
		n := 1 + i%3
		var seqs []int64
		for range n {
			seq++
			seqs = append(seqs, seq)
		}
		dispatchSeqs(t, h, seqs...)
	}
	<-done
	var got []int64
	frames := w.written()
	for _, f := range frameSeqs(t, frames) {
		got = append(got, f...)
	}
	if int64(len(got)) != seq {
		t.Fatalf("%d events arrived, want %d (pending %d, deferred %v)", len(got), seq, len(c.pending), c.deferred.Load())
	}
	for i, s := range got {
		if s != int64(i+1) {
			t.Fatalf("event %d has seq %d: out of order or twice", i, s)
		}
	}
	if c.inflight.Load() != 0 || c.inflightBytes.Load() != 0 {
		t.Fatalf("inflight %d, bytes %d after every write", c.inflight.Load(), c.inflightBytes.Load())
	}
	t.Logf("%d events in %d frames", len(got), len(frames))
}
