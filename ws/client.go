package ws

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
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

// client is one session, over whichever Transport carries it. Its logic
// is split by concept: flow.go (queue accounting), batch.go (batch=1
// frames), catchup.go (catch-up from memory or the table), disconnect.go
// (outbox.disconnect), and the live path and lifecycle here.
type client struct {
	hub *Hub
	out Transport // set when the session opens (Hub.attach)
	// transport names it in metrics: TransportWebSocket or TransportSSE.
	transport string
	userID    string
	roles     []string
	exp       time.Time
	iat       time.Time // the token's iat (zero: none), against revocations
	remote    string

	heapIdx int // position in Hub.expiries; guarded by Hub.mu
	// present: the session was admitted and counted by Config.Presence
	// (guarded by Hub.mu).
	present bool

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
