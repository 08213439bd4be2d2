package ws

import (
	"slices"
	"unsafe"
)

// batchFrameBytes is about the most a batched frame holds: a frame is
// written when its events reach it (one event larger than it goes alone).
const batchFrameBytes = 64 << 10

// flushPending writes the pending frames as one (c.mu held). They reserved
// one queue place and their bytes; the separators are added.
func (c *client) flushPending(merge *frameMerger) {
	k := len(c.pending)
	if k == 0 {
		return
	}
	frame := c.pending[0]
	if k > 1 {
		frame = merge.join(c.pending, c.pendingBytes-1)
		c.inflightBytes.Add(int64(k - 1)) // the separators
	}
	clear(c.pending)
	c.pending, c.pendingBytes = c.pending[:0], 0
	if err := c.out.Write(frame); err != nil {
		c.unreserve(len(frame))
	}
}

// flushOrDefer ends a Dispatch for a batch session (c.mu held): its
// pending frames are written now if melody has nothing else of the
// session's to write, else left for onSent. inflight counts the pending
// frame's place too, hence ≤ 1. deferred is set before inflight is read
// and onSent reads deferred after lowering inflight, so one of the two
// sees the other: either this flushes, or that onSent takes mu after this
// and flushes.
func (c *client) flushOrDefer(merge *frameMerger) {
	c.deferred.Store(true)
	if c.inflight.Load() <= 1 {
		c.deferred.Store(false)
		c.flushPending(merge)
	}
}

// flushDeferred is onSent's part: it writes the pending frames once the
// frame just written was the last one melody had of the session's.
func (c *client) flushDeferred() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case len(c.pending) == 0:
		c.deferred.Store(false) // flushed meanwhile
	case c.inflight.Load() <= 1:
		c.deferred.Store(false)
		c.flushPending(nil)
	}
}

// frameMerger joins the pending frames of batch sessions, once per distinct
// list of frames within one Dispatch: the sessions of a broadcast share
// one joined frame. Dispatch's goroutine only (or a caller's own).
type frameMerger struct {
	joined map[mergeKey]mergeEntry
}

type mergeKey struct {
	first, last *byte
	n           int
}

type mergeEntry struct {
	frames [][]byte
	joined []byte
}

// join returns frames joined by "\n" (size bytes), shared with every
// earlier call in this batch for the same frames.
func (m *frameMerger) join(frames [][]byte, size int) []byte {
	if m == nil {
		return joinFrames(frames, size)
	}
	key := mergeKey{unsafe.SliceData(frames[0]), unsafe.SliceData(frames[len(frames)-1]), len(frames)}
	if e, ok := m.joined[key]; ok && sameFrames(e.frames, frames) {
		return e.joined
	}
	out := joinFrames(frames, size)
	if m.joined == nil {
		m.joined = make(map[mergeKey]mergeEntry)
	}
	m.joined[key] = mergeEntry{slices.Clone(frames), out}
	return out
}

// joinFrames joins frames by "\n" (size bytes in all).
func joinFrames(frames [][]byte, size int) []byte {
	out := make([]byte, 0, size)
	for i, f := range frames {
		if i > 0 {
			out = append(out, '\n')
		}
		out = append(out, f...)
	}
	return out
}

// reset forgets the joined frames (end of a Dispatch).
func (m *frameMerger) reset() { clear(m.joined) }

// sameFrames reports whether a and b are the same frames (the same
// memory, not just equal bytes).
func sameFrames(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) || unsafe.SliceData(a[i]) != unsafe.SliceData(b[i]) {
			return false
		}
	}
	return true
}
