package ws

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grupogad/outboxd/internal/backoff"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/grupogad/outboxd/relay"
)

// frameWriter queues a text frame without blocking (melody.Session.Write).
type frameWriter interface{ Write(msg []byte) error }

type clientState int

const (
	stateLive    clientState = iota // events come from Dispatch
	stateCatchUp                    // events come from the table, by catchUp
	stateClosed
)

// controlReserve is how many queue slots live events leave free for control
// frames (pong, error), so a busy client still gets its pongs.
const controlReserve = 4

// catchUpBatch is the seq range one catch-up read scans (so at most that
// many rows); Config.CatchUpPageBytes bounds its bytes.
const catchUpBatch = 256

// maxRowBytes is the largest payload a row may carry (the table's CHECK):
// a page read stops at its byte budget less this, so with the row that
// crosses it the page stays within the budget.
const maxRowBytes = 256 << 10

// client is one WebSocket session.
type client struct {
	hub    *Hub
	sess   *melody.Session
	out    frameWriter // sess, except in benchmarks
	userID string
	roles  []string
	exp    time.Time
	remote string

	heapIdx int // position in Hub.expiries; guarded by Hub.mu

	since    int64
	hasSince bool
	epoch    string // the history since belongs to ("": not given)

	msgLimiter *rate.Limiter // client frames; nil: unlimited

	// overSince is when the client last went over ReplayMax behind, and
	// overBehind how far behind it was then; catch-up goroutine only.
	overSince  time.Time
	overBehind int64
	// pageBudget is the byte budget of the next table page, and noSkip
	// turns off the entitlement lookup on empty pages (catch-up goroutine
	// only; see pageFromTable).
	pageBudget int
	noSkip     bool

	// handshake is the connect span, ended once the upgrade is done.
	handshake trace.Span
	// upgraded is closed once the connection is hijacked (onConnect) or
	// the upgrade failed.
	upgraded chan struct{}

	// mark is Dispatch's visit stamp (routing.each); only Dispatch touches it.
	mark uint64

	mu     sync.Mutex
	state  clientState
	cursor int64 // every seq ≤ cursor was delivered or is not for this client
	// topics is the session's topic filter (nil: every topic). It changes
	// only with the session out of the routing index (Hub.subscribe), under
	// both the hub lock and mu; filterGen counts the changes, so that a
	// catch-up page read under the old filter is not written under the new.
	topics    map[string]struct{}
	filterGen uint64
	// closeAt is the seq of an outbox.disconnect for this session (0:
	// none), and closeAs its close: the session is closed once it has every
	// event before closeAt (cursor ≥ closeAt-1) and its queue is empty, and
	// is given nothing after closeAt. closing mirrors closeAt ≠ 0 for
	// onSent, which must not take mu on every frame.
	closeAt int64
	closeAs CloseError
	closing atomic.Bool

	// inflight counts frames queued in melody and not yet written, so that a
	// write never meets a full melody queue (which would drop the frame).
	inflight      atomic.Int32
	inflightBytes atomic.Int64
	sent          chan struct{} // poked by HandleSentMessage
	done          chan struct{} // closed on disconnect
	doneOnce      sync.Once

	closeOnce sync.Once
}

// allowFrame counts one client frame (data or control) against the message
// rate; over it, the client is closed with 1008 and false is returned.
func (c *client) allowFrame() bool {
	if c.msgLimiter == nil || c.msgLimiter.Allow() {
		return true
	}
	if c.closeWith(ClosePolicy) {
		c.hub.metrics.drop("message_rate")
	}
	return false
}

// reserve takes a place in the melody queue for a frame of n bytes: at
// most limit frames, and for events at most SendBufferBytes queued (a
// frame larger than that still goes, alone). It reports false when full.
func (c *client) reserve(limit int32, n int, isEvent bool) bool {
	if c.inflight.Add(1) > limit {
		c.inflight.Add(-1)
		return false
	}
	if b := c.inflightBytes.Add(int64(n)); isEvent && b > int64(c.hub.cfg.SendBufferBytes) && b != int64(n) {
		c.unreserve(n)
		return false
	}
	return true
}

