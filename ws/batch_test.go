package ws

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/relay"
)

// eventSeqs lists the events' seqs.
func eventSeqs(evs []frame) []int64 {
	out := make([]int64, len(evs))
	for i, f := range evs {
		out[i] = f.Seq
	}
	return out
}

// batch=1: a client gets the same events in the same order as a client
// without it, in fewer frames, each line a whole envelope; targeting is
// unchanged.
func TestBatchedFramesSameEventsFewerFrames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	batched := e.connect("batch=1", "u1", "ops")
	single := e.connect("", "u1", "ops")
	other := e.connect("batch=1", "u2", "other")

	const n = 400
	evs := make([]outbox.Event, n)
	wantOther := 0
	for i := range evs {
		switch i % 4 {
		case 0:
			evs[i] = ev("task_event", i, nil, nil) // everyone
			wantOther++
		case 1:
			evs[i] = ev("task_event", i, nil, []string{"ops"})
		case 2:
			evs[i] = ev("efectivo_event", i, []string{"u1"}, nil)
		case 3:
			evs[i] = ev("alert", i, nil, []string{"other"})
			wantOther++
		}
	}
	e.emit(evs...) // one transaction: numbered in one batch
	wantMine := n - n/4
	gotBatched := batched.events(wantMine, 10*time.Second)
	gotSingle := single.events(wantMine, 10*time.Second)
	gotOther := other.events(wantOther, 10*time.Second)
	if !slices.Equal(eventSeqs(gotBatched), eventSeqs(gotSingle)) {
		t.Fatalf("batched client got %v, single-frame client %v", eventSeqs(gotBatched), eventSeqs(gotSingle))
	}
	for i := range gotBatched {
		if i > 0 && gotBatched[i].Seq <= gotBatched[i-1].Seq {
			t.Fatalf("out of order at %d: %d after %d", i, gotBatched[i].Seq, gotBatched[i-1].Seq)
		}
		if !bytes.Equal(gotBatched[i].Data, gotSingle[i].Data) || gotBatched[i].Type != gotSingle[i].Type {
			t.Fatalf("event %d differs: %+v vs %+v", i, gotBatched[i], gotSingle[i])
		}
	}
	for _, f := range gotOther {
		var d struct{ N int }
		if err := json.Unmarshal(f.Data, &d); err != nil || (d.N%4 != 0 && d.N%4 != 3) {
			t.Fatalf("u2/other got %+v", f)
		}
	}
	batched.quiet(100 * time.Millisecond)
	other.quiet(10 * time.Millisecond)
	// The welcome, then the events: in far fewer messages than events.
	if m := batched.messages.Load(); m > int64(wantMine/4) {
		t.Fatalf("batched client read %d messages for %d events", m, wantMine)
	}
	if m := single.messages.Load(); m != int64(wantMine+1) {
		t.Fatalf("single-frame client read %d messages for %d events and the welcome", m, wantMine)
	}
	t.Logf("%d events: %d messages batched, %d single", wantMine, batched.messages.Load(), single.messages.Load())
}

// A batch=1 client whose queue fills mid-batch (a tiny byte budget) goes
// to catch-up after what it was given, and catch-up batches too: every
// event once, in order.
func TestBatchedOverflowAndCatchUpInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{SendBufferBytes: 4 << 10}})
	live := e.connect("batch=1", "u1")
	const n = 3000
	evs := make([]outbox.Event, n)
	for i := range evs {
		evs[i] = ev("task_event", i, nil, nil)
	}
	e.emit(evs...)
	got := live.events(n, 20*time.Second)
	for i, f := range got {
		if f.Seq != got[0].Seq+int64(i) {
			t.Fatalf("event %d has seq %d after %d", i, f.Seq, got[0].Seq)
		}
	}
	// A resume from the start: a table catch-up, batched.
	resumed := e.connect("batch=1&since=0", "u1")
	again := resumed.events(n, 20*time.Second)
	for i, f := range again {
		if f.Seq != int64(i+1) {
			t.Fatalf("resumed event %d has seq %d", i, f.Seq)
		}
	}
	live.quiet(50 * time.Millisecond)
	resumed.quiet(10 * time.Millisecond)
	if m := resumed.messages.Load(); m > n/4 {
		t.Fatalf("resumed client read %d messages for %d events", m, n)
	}
}

// batch takes 1/true or 0/false; anything else is refused before the
// upgrade.
func TestBatchParam(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	for _, v := range []string{"1", "true", "0", "false"} {
		c := e.connect("batch="+v, "u1")
		_ = c.conn.Close()
	}
	_, resp, err := e.dial("token="+url.QueryEscape(e.token("u1"))+"&batch=yes", dialOpts{})
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("batch=yes: %v %v", err, resp)
	}
	var body httpError
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Error != "invalid_batch" {
		t.Fatalf("batch=yes answered %+v (%v)", body, err)
	}
}

// capture stands in for a session's queue and keeps what is written.
type capture struct {
	c      *client
	mu     sync.Mutex
	frames [][]byte
}

func (w *capture) Write(b []byte) error {
	w.mu.Lock()
	w.frames = append(w.frames, b)
	w.mu.Unlock()
	w.c.unreserve(len(b))
	return nil
}

// The sessions of a broadcast share one joined frame per batch: the events
// are encoded once and joined once, whatever the number of recipients.
// Sessions with another set of events get their own.
func TestBatchedFrameJoinedOncePerDistinctSet(t *testing.T) {
	h := New(nil, nil, Config{TracerProvider: noop.NewTracerProvider()})
	var caps []*capture
	for i := range 4 {
		c := &client{hub: h, userID: fmt.Sprintf("u%d", i), roles: []string{fmt.Sprintf("r%d", i%2)}, batch: true,
			heapIdx: -1, sent: make(chan struct{}, 1), done: make(chan struct{})}
		w := &capture{c: c}
		c.out = writeOnly{w}
		caps = append(caps, w)
		h.routes.add(c)
	}
	var evs []relay.Event
	for i := range 6 {
		e := relay.Event{ID: int64(i + 1), Seq: int64(i + 1), Topic: "t", Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), CreatedAt: time.Now()}
		if i == 5 {
			e.Roles = []string{"r1"} // only u1 and u3
		}
		evs = append(evs, e)
	}
	if err := h.Dispatch(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	for i, w := range caps {
		if len(w.frames) != 1 {
			t.Fatalf("session %d got %d frames, want 1", i, len(w.frames))
		}
		lines := bytes.Split(w.frames[0], []byte{'\n'})
		want := 5 + i%2
		if len(lines) != want {
			t.Fatalf("session %d got %d events, want %d", i, len(lines), want)
		}
		for k, l := range lines {
			var f frame
			if err := json.Unmarshal(l, &f); err != nil || f.Seq != int64(k+1) {
				t.Fatalf("session %d line %d: %q (%v)", i, k, l, err)
			}
		}
		if c := w.c; c.inflight.Load() != 0 || c.inflightBytes.Load() != 0 {
			t.Fatalf("session %d: %d frames, %d bytes still reserved after the write", i, c.inflight.Load(), c.inflightBytes.Load())
		}
	}
	same := func(a, b []byte) bool { return &a[0] == &b[0] }
	if !same(caps[0].frames[0], caps[2].frames[0]) || !same(caps[1].frames[0], caps[3].frames[0]) || same(caps[0].frames[0], caps[1].frames[0]) {
		t.Fatal("sessions with the same events should share one joined frame, and only those")
	}
}
