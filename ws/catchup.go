package ws

import (
	"context"
	"time"

	"github.com/grupogad/outboxd/internal/backoff"
	"github.com/grupogad/outboxd/stream"
)

// catchUpBatch is the seq range one catch-up read scans (so at most that
// many rows); Config.CatchUpPageBytes bounds its bytes.
const catchUpBatch = 256

// maxRowBytes is the largest payload a row may carry (the table's CHECK):
// a page read stops at its byte budget less this, so with the row that
// crosses it the page stays within the budget.
const maxRowBytes = stream.MaxPayloadBytes

// catchUp replays from the table at the pace the socket accepts, then
// rejoins live delivery. resume is true for a connect with since=, where a
// too-old cursor gets resync_required instead of a close.
func (c *client) catchUp(resume bool) {
	h := c.hub
	defer func() {
		if c.closing.Load() {
			c.closeIfDrained()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	if resume && !c.checkResume(ctx) {
		return
	}
	var bo backoff.Backoff
	var buf []stream.Event // allocated on the first table read only
	var memBuf []recentItem
	var run []caughtUp
	wait := time.NewTimer(time.Hour)
	defer wait.Stop()
	for !c.closed() {
		c.mu.Lock()
		// The filter and the roles change only under mu (subscribe,
		// refresh), with filterGen: a page read under the old ones is not
		// written under the new.
		cursor, topics, roles, gen := c.cursor, c.topicList(), c.roles, c.filterGen
		if c.closeAt != 0 && cursor >= c.closeAt-1 {
			// Every event before the disconnect is queued: close once sent.
			c.cursor = max(c.cursor, c.closeAt)
			c.mu.Unlock()
			c.closeIfDrained()
			return
		}
		// Rejoin live once every announced event is covered: Dispatch
		// announces head before delivering, so any event not covered by
		// cursor reaches us live from now on.
		if cursor >= h.head.Load() && c.state == stateCatchUp {
			c.state = stateLive
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		if c.tooFarBehind(cursor) {
			return
		}
		// From memory when the recent frames cover the cursor, else from
		// the table.
		var scannedTo int64
		var fromMemory bool
		refiltered := false
		if mem, to, ok := h.recent.after(cursor, catchUpBatch, c.userID, roles, topics, memBuf[:0]); ok {
			memBuf, scannedTo, fromMemory = mem, to, true
			h.metrics.pagesMemory.Add(1)
			w := runWriter{c: c, ctx: ctx, wait: wait, gen: gen, run: run[:0]}
			res := written
			for i := 0; i < len(memBuf) && res == written; i++ {
				res = w.add(memBuf[i].seq, memBuf[i].frame, memBuf[i].topic)
			}
			if res == written {
				res = w.flush()
			}
			run = w.run
			if res == writeStop {
				return
			}
			refiltered = res == writeRefiltered
		}
		if !fromMemory {
			if buf == nil {
				buf = make([]stream.Event, 0, catchUpBatch)
			}
			var err error
			var done bool
			scannedTo, buf, done, refiltered, err = c.pageFromTable(ctx, wait, cursor, topics, roles, gen, buf[:0])
			if done {
				return
			}
			if err != nil {
				if ctx.Err() == nil {
					h.cfg.Logger.Warn("catch-up read failed; retrying", "err", err, "user", c.userID)
				}
				if !bo.Wait(ctx) {
					return
				}
				continue
			}
			bo.Reset()
		}
		if refiltered {
			continue // the filter changed mid-page: read on from the cursor under the new one
		}
		c.mu.Lock()
		c.cursor = max(c.cursor, scannedTo)
		c.mu.Unlock()
	}
}

// pageFromTable reads one page of entitled events after cursor and queues
// them. The page is sized to the room left in the session's queue (its
// payload bytes at most that room, with the row that crosses it): first it
// waits until the queue is at most half full, then reads. It holds a
// reservation on the hub's catch-up memory (twice its bound: rows, then
// their frames) from the read until its frames are encoded, never while
// they wait for the socket; and one user's pages hold at most
// perUserCatchUp of it at once. So sessions that read slowly hold their
// own queues' worth, not the memory an honest resume needs. The page
// budget also starts at two rows of the largest size and doubles, up to
// CatchUpPageBytes, while pages come back full. done is true when the
// session ended or was cut.
func (c *client) pageFromTable(ctx context.Context, wait *time.Timer, cursor int64, topics, roles []string, gen uint64,
	buf []stream.Event) (scannedTo int64, _ []stream.Event, done, refiltered bool, err error) {
	h := c.hub
	room, ok := c.waitForPageRoom(ctx, wait)
	if !ok {
		return 0, buf, true, false, nil
	}
	budget := max(c.pageBudget, 2*maxRowBytes)
	maxBytes := max(min(budget-maxRowBytes, room), 1)
	reserve := min(int64(2*(maxBytes+maxRowBytes)), h.perUserCatchUp())
	release, err := h.catchUp.acquire(ctx, c.userID, reserve)
	if err != nil {
		return 0, buf, true, false, nil // ctx ended: the client went away
	}
	page, buf, err := h.store.ReadEntitled(ctx, stream.ReplayQuery{
		After: cursor, Span: catchUpBatch, MaxBytes: maxBytes,
		User: c.userID, Roles: roles, Topics: topics, SkipEmpty: !c.noSkip,
	}, buf)
	if err != nil {
		release()
		return 0, buf, false, false, err
	}
	if len(buf) == 0 && page.Skipped < 4*catchUpBatch {
		// The entitlement lookup gains little for this client (it is
		// entitled to much): scan by ranges from here on.
		c.noSkip = true
	}
	if page.Bytes >= budget-maxRowBytes {
		c.pageBudget = min(2*budget, h.cfg.CatchUpPageBytes)
	} else {
		c.pageBudget = 2 * maxRowBytes
	}
	h.metrics.pagesTable.Add(1)
	if page.PastRetention(cursor) {
		release()
		c.closeWith(ClosePastRetention, func() { c.dropped("past_retention") })
		return 0, buf, true, false, nil
	}
	frames := make([][]byte, len(buf))
	for i := range buf {
		frames[i] = encodeEvent(&buf[i])
		buf[i].Payload = nil // the frame has it now
	}
	release()
	w := runWriter{c: c, ctx: ctx, wait: wait, gen: gen}
	res := written
	for i := 0; i < len(buf) && res == written; i++ {
		res = w.add(buf[i].Seq, frames[i], buf[i].Topic)
	}
	if res == written {
		res = w.flush()
	}
	switch res {
	case writeStop:
		return 0, buf, true, false, nil
	case writeRefiltered:
		return 0, buf, false, true, nil
	}
	return page.ScannedTo, buf, false, false, nil
}

// waitForPageRoom waits until the session's queue is at most half full of
// event bytes and returns the room left; false if the session went away
// or was cut for staying too far behind meanwhile.
func (c *client) waitForPageRoom(ctx context.Context, wait *time.Timer) (int, bool) {
	limit := int64(c.hub.cfg.SendBufferBytes)
	var room int64
	ok := c.awaitSent(ctx, wait, func() bool {
		queued := c.inflightBytes.Load()
		room = limit - queued
		return queued <= limit/2
	})
	return int(room), ok
}

// writeResult is how writing caught-up events ended.
type writeResult int

const (
	written         writeResult = iota
	writeStop                   // the client went away or was cut
	writeRefiltered             // the filter changed since the page was read: nothing written
)

// caughtUp is one event of a catch-up page.
type caughtUp struct {
	seq   int64
	frame []byte
	topic string
}

// runWriter queues a catch-up page's events in seq order, when the queue
// has room: one frame each, or for a batch session runs of up to
// batchFrameBytes joined into one frame.
type runWriter struct {
	c     *client
	ctx   context.Context
	wait  *time.Timer
	gen   uint64
	run   []caughtUp
	bytes int
}

func (w *runWriter) add(seq int64, frame []byte, topic string) writeResult {
	if len(w.run) > 0 && w.bytes+len(frame) >= batchFrameBytes {
		if res := w.flush(); res != written {
			return res
		}
	}
	w.run = append(w.run, caughtUp{seq, frame, topic})
	w.bytes += len(frame) + 1
	if !w.c.batch {
		return w.flush()
	}
	return written
}

// flush queues the run as one frame.
func (w *runWriter) flush() writeResult {
	if len(w.run) == 0 {
		return written
	}
	res := w.c.writeCaughtUp(w.ctx, w.wait, w.run, w.gen)
	clear(w.run)
	w.run, w.bytes = w.run[:0], 0
	return res
}

// joinRun is the frame of a run: its events' frames joined by "\n".
func joinRun(run []caughtUp) []byte {
	if len(run) == 1 {
		return run[0].frame
	}
	frames := make([][]byte, len(run))
	n := len(run) - 1
	for i, e := range run {
		frames[i] = e.frame
		n += len(e.frame)
	}
	return joinFrames(frames, n)
}

// writeCaughtUp queues a run of caught-up events as one frame once the
// queue has room.
func (c *client) writeCaughtUp(ctx context.Context, wait *time.Timer, run []caughtUp, gen uint64) writeResult {
	frame := joinRun(run)
	if !c.waitForRoom(ctx, wait, len(frame)) {
		return writeStop
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeAt != 0 && run[len(run)-1].seq > c.closeAt {
		// Disconnected at closeAt: pages come in seq order, so every
		// event before it is queued with this run; nothing after it goes.
		c.unreserve(len(frame))
		keep := 0
		for keep < len(run) && run[keep].seq <= c.closeAt {
			keep++
		}
		if keep > 0 && c.filterGen == gen {
			frame = joinRun(run[:keep])
			c.inflight.Add(1) // the place just given back
			c.inflightBytes.Add(int64(len(frame)))
			c.queueRun(frame, run[:keep])
		}
		c.cursor = max(c.cursor, c.closeAt)
		return writeStop
	}
	if c.filterGen != gen {
		c.unreserve(len(frame))
		return writeRefiltered
	}
	if !c.queueRun(frame, run) {
		return writeStop
	}
	return written
}

// queueRun writes a run's reserved frame (c.mu held).
func (c *client) queueRun(frame []byte, run []caughtUp) bool {
	if err := c.out.Write(frame); err != nil {
		c.unreserve(len(frame))
		return false
	}
	c.cursor = run[len(run)-1].seq
	for _, e := range run {
		c.hub.metrics.queued(e.topic, 1)
	}
	return true
}

// checkResume decides, for since=N, between replaying and resync_required.
// It returns false if the client went away.
func (c *client) checkResume(ctx context.Context) bool {
	h := c.hub
	var bo backoff.Backoff
	for {
		st, err := h.store.Position(ctx)
		if err == nil {
			reason := ""
			// Replay work is proportional to the seq range scanned, so
			// REPLAY_MAX bounds the distance to the head.
			switch {
			case c.epoch != "" && c.epoch != h.Epoch():
				reason = ResyncEpoch
			case c.since > st.Head:
				reason = ResyncAhead
			case st.PastRetention(c.since):
				reason = ResyncRetention
			case st.Head-c.since > h.cfg.ReplayMax:
				reason = ResyncTooFar
			}
			if reason == "" {
				return true
			}
			h.metrics.resync()
			oldest := st.Oldest
			if oldest == 0 {
				oldest = st.Head + 1
			}
			c.writeControl(encodeControl(TypeResyncRequired, ResyncData{OldestSeq: oldest, Reason: reason}))
			c.mu.Lock()
			if c.state == stateCatchUp {
				// Not max(): a since beyond the head is another history.
				c.cursor = h.head.Load()
				c.state = stateLive
			}
			c.mu.Unlock()
			return false
		}
		if ctx.Err() != nil {
			return false
		}
		h.cfg.Logger.Warn("resume check failed; retrying", "err", err)
		if !bo.Wait(ctx) {
			return false
		}
	}
}
