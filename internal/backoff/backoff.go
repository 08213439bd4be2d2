// Package backoff is the capped exponential backoff with jitter that every
// outboxd loop uses after an error: 100 ms doubling to 1 s, so that a lost
// database is retried quickly but never hammered.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Bounds of the wait.
const (
	Min = 100 * time.Millisecond
	Max = time.Second
)

// Backoff is not safe for concurrent use; the zero value is ready.
type Backoff struct{ next time.Duration }

// Reset starts over from Min after a success.
func (b *Backoff) Reset() { b.next = 0 }

// Wait sleeps for the next interval; false if ctx ended first.
func (b *Backoff) Wait(ctx context.Context) bool {
	if b.next == 0 {
		b.next = Min
	}
	d := b.next/2 + rand.N(b.next/2+1)
	b.next = min(b.next*2, Max)
	return Sleep(ctx, d)
}

// Sleep waits d or until ctx ends; false if ctx ended.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
