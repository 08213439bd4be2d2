package startstop

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLifecycle(t *testing.T) {
	var b Base
	if b.Running() {
		t.Fatal("running before start")
	}
	if err := b.Stop(context.Background()); err != nil {
		t.Fatalf("stop before start: %v", err)
	}
	started := make(chan struct{})
	if err := b.StartFunc(context.Background(), func(ctx context.Context) { close(started); <-ctx.Done() }); err != nil {
		t.Fatal(err)
	}
	<-started
	if !b.Running() {
		t.Fatal("not running after start")
	}
	if err := b.StartFunc(context.Background(), func(context.Context) {}); !errors.Is(err, ErrAlreadyStarted) {
		t.Fatalf("second start: %v", err)
	}
	for range 2 {
		if err := b.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if b.Running() {
		t.Fatal("running after stop")
	}
}

func TestStopHonoursDeadline(t *testing.T) {
	var b Base
	release := make(chan struct{})
	_ = b.StartFunc(context.Background(), func(context.Context) { <-release })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := b.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stop of a stuck service: %v", err)
	}
	close(release)
}

// Cancelling the context given to Start does not stop the service: only
// Stop does, so a request-scoped context cannot end a long-lived loop.
func TestStartContextDoesNotStop(t *testing.T) {
	var b Base
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	_ = b.StartFunc(ctx, func(ctx context.Context) { <-ctx.Done(); close(stopped) })
	cancel()
	select {
	case <-stopped:
		t.Fatal("service stopped with its start context")
	case <-time.After(20 * time.Millisecond):
	}
	if err := b.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-stopped
}
