package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/grupogad/outboxd/relay"
	"go.opentelemetry.io/otel/trace/noop"
)

// sink stands in for a melody session's queue: the frame is taken off the
// queue at once, so the benchmark measures the hub's routing, encoding and
// flow control — not sockets, nor the per-write latency bookkeeping that
// melody's writer goroutine does for each session.
type sink struct{ c *client }

func (s sink) Write(b []byte) error { s.c.unreserve(len(b)); return nil }

func benchHub(b *testing.B, sessions int) *Hub { return benchHubFrames(b, sessions, false) }

// benchHubFrames is benchHub with batch=1 sessions when batch is true.
func benchHubFrames(b *testing.B, sessions int, batch bool) *Hub {
	h := New(nil, nil, Config{TracerProvider: noop.NewTracerProvider()}) // as outboxd runs without an OTLP endpoint
	for i := range sessions {
		c := &client{hub: h, userID: fmt.Sprintf("u%d", i), roles: []string{fmt.Sprintf("role%d", i%10)},
			heapIdx: -1, sent: make(chan struct{}, 1), done: make(chan struct{}), batch: batch}
		c.out = sink{c}
		h.routes.add(c)
	}
	return h
}

func benchFanout(b *testing.B, sessions int, users []string) {
	h := benchHub(b, sessions)
	payload := json.RawMessage(`{"task_id":42,"status":"done","assignee":"u7"}`)
	ev := []relay.Event{{ID: 1, Topic: "task_event", Payload: payload, Users: users, CreatedAt: time.Now()}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ev[0].Seq = int64(i + 1)
		if err := h.Dispatch(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFanout_1000Sessions_Broadcast(b *testing.B)   { benchFanout(b, 1000, nil) }
func BenchmarkFanout_10000Sessions_Broadcast(b *testing.B)  { benchFanout(b, 10000, nil) }
func BenchmarkFanout_1000Sessions_SingleUser(b *testing.B)  { benchFanout(b, 1000, []string{"u7"}) }
func BenchmarkFanout_10000Sessions_SingleUser(b *testing.B) { benchFanout(b, 10000, []string{"u7"}) }

// benchFanoutBatch dispatches batches of 10 broadcast events: each session
// gets one frame per batch (batch=1) or ten.
func benchFanoutBatch(b *testing.B, sessions int, batch bool) {
	h := benchHubFrames(b, sessions, batch)
	payload := json.RawMessage(`{"task_id":42,"status":"done","assignee":"u7"}`)
	evs := make([]relay.Event, 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		for k := range evs {
			evs[k] = relay.Event{ID: int64(k), Seq: int64(i*10 + k + 1), Topic: "task_event", Payload: payload, CreatedAt: time.Now()}
		}
		if err := h.Dispatch(context.Background(), evs); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFanout_1000Sessions_10Events_Single(b *testing.B)  { benchFanoutBatch(b, 1000, false) }
func BenchmarkFanout_1000Sessions_10Events_Batched(b *testing.B) { benchFanoutBatch(b, 1000, true) }
