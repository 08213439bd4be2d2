// Package startstop is the Start/Stop lifecycle shared by outboxd's services,
// after river's rivershared/startstop: Start launches the service's loop and
// returns at once; Stop cancels it and waits for it to finish, honouring the
// caller's deadline; both are safe to call more than once.
package startstop

import (
	"context"
	"errors"
	"sync"
)

// ErrAlreadyStarted is returned by Start on a running service.
var ErrAlreadyStarted = errors.New("startstop: already started")

// Base is embedded by services.
type Base struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// StartFunc runs run in a goroutine with a context cancelled by Stop.
func (b *Base) StartFunc(ctx context.Context, run func(ctx context.Context)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done != nil {
		return ErrAlreadyStarted
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	b.cancel, b.done = cancel, done
	go func() {
		defer close(done)
		run(ctx)
	}()
	return nil
}

// Stop cancels the loop and waits for it to return or for ctx to end.
// Stopping a service that is not running is a no-op.
func (b *Base) Stop(ctx context.Context) error {
	b.mu.Lock()
	cancel, done := b.cancel, b.done
	b.cancel, b.done = nil, nil
	b.mu.Unlock()
	if done == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Running reports whether the service has been started and not stopped.
func (b *Base) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done == nil {
		return false
	}
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}
