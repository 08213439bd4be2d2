package ws

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/grupogad/outboxd/relay"
)

// gate is a frame writer that blocks the first write until released.
type gate struct {
	once    sync.Once
	blocked chan struct{}
	release chan struct{}
}

func (g *gate) Write([]byte) error {
	g.once.Do(func() {
		close(g.blocked)
		<-g.release
	})
	return nil
}

type discard struct{}

func (discard) Write([]byte) error { return nil }

// A connect or disconnect never waits behind a fan-out: while Dispatch is
// in the middle of delivering to 10,000 sessions, the hub lock is free.
func TestConnectsDoNotWaitBehindAFanout(t *testing.T) {
	t.Parallel()
	h := New(nil, nil, Config{TracerProvider: noop.NewTracerProvider()})
	g := &gate{blocked: make(chan struct{}), release: make(chan struct{})}
	for i := range 10000 {
		c := &client{hub: h, userID: fmt.Sprintf("u%d", i), heapIdx: -1, sent: make(chan struct{}, 1), done: make(chan struct{})}
		c.out = writeOnly{discard{}}
		if i == 5000 {
			c.out = writeOnly{g}
		}
		h.routes.add(c)
	}
	done := make(chan error, 1)
	go func() {
		done <- h.Dispatch(context.Background(), []relay.Event{{ID: 1, Seq: 1, Topic: "t", Payload: []byte(`{}`), CreatedAt: time.Now()}})
	}()
	<-g.blocked // Dispatch is delivering, stuck on one session's write
	locked := make(chan struct{})
	go func() {
		h.mu.Lock() // what onConnect and onDisconnect take
		newcomer := &client{hub: h, userID: "late", heapIdx: -1, sent: make(chan struct{}, 1), done: make(chan struct{})}
		h.routes.add(newcomer)
		h.routes.remove(newcomer)
		h.mu.Unlock()
		close(locked)
	}()
	select {
	case <-locked:
	case <-time.After(10 * time.Second):
		close(g.release)
		t.Fatal("connects wait for the whole fan-out: the hub lock is held while frames are queued")
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
