package ws

import (
	"context"
	"time"
)

// reserve takes a place in the melody queue for a frame of n bytes: at
// most limit frames, and for events at most SendBufferBytes queued (a
// frame larger than that still goes, alone). It reports false when full.
func (c *client) reserve(limit int32, n int, isEvent bool) bool {
	return c.reserveSlots(limit, 1, n, isEvent)
}

// reserveSlots is reserve for a frame that takes slots queue places: 0 for
// an event joining a batch session's pending frame, whose place the first
// pending event took.
func (c *client) reserveSlots(limit, slots int32, n int, isEvent bool) bool {
	if c.inflight.Add(slots) > limit && slots > 0 {
		c.inflight.Add(-slots)
		return false
	}
	if b := c.inflightBytes.Add(int64(n)); isEvent && b > int64(c.hub.cfg.SendBufferBytes) && b != int64(n) {
		c.inflight.Add(-slots)
		c.inflightBytes.Add(-int64(n))
		return false
	}
	return true
}

func (c *client) unreserve(n int) {
	c.inflight.Add(-1)
	c.inflightBytes.Add(-int64(n))
}

// waitForRoom blocks until the melody queue has room for an event. It
// gives up, closing with 4008, if the client falls more than ReplayMax
// behind meanwhile (a client that stopped reading).
func (c *client) waitForRoom(ctx context.Context, wait *time.Timer, n int) bool {
	limit := int32(c.hub.cfg.SendBuffer - controlReserve)
	return c.awaitSent(ctx, wait, func() bool { return c.reserve(limit, n, true) })
}

// awaitSent waits until ready holds, looking again after every frame the
// transport writes (or every 100 ms). It gives up if ctx ends, or, closing
// with 4008, if the client falls more than ReplayMax behind meanwhile (a
// client that stopped reading).
func (c *client) awaitSent(ctx context.Context, wait *time.Timer, ready func() bool) bool {
	for !ready() {
		wait.Reset(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			return false
		case <-c.sent:
		case <-wait.C:
			c.mu.Lock()
			cursor := c.cursor
			c.mu.Unlock()
			if c.tooFarBehind(cursor) {
				return false
			}
		}
	}
	return true
}

// tooFarBehind closes the client with 4008 if it STAYS more than ReplayMax
// events behind the head: over the limit for a whole LagWindow without
// closing the gap. A reader slower than a burst but catching up is left
// alone; a client that stopped reading is cut. Only the catch-up goroutine
// calls it.
func (c *client) tooFarBehind(cursor int64) bool {
	behind := c.hub.head.Load() - cursor
	if behind <= c.hub.cfg.ReplayMax {
		c.overSince = time.Time{}
		return false
	}
	now := time.Now()
	if c.overSince.IsZero() || behind < c.overBehind {
		// Newly over the limit, or gaining on the head: (re)start the window.
		c.overSince, c.overBehind = now, behind
		return false
	}
	if now.Sub(c.overSince) < c.hub.cfg.LagWindow {
		return false
	}
	c.closeWith(CloseTooFarBehind, func() { c.dropped("too_far_behind") })
	return true
}