func (c *client) unreserve(n int) {
	c.inflight.Add(-1)
	c.inflightBytes.Add(-int64(n))
}

// writeControl queues a control frame if there is room.
func (c *client) writeControl(frame []byte) bool {
	if !c.reserve(int32(c.hub.cfg.SendBuffer), len(frame), false) {
		c.hub.metrics.sendError("queue_full")
		return false
	}
	if err := c.out.Write(frame); err != nil {
		c.unreserve(len(frame))
		return false
	}
	return true
}

// deliverLive is Dispatch's path: write if live and there is room, else
// switch to catching up from the table. It reports whether it queued the
// frame.
func (c *client) deliverLive(seq int64, frame []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateLive || seq <= c.cursor || (c.closeAt != 0 && seq > c.closeAt) {
		return false
	}
	if !c.reserve(int32(c.hub.cfg.SendBuffer-controlReserve), len(frame), true) {
		c.state = stateCatchUp
		c.hub.metrics.catchUp()
		go c.catchUp(false)
		return false
	}
	if err := c.out.Write(frame); err != nil {
		c.unreserve(len(frame))
		return false
	}
	c.cursor = seq
	return true
}

func (c *client) onSent(frame []byte) {
	c.hub.observeSent(frame)
	c.unreserve(len(frame))
	if c.closing.Load() {
		c.closeIfDrained()
	}
	select {
	case c.sent <- struct{}{}:
	default:
	}
}

func (c *client) markDone() {
	c.doneOnce.Do(func() {
		c.mu.Lock()
		c.state = stateClosed
		c.mu.Unlock()
		close(c.done)
	})
}

func (c *client) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// closeWith sends a close frame straight on the connection — never through
// melody's queue, which may be full (see docs/design.md, "melody: known traps") — and then
// closes it. WriteControl is safe concurrently with melody's writer. It runs
// in the background: a slow client still reading gets the frame after the
// data queued before it; a client whose socket stays full sees the
// connection cut (1006) and reconnects with since just the same.
//
// It reports whether this call started the close (false if one was already
// under way), so that a reason is counted once per session.
func (c *client) closeWith(ce CloseError) (started bool) {
	c.closeOnce.Do(func() {
		started = true
		conn := c.sess.WebsocketConnection()
		go func() {
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(ce.Code, ce.Reason),
				time.Now().Add(closeWriteWait))
			_ = conn.Close()
		}()
	})
	return started
}

