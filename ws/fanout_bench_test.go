package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/grupogad/outboxd/observability"
	"github.com/grupogad/outboxd/relay"
	"github.com/olahol/melody"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
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
		c.out = writeOnly{sink{c}}
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

// BenchmarkSentHandler is what the hub does after melody writes a frame to
// a socket, per frame and per session (HandleSentMessage): find the
// session's client, record the frame's latency in the histogram (under the
// SDK's MeterProvider, as outboxd runs), release its queue place. At 1,000
// sessions × 100 events/s it runs 100,000 times a second, from every
// session's writer goroutine at once (hence RunParallel).
func BenchmarkSentHandler(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()), observability.LatencyView())
	defer func() { _ = mp.Shutdown(context.Background()) }()
	h := New(nil, nil, Config{TracerProvider: noop.NewTracerProvider(), MeterProvider: mp})
	frame := encodeEvent(&relay.Event{ID: 1, Seq: 1, Topic: "task_event", Payload: json.RawMessage(`{"task_id":42}`), CreatedAt: time.Now()})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c := &client{hub: h, heapIdx: -1, sent: make(chan struct{}, 1), done: make(chan struct{})}
		s := &melody.Session{Keys: map[string]any{clientKey: c}}
		for pb.Next() {
			c.inflight.Add(1)
			c.inflightBytes.Add(int64(len(frame)))
			if c := sessionClient(s); c != nil {
				c.onSent(frame)
			}
		}
	})
}

// BenchmarkUnwritten is the sequencer's look at the fan-out's backlog
// (relay.Fanout), once per partial batch: it reads every session.
func BenchmarkUnwritten_1000Sessions(b *testing.B)  { benchUnwritten(b, 1000) }
func BenchmarkUnwritten_10000Sessions(b *testing.B) { benchUnwritten(b, 10000) }

func benchUnwritten(b *testing.B, sessions int) {
	h := benchHub(b, sessions)
	for b.Loop() {
		if h.Unwritten() != 0 {
			b.Fatal("a backlog without frames")
		}
	}
}
