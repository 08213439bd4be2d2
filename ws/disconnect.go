package ws

// disconnectAfter schedules the close of an outbox.disconnect at seq. A
// live session has been given every earlier event (Dispatch routes in
// order), so only its queue must drain; a catching-up one first reads up to
// seq.
func (c *client) disconnectAfter(seq int64, ce CloseError) {
	c.mu.Lock()
	if c.state == stateClosed || (c.closeAt != 0 && c.closeAt <= seq) {
		c.mu.Unlock()
		return
	}
	c.closeAt, c.closeAs = seq, ce
	if c.state == stateLive {
		c.cursor = max(c.cursor, seq)
	}
	c.closing.Store(true)
	c.mu.Unlock()
	c.closeIfDrained()
}

// closeIfDrained closes the session for its scheduled disconnect once it
// has every event before closeAt and nothing left in its queue.
func (c *client) closeIfDrained() {
	c.mu.Lock()
	ready := c.closeAt != 0 && c.cursor >= c.closeAt-1 && c.inflight.Load() == 0
	ce := c.closeAs
	c.mu.Unlock()
	if ready {
		c.closeWith(ce, func() { c.hub.metrics.drop("disconnected") })
	}
}