// closeWriteWait bounds the wait to hand a close frame to the socket.
const closeWriteWait = 2 * time.Second

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
	var buf []relay.Event // allocated on the first table read only
	var memBuf []recentItem
	wait := time.NewTimer(time.Hour)
	defer wait.Stop()
	for !c.closed() {
		c.mu.Lock()
		cursor, topics, gen := c.cursor, c.topicList(), c.filterGen
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
		if mem, to, ok := h.recent.after(cursor, catchUpBatch, c, topics, memBuf[:0]); ok {
			memBuf, scannedTo, fromMemory = mem, to, true
			h.metrics.pagesMemory.Add(1)
			for i := range memBuf {
				res := c.writeCaughtUp(ctx, wait, memBuf[i].seq, memBuf[i].frame, memBuf[i].topic, gen)
				if res == writeStop {
					return
				}
				if res == writeRefiltered {
					refiltered = true
					break
				}
			}
		}
		if !fromMemory {
			if buf == nil {
				buf = make([]relay.Event, 0, catchUpBatch)
			}
			var err error
			var done bool
			scannedTo, buf, done, refiltered, err = c.pageFromTable(ctx, wait, cursor, topics, gen, buf[:0])
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
// them. The page holds a reservation on the hub's catch-up memory from the
// read until its last frame is queued: twice its byte budget (its rows and
// their frames; a read stops at the budget less one row of the largest
// size). The budget starts at two rows of the largest size and doubles,
// up to CatchUpPageBytes, while pages come back full: clients replaying
// small events hold little, those replaying large ones get large pages.
// done is true when the session ended or was cut.
func (c *client) pageFromTable(ctx context.Context, wait *time.Timer, cursor int64, topics []string, gen uint64,
	buf []relay.Event) (scannedTo int64, _ []relay.Event, done, refiltered bool, err error) {
	h := c.hub
	budget := max(c.pageBudget, 2*maxRowBytes)
	reserve := int64(2 * budget)
	if err := h.catchUpMem.Acquire(ctx, reserve); err != nil {
		return 0, buf, true, false, nil // ctx ended: the client went away
	}
	defer h.catchUpMem.Release(reserve)
	page, buf, err := h.store.ReadEntitled(ctx, relay.ReplayQuery{
		After: cursor, Span: catchUpBatch, MaxBytes: budget - maxRowBytes,
		User: c.userID, Roles: c.roles, Topics: topics, SkipEmpty: !c.noSkip,
	}, buf)
	if err != nil {
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
		if c.closeWith(ClosePastRetention) {
			h.metrics.drop("past_retention")
		}
		return 0, buf, true, false, nil
	}
	for i := range buf {
		switch c.writeCaughtUp(ctx, wait, buf[i].Seq, encodeEvent(&buf[i]), buf[i].Topic, gen) {
		case writeStop:
			return 0, buf, true, false, nil
		case writeRefiltered:
			return 0, buf, false, true, nil
		}
		buf[i].Payload = nil // the frame has it now
	}
	return page.ScannedTo, buf, false, false, nil
}

// writeCaughtUp queues one caught-up frame when the queue has room; false
// if the client went away or was cut.
type writeResult int

const (
	written         writeResult = iota
	writeStop                   // the client went away or was cut
	writeRefiltered             // the filter changed since the page was read: nothing written
)

func (c *client) writeCaughtUp(ctx context.Context, wait *time.Timer, seq int64, frame []byte, topic string, gen uint64) writeResult {
	if !c.waitForRoom(ctx, wait, len(frame)) {
		return writeStop
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeAt != 0 && seq > c.closeAt {
		// Disconnected at closeAt: pages come in seq order, so every
		// event before it is queued; nothing after it goes.
		c.unreserve(len(frame))
		c.cursor = max(c.cursor, c.closeAt)
		return writeStop
	}
	if c.filterGen != gen {
		c.unreserve(len(frame))
		return writeRefiltered
	}
	if err := c.out.Write(frame); err != nil {
		c.unreserve(len(frame))
		return writeStop
	}
	c.cursor = seq
	c.hub.metrics.queued(topic, 1)
	return written
}

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
	if ready && c.closeWith(ce) {
		c.hub.metrics.drop("disconnected")
	}
}

// topicList is the filter as a list (nil: every topic); c.mu held.
func (c *client) topicList() []string {
	if c.topics == nil {
		return nil
	}
	out := make([]string, 0, len(c.topics))
	for t := range c.topics {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// wants reports whether the filter lets topic through; c.mu held, or the
// hub lock (the filter changes only under both).
func (c *client) wants(topic string) bool {
	if c.topics == nil {
		return true
	}
	_, ok := c.topics[topic]
	return ok
}

func topicSet(topics []string) map[string]struct{} {
	if topics == nil {
		return nil
	}
	set := make(map[string]struct{}, len(topics))
	for _, t := range topics {
		set[t] = struct{}{}
	}
	return set
}

// waitForRoom blocks until the melody queue has room for an event. It
// gives up, closing with 4008, if the client falls more than ReplayMax
// behind meanwhile (a client that stopped reading).
func (c *client) waitForRoom(ctx context.Context, wait *time.Timer, n int) bool {
	limit := int32(c.hub.cfg.SendBuffer - controlReserve)
	for !c.reserve(limit, n, true) {
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
	if c.closeWith(CloseTooFarBehind) {
		c.hub.metrics.drop("too_far_behind")
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
