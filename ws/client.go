package ws

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/grupogad/outboxd/internal/backoff"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/grupogad/outboxd/stream"
)

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
	out    Transport // set when the session opens (Hub.attach)
	userID string
	roles  []string
	exp    time.Time
	iat    time.Time // the token's iat (zero: none), against revocations
	remote string

	heapIdx int // position in Hub.expiries; guarded by Hub.mu

	since    int64
	hasSince bool
	epoch    string // the history since belongs to ("": not given)

	msgLimiter *rate.Limiter // client frames; nil: unlimited

	// batch: the client allows several events per frame (batch=1), so
	// Dispatch holds its frames in pending and writes them as one.
	batch bool

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
	// pending are event frames Dispatch routed to a batch session and has
	// not written yet (their queue places are reserved, cursor covers
	// them); flushPending writes them as one frame, before anything else
	// is written for the session and at the end of every Dispatch —
	// unless melody still has a frame of the session's to write: then they
	// wait (deferred) and the write of the last such frame flushes them
	// (onSent), so that a session that falls behind gets the events of
	// several batches in one frame, one write, instead of a write each.
	pending      [][]byte
	pendingBytes int // their bytes, with a separator each
	// deferred says pending may be waiting for onSent; set under mu, read
	// by onSent without it (see flushOrDefer for why none is missed).
	deferred atomic.Bool

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
	c.closeWith(ClosePolicy, func() { c.dropped("message_rate") })
	return false
}

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
// frame, and held whether the frame is the first one pending for a batch
// session (Dispatch then flushes the session at the end of the batch).
func (c *client) deliverLive(seq int64, frame []byte, merge *frameMerger) (queued, held bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateLive || seq <= c.cursor || (c.closeAt != 0 && seq > c.closeAt) {
		return false, false
	}
	slots := int32(1)
	if len(c.pending) > 0 {
		slots = 0 // joins the pending frame, which has its place
	}
	if !c.reserveSlots(int32(c.hub.cfg.SendBuffer-controlReserve), slots, len(frame), true) {
		// What is pending goes first: the catch-up starts after it.
		c.flushPending(merge)
		c.state = stateCatchUp
		c.hub.metrics.catchUp()
		c.hub.goCatchUp(c, false)
		return false, false
	}
	c.cursor = seq
	if !c.batch {
		if err := c.out.Write(frame); err != nil {
			c.unreserve(len(frame))
			return false, false
		}
		return true, false
	}
	c.pending = append(c.pending, frame)
	c.pendingBytes += len(frame) + 1
	if c.pendingBytes >= batchFrameBytes {
		c.flushPending(merge)
	}
	return true, len(c.pending) == 1
}

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

func (c *client) onSent(frame []byte) {
	c.hub.observeSent(frame)
	c.unreserve(len(frame))
	if c.deferred.Load() {
		c.flushDeferred()
	}
	if c.closing.Load() {
		c.closeIfDrained()
	}
	select {
	case c.sent <- struct{}{}:
	default:
	}
}

// dropped counts a session the server closed on a reason of its own and
// logs it at info: the client sees a close code (or, when its socket is
// full, only a cut connection, 1006), the operator sees why.
func (c *client) dropped(reason string) {
	c.hub.metrics.drop(reason)
	c.logDropped(reason)
}

func (c *client) logDropped(reason string) {
	c.hub.cfg.Logger.Info("client dropped", "reason", reason, "user", c.userID, "remote", c.remote)
}

// markDone marks the session ended; true the first time only.
func (c *client) markDone() (first bool) {
	c.doneOnce.Do(func() {
		c.mu.Lock()
		c.state = stateClosed
		c.mu.Unlock()
		close(c.done)
		first = true
	})
	return first
}

func (c *client) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// closeWith closes the session with ce through its transport, in the
// background: the close goes to the client straight, not behind queued
// frames (Transport.Close). A slow client still reading gets it after the
// data queued before; a client whose socket stays full sees the connection
// cut (1006) and reconnects with since just the same.
//
// counted, if not nil, is run by the call that starts the close (none if
// one is already under way), so that a reason is counted once per session,
// and before the close goes out, so that a client that has seen the close
// finds it counted (in /ws/stats, the metrics, the log).
func (c *client) closeWith(ce CloseError, counted func()) {
	c.closeOnce.Do(func() {
		if counted != nil {
			counted()
		}
		go c.out.Close(ce, c.done)
	})
}

// closeWriteWait bounds the wait to hand a control frame (close, pong) to
// the socket, and the wait for the client to answer a close (closeWith).
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
	var buf []stream.Event // allocated on the first table read only
	var memBuf []recentItem
	var run []caughtUp
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
func (c *client) pageFromTable(ctx context.Context, wait *time.Timer, cursor int64, topics []string, gen uint64,
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
		User: c.userID, Roles: c.roles, Topics: topics, SkipEmpty: !c.noSkip,
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
	for {
		if queued := c.inflightBytes.Load(); queued <= limit/2 {
			return int(limit - queued), true
		}
		wait.Reset(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			return 0, false
		case <-c.sent:
		case <-wait.C:
			c.mu.Lock()
			cursor := c.cursor
			c.mu.Unlock()
			if c.tooFarBehind(cursor) {
				return 0, false
			}
		}
	}
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
	c.closeWith(CloseTooFarBehind, func() { c.dropped("too_far_behind") })
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
