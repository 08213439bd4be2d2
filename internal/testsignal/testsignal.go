// Package testsignal lets a service tell tests what it did, the way
// river's testsignal does: a service holds a TestSignal[T] per event worth
// waiting for and calls Signal when it happens; a test calls Init before
// starting the service and WaitOrTimeout to wait for it. A signal nobody
// initialised costs a nil check and nothing else, so production code pays
// nothing.
package testsignal

import (
	"testing"
	"time"
)

// WaitTimeout is how long WaitOrTimeout waits.
const WaitTimeout = 10 * time.Second

// TestSignal is one kind of event a service reports. The zero value is
// off: Signal does nothing until Init.
type TestSignal[T any] struct {
	ch chan T
}

// Init turns the signal on (buffered: a service never blocks on it; past
// the buffer, signals are dropped). Call it before the service starts.
func (s *TestSignal[T]) Init() { s.ch = make(chan T, 1000) }

// Signal reports v, if a test listens.
func (s *TestSignal[T]) Signal(v T) {
	if s.ch == nil {
		return
	}
	select {
	case s.ch <- v:
	default:
	}
}

// WaitOrTimeout returns the next value, or fails the test after
// WaitTimeout.
func (s *TestSignal[T]) WaitOrTimeout(t testing.TB) T {
	t.Helper()
	if s.ch == nil {
		t.Fatal("testsignal: WaitOrTimeout on a signal not initialised (call Init before starting the service)")
	}
	select {
	case v := <-s.ch:
		return v
	case <-time.After(WaitTimeout):
		t.Fatalf("testsignal: no signal within %s", WaitTimeout)
	}
	var zero T
	return zero
}

// C is the signal's channel, for a select of its own (nil before Init).
func (s *TestSignal[T]) C() <-chan T { return s.ch }

// Eventually checks cond every few milliseconds until it holds, and fails
// the test after d with describe's words (called then, so that they can
// say how far things got). It is for state a service does not signal:
// where it can, wait on a TestSignal instead.
func Eventually(t testing.TB, d time.Duration, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s: %s", d, describe())
		case <-tick.C:
		}
	}
}
