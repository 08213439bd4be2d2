package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"

	"github.com/grupogad/outboxd/internal/startstop"
	"github.com/grupogad/outboxd/stream"
)

const clientKey = "outboxd.client"

// Hub is the WebSocket side of outboxd: it authenticates connections,
// routes relayed events to them and implements stream.Dispatcher.
type Hub struct {
	startstop.Base
	cfg     Config
	auth    *Authenticator
	store   Store
	m       *melody.Melody
	metrics *hubMetrics
	tel     telemetry

	// head is the newest seq Dispatch has announced. It is raised BEFORE the
	// events are delivered, so a catching-up client that sees cursor ≥ head
	// can rejoin live without a gap.
	head atomic.Int64
	// dispatched is the last seq Dispatch delivered (dedupe of the
	// tailer's at-least-once delivery); only Dispatch touches it.
	dispatched int64
	gen        uint64
	// everyone (valid at routes.version everyoneVersion, within one batch)
	// and targeted are Dispatch's copies of recipients.
	everyone        []*client
	everyoneVersion uint64
	everyoneValid   bool
	targeted        []*client
	// held are the batch sessions with pending frames in this Dispatch, and
	// merge joins them (client.flushPending).
	held  []*client
	merge frameMerger
	// routedSeq is the last event whose recipients were copied: written by
	// Dispatch under the read lock, read under the write lock.
	routedSeq int64
	// fanMu is held by Dispatch from the copy of one event's recipients
	// until every one of them has been handed the event, and by a session
	// that moves its own routing split (subscribe) before the hub lock:
	// with it, every event up to routedSeq has reached each of its
	// recipients (queued, or sent the session to catch up from the table),
	// so a split at routedSeq drops nothing routed under the old filter.
	// It costs Dispatch one uncontended lock per event; a subscribe waits
	// for one event's fan-out at most.
	fanMu sync.Mutex
	// epoch is the history head belongs to (outbox.epoch()).
	epoch atomic.Pointer[string]

	mu       sync.RWMutex
	routes   routing
	expiries expiryHeap

	closing atomic.Bool
	// attached counts sessions between attach and detach, catchingUp the
	// catch-up goroutines; endedCh is poked when either goes down (Stop).
	attached, catchingUp atomic.Int64
	endedCh              chan struct{}

	// revoked caches outbox.disconnect's revocations (revocation.go).
	revoked revocations

	connectLimiter *addrLimiter
	// catchUp bounds the bytes table catch-ups hold at once
	// (Config.CatchUpMemory), and one user's share of it.
	catchUp    *catchUpMemory
	handshakes atomic.Int32 // handshakes in flight (Limits.MaxHandshakes)
	recent     *recentFrames

	status struct { // relayStatus's cache
		mu  sync.Mutex
		at  time.Time
		st  stream.Status
		err error
	}
	ready struct { // readiness's cache
		mu     sync.Mutex
		at     time.Time
		status int
		checks map[string]string
	}
}

// New returns a Hub. auth and store are required.
func New(auth *Authenticator, store Store, cfg Config) *Hub {
	cfg.setDefaults()
	h := &Hub{cfg: cfg, auth: auth, store: store, catchUp: newCatchUpMemory(cfg.CatchUpMemory), metrics: newHubMetrics(cfg.MetricsTopicsMax), routes: newRouting(),
		connectLimiter: newAddrLimiter(cfg.Limits.ConnectRate, cfg.Limits.ConnectBurst),
		recent:         newRecentFrames(recentMaxEvents, recentMaxBytes), endedCh: make(chan struct{}, 1)}
	m := melody.New()
	m.Config.MessageBufferSize = cfg.SendBuffer
	m.Config.MaxMessageSize = cfg.MaxMessageSize
	m.Config.PingPeriod = cfg.HeartbeatInterval
	m.Config.PongWait = cfg.HeartbeatInterval * 3 / 2
	m.Config.WriteWait = cfg.WriteTimeout
	m.Upgrader.CheckOrigin = func(*http.Request) bool { return true } // checked before the upgrade
	// Client frames are small (pings); a larger message is still read
	// whole, in more reads. Writes take a buffer from a pool for the length
	// of one message, so an idle session holds none; a frame larger than
	// the buffer goes out in more than one write.
	// A request that passed the checks but is no WebSocket handshake gets
	// the same JSON error shape as every other refusal.
	m.Upgrader.Error = func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
		w.Header().Set("Sec-Websocket-Version", "13")
		writeJSON(w, status, httpError{"upgrade_failed", reason.Error()})
	}
	m.Upgrader.Subprotocols = []string{Subprotocol}
	m.Upgrader.ReadBufferSize = clientReadBuffer
	m.Upgrader.WriteBufferSize = clientWriteBuffer
	m.Upgrader.WriteBufferPool = &sync.Pool{}
	m.HandleConnect(h.onConnect)
	m.HandleDisconnect(h.onDisconnect)
	m.HandleMessage(h.onMessage)
	m.HandleMessageBinary(func(s *melody.Session, _ []byte) {
		if c := sessionClient(s); c != nil {
			c.writeControl(encodeControl(TypeError, ErrorData{Code: ErrCodeBadJSON, Message: "binary frames are not supported"}))
		}
	})
	m.HandleSentMessage(func(s *melody.Session, b []byte) {
		if c := sessionClient(s); c != nil {
			c.onSent(b)
		}
	})
	m.HandlePong(func(s *melody.Session) {
		if c := sessionClient(s); c != nil {
			c.allowFrame()
		}
	})
	m.HandleError(h.onError)
	h.m = m
	h.initTelemetry()
	return h
}

// perUserCatchUp is the most one user's catch-up pages hold at once.
func (h *Hub) perUserCatchUp() int64 { return h.catchUp.perUser }

// sessionClient returns s's client. It reads s.Keys without melody's
// session lock (Session.Get takes it, once per message sent): the map is
// given to melody whole when the session is created
// (HandleRequestWithKeys), before any of the session's handlers run, and
// nothing writes it afterwards (nothing calls Session.Set or UnSet).
func sessionClient(s *melody.Session) *client {
	c, _ := s.Keys[clientKey].(*client)
	return c
}

// Start reads the relay head (so that live clients start from it; Head
// returns it, and the tailer starts after it) and the revocations, and
// launches the token-expiry sweeper.
func (h *Hub) Start(ctx context.Context) error {
	hist, err := h.store.History(ctx)
	if err != nil {
		return fmt.Errorf("ws: %w", err)
	}
	// After the head: a disconnect at or below it committed before, and
	// its revocation is read here; one after it reaches Dispatch.
	if err := h.revoked.load(ctx, h.store, h.auth.MaxTTL()); err != nil {
		return err
	}
	h.head.Store(hist.Head)
	h.dispatched = hist.Head
	h.epoch.Store(&hist.Epoch)
	return h.StartFunc(ctx, h.sweepExpired)
}

// Head is the newest seq announced to clients.
func (h *Hub) Head() int64 { return h.head.Load() }

// Epoch is the history Head belongs to.
func (h *Hub) Epoch() string {
	if e := h.epoch.Load(); e != nil {
		return *e
	}
	return ""
}

// Rebase follows the relay onto another history (stream.Rebaser): the
// database was restored or recreated. Every session is closed with 1012;
// resuming with its old epoch, each is told to resync, and none is replayed
// events of the new history under seqs it saw in the old one.
func (h *Hub) Rebase(_ context.Context, epoch string, head int64) {
	h.mu.Lock()
	h.epoch.Store(&epoch)
	h.head.Store(head)
	h.dispatched = head
	h.recent.reset()
	clients := h.sessionsLocked()
	h.mu.Unlock()
	for _, c := range clients {
		c.closeWith(CloseHistoryChanged, func() { h.metrics.drop("history_changed") })
	}
}

var _ stream.Rebaser = (*Hub)(nil)

// sessionsLocked copies every session; the hub lock is held.
func (h *Hub) sessionsLocked() []*client {
	clients := make([]*client, 0, len(h.routes.all))
	for c := range h.routes.all {
		clients = append(clients, c)
	}
	return clients
}

// Stop closes every client with 1001 (reconnect with since), refuses new
// upgrades with 503 and waits for sessions to end or ctx to expire.
func (h *Hub) Stop(ctx context.Context) error {
	if h.closing.Swap(true) {
		return h.Base.Stop(ctx)
	}
	h.mu.RLock()
	clients := h.sessionsLocked()
	h.mu.RUnlock()
	for _, c := range clients {
		c.closeWith(CloseGoingAway, nil)
	}
	// Wait for every session and every catch-up goroutine to end: each
	// end pokes h.endedCh after its count went down, so no end is missed.
	var err error
	for h.attached.Load() > 0 || h.catchingUp.Load() > 0 {
		select {
		case <-h.endedCh:
		case <-ctx.Done():
			err = fmt.Errorf("ws: %d sessions and %d catch-ups still running: %w", h.attached.Load(), h.catchingUp.Load(), ctx.Err())
		}
		if err != nil {
			break
		}
	}
	_ = h.m.Close()
	return errors.Join(err, h.Base.Stop(ctx))
}

// ended counts a session down (detach) and pokes Stop.
func (h *Hub) ended() {
	h.attached.Add(-1)
	h.poke()
}

func (h *Hub) poke() {
	select {
	case h.endedCh <- struct{}{}:
	default:
	}
}

// goCatchUp runs c's catch-up in a goroutine the hub owns: Stop waits for
// it (it ends with its session).
func (h *Hub) goCatchUp(c *client, resume bool) {
	h.catchingUp.Add(1)
	go func() {
		defer func() {
			h.catchingUp.Add(-1)
			h.poke()
		}()
		c.catchUp(resume)
	}()
}

func (h *Hub) sweepExpired(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			h.mu.Lock()
			expired := h.expiries.popExpired(now)
			h.mu.Unlock()
			h.connectLimiter.sweep(now)
			h.revoked.expire(now, h.auth.MaxTTL())
			for _, c := range expired {
				c.closeWith(CloseTokenExpired, func() { h.metrics.drop("token_expired") })
			}
		}
	}
}

// Dispatch delivers events (in seq order) to their recipients. It is the
// stream.Dispatcher; events at or below the last dispatched seq are skipped.
//
// The hub lock is held only to copy each event's recipients, never while
// frames are queued: a connect or disconnect waits for one copy at most,
// not for a whole batch's fan-out.
func (h *Hub) Dispatch(ctx context.Context, events []stream.Event) error {
	if len(events) == 0 {
		return nil
	}
	// Encode the new events and keep them in the recent frames, then
	// announce the head (see Hub.head), then deliver: a session that falls
	// behind during the delivery finds every announced event in memory and
	// does not go to the table for it.
	frames := make([][]byte, len(events))
	for i := range events {
		if e := &events[i]; e.Seq > h.dispatched {
			if e.Malformed {
				h.metrics.malformed.Add(1)
				h.cfg.Logger.Warn("row relayed with a column that could not be decoded (created_at not a finite time): its timestamp is the time it was read",
					"id", e.ID, "seq", e.Seq, "topic", e.Topic)
			}
			// A control row keeps its place in the recent frames, without a
			// frame: it is never delivered.
			if !strings.HasPrefix(e.Topic, ReservedTopicPrefix) {
				frames[i] = encodeEvent(e)
			}
			h.recent.add(recentItem{seq: e.Seq, topic: e.Topic, frame: frames[i], users: e.Users, roles: e.Roles})
		}
	}
	if last := events[len(events)-1].Seq; last > h.head.Load() {
		h.head.Store(last)
	}
	for i := range events {
		e := &events[i]
		if e.Seq <= h.dispatched {
			continue
		}
		if strings.HasPrefix(e.Topic, ReservedTopicPrefix) {
			h.fanMu.Lock()
			h.control(e)
			h.fanMu.Unlock()
			h.dispatched = e.Seq
			continue
		}
		span := h.startProcessSpan(ctx, e)
		recipients := h.fanOut(e, frames[i])
		h.metrics.queued(e.Topic, recipients)
		endProcessSpan(span, recipients)
		h.dispatched = e.Seq
	}
	// Batch sessions get what this batch held for them in one frame each,
	// now or, behind a frame melody has yet to write, with it (onSent).
	for _, c := range h.held {
		c.mu.Lock()
		c.flushOrDefer(&h.merge)
		c.mu.Unlock()
	}
	h.merge.reset()
	// Hold no session past this batch.
	clear(h.held)
	h.held = h.held[:0]
	clear(h.targeted)
	clear(h.everyone)
	h.everyone, h.everyoneValid = h.everyone[:0], false
	return nil
}

// fanOut hands one event's frame to each of its recipients and returns how
// many queued it. fanMu covers the copy and the hand-over (see fanMu).
func (h *Hub) fanOut(e *stream.Event, frame []byte) int {
	h.fanMu.Lock()
	defer h.fanMu.Unlock()
	recipients := 0
	for _, c := range h.recipientsOf(e) {
		queued, held := c.deliverLive(e.Seq, frame, &h.merge)
		if queued {
			recipients++
		}
		if held {
			h.held = append(h.held, c)
		}
	}
	return recipients
}

// Unwritten is how many frames melody holds for the hub's sessions,
// queued and not yet written (each session's inflight, which counts a
// batch session's pending frame too): the fan-out's backlog, which the
// sequencer lets shrink before its next batch (stream.Fanout). It is not on
// the per-frame path, but it runs once per partial batch, under the read
// lock: it reads at most unwrittenSample sessions — all of them up to
// that, beyond it a sample in the map's random order, scaled up. Reading
// 10,000 sessions took ~0.2 ms (BenchmarkUnwritten), a few % of a core at
// a batch every 5 ms; the sample is enough to tell a fan-out still being
// written from one that is done.
func (h *Hub) Unwritten() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n, seen := 0, 0
	for c := range h.routes.all {
		n += int(c.inflight.Load())
		if seen++; seen == unwrittenSample {
			break
		}
	}
	if total := len(h.routes.all); seen < total {
		return n * total / seen
	}
	return n
}

// unwrittenSample is how many sessions Unwritten reads at most.
const unwrittenSample = 256

// control acts on a control row (topic outboxd.*), in seq order.
func (h *Hub) control(e *stream.Event) {
	if e.Topic != TopicDisconnect {
		h.cfg.Logger.Warn("unknown control row ignored", "topic", e.Topic, "seq", e.Seq)
		return
	}
	var d struct {
		Reason    string `json:"reason"`
		RevokedAt int64  `json:"revoked_at"` // unix seconds; 0 in rows from before migration 00010
	}
	_ = json.Unmarshal(e.Payload, &d)
	ce := CloseError{CloseRevoked.Code, closeReason(d.Reason, CloseRevoked.Reason)}
	// The revocation first, then the sessions: a connect admitted after
	// this copy checks the revocation under the hub lock (admit).
	if d.RevokedAt > 0 {
		h.revoked.add(e.Users, d.RevokedAt)
	}
	h.mu.RLock()
	h.routedSeq = e.Seq
	var sessions []*client
	for _, u := range e.Users {
		for c := range h.routes.byUser[u] {
			// A session opened with a token issued after the disconnect's
			// second (on a replica lagging behind it) is not cut; one of
			// the same second is: it may have been issued just before.
			if d.RevokedAt > 0 && !c.iat.IsZero() && c.iat.Unix() > d.RevokedAt {
				continue
			}
			sessions = append(sessions, c)
		}
	}
	h.mu.RUnlock()
	for _, c := range sessions {
		c.disconnectAfter(e.Seq, ce)
	}
	h.cfg.Logger.Info("disconnect", "users", len(e.Users), "sessions", len(sessions), "seq", e.Seq)
}

// recipientsOf copies e's recipients under the hub's read lock: every
// session for a broadcast (a copy kept until a session comes or goes), or
// the union of its users' and roles' sessions. Dispatch's goroutine only.
func (h *Hub) recipientsOf(e *stream.Event) []*client {
	h.mu.RLock()
	defer h.mu.RUnlock()
	h.routedSeq = e.Seq
	if e.Broadcast() {
		if !h.everyoneValid || h.everyoneVersion != h.routes.version {
			h.everyone = h.everyone[:0]
			for c := range h.routes.open {
				h.everyone = append(h.everyone, c)
			}
			h.everyoneVersion, h.everyoneValid = h.routes.version, true
		}
		if subs := h.routes.byTopic[e.Topic]; len(subs) > 0 {
			h.targeted = append(h.targeted[:0], h.everyone...)
			for c := range subs {
				h.targeted = append(h.targeted, c)
			}
			return h.targeted
		}
		return h.everyone
	}
	h.gen++
	h.targeted = h.targeted[:0]
	h.routes.each(e.Topic, e.Users, e.Roles, h.gen, func(c *client) { h.targeted = append(h.targeted, c) })
	return h.targeted
}

var _ stream.Dispatcher = (*Hub)(nil)

func (h *Hub) onConnect(s *melody.Session) {
	c := sessionClient(s)
	// Nothing reads the request after the upgrade: let it go with
	// net/http's goroutine (handleConnect returns on upgraded).
	s.Request = nil
	close(c.upgraded)
	conn := s.WebsocketConnection()
	if tc, ok := conn.UnderlyingConn().(interface{ SetWriteBuffer(int) error }); ok {
		_ = tc.SetWriteBuffer(h.cfg.SocketSendBuffer)
	}
	// Every client frame counts against the message rate, control frames
	// too: a ping flood is closed like a message flood. (melody installs no
	// ping handler; this one answers as gorilla's default does.)
	conn.SetPingHandler(func(data string) error {
		if !c.allowFrame() {
			return nil
		}
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(closeWriteWait))
		if errors.Is(err, websocket.ErrCloseSent) || isTimeout(err) {
			return nil
		}
		return err
	})
	h.attach(c, wsTransport{s})
}

// attach opens a session for c over tr: it is admitted under the hub lock
// (limits, revocations), given its welcome as its first frame, made
// routable, and sent to catch up from since if it asked. Every transport
// opens its sessions here.
func (h *Hub) attach(c *client, tr Transport) {
	c.out = tr
	h.attached.Add(1) // detach counts it down, whatever becomes of it here
	h.metrics.connects.Add(1)
	if c.handshake != nil {
		c.handshake.End()
		c.handshake = nil // a recording span holds its attributes
	}
	h.mu.Lock()
	if !h.admit(c) {
		h.mu.Unlock()
		return
	}
	// Under the hub lock no Dispatch runs, so the head read here is exactly
	// where this session's live delivery starts, and the welcome, queued
	// before the session is routable, is its first frame.
	head := h.head.Load()
	c.writeControl(encodeControl(TypeWelcome, WelcomeData{
		UserID: c.userID, Roles: c.roles, HeadSeq: head,
		HeartbeatInterval: int(h.cfg.HeartbeatInterval / time.Second), Epoch: h.Epoch(),
	}))
	c.mu.Lock()
	if c.hasSince {
		c.cursor, c.state = c.since, stateCatchUp
	} else {
		c.cursor, c.state = head, stateLive
	}
	c.mu.Unlock()
	h.routes.add(c)
	h.expiries.add(c)
	if h.cfg.Presence != nil {
		c.present = true
		h.cfg.Presence.SessionOpened(c.userID, c.roles)
	}
	h.mu.Unlock()
	if c.hasSince {
		h.goCatchUp(c, true)
	}
	h.cfg.Logger.Debug("client connected", "user", c.userID, "roles", c.roles, "remote", c.remote, "since", c.since)
}

// admit re-checks the connection limits under the hub lock, now that the
// session exists (the check before the upgrade can race with other
// upgrades). A session over the limit is closed with 1013 (try again later).
func (h *Hub) admit(c *client) bool {
	if h.closing.Load() {
		// Stop has collected the sessions to close: this one would escape.
		h.metrics.reject("shutting_down")
		c.closeWith(CloseGoingAway, nil)
		return false
	}
	l := h.cfg.Limits
	over := ""
	switch {
	case l.MaxConnections > 0 && len(h.routes.all) >= l.MaxConnections:
		over = "too_many_connections"
	case l.MaxConnectionsPerUser > 0 && len(h.routes.byUser[c.userID]) >= l.MaxConnectionsPerUser:
		over = "too_many_connections_for_user"
	}
	if over == "" {
		// The check before the upgrade may have run before a disconnect
		// reached this replica; control() records the revocation before it
		// copies the user's sessions, so under the hub lock one of the two
		// sees the other.
		if why := h.revoked.refuses(c.userID, c.iat, c.exp); why != "" {
			h.metrics.reject("revoked")
			c.closeWith(CloseError{CloseRevoked.Code, "revoked"}, nil)
			return false
		}
		return true
	}
	h.metrics.reject(over)
	c.closeWith(CloseError{1013, over}, nil)
	return false
}

// overLimit is the check before the upgrade: the answer is an HTTP status
// the client can read.
func (h *Hub) overLimit(userID string) (int, string) {
	l := h.cfg.Limits
	h.mu.RLock()
	defer h.mu.RUnlock()
	switch {
	case l.MaxConnections > 0 && len(h.routes.all) >= l.MaxConnections:
		return http.StatusServiceUnavailable, "too_many_connections"
	case l.MaxConnectionsPerUser > 0 && len(h.routes.byUser[userID]) >= l.MaxConnectionsPerUser:
		return http.StatusTooManyRequests, "too_many_connections_for_user"
	}
	return 0, ""
}

func (h *Hub) onDisconnect(s *melody.Session) {
	if c := sessionClient(s); c != nil {
		h.detach(c)
	}
}

// detach ends c's session: it leaves the routing index and the expiry
// heap, and everything waiting on it (its catch-up) stops.
func (h *Hub) detach(c *client) {
	if !c.markDone() {
		return
	}
	defer h.ended()
	h.mu.Lock()
	h.routes.remove(c)
	h.expiries.remove(c)
	if c.present {
		c.present = false
		h.cfg.Presence.SessionClosed(c.userID, c.roles)
	}
	h.mu.Unlock()
	h.cfg.Logger.Debug("client disconnected", "user", c.userID, "remote", c.remote)
}

func (h *Hub) onMessage(s *melody.Session, b []byte) {
	if c := sessionClient(s); c != nil {
		h.receive(c, b)
	}
}

// receive handles one client message: counted against the message rate,
// decoded, answered.
func (h *Hub) receive(c *client, b []byte) {
	if !c.allowFrame() {
		return
	}
	msg, bad := DecodeClientMessage(b)
	if bad != nil {
		c.writeControl(encodeControl(TypeError, bad))
		return
	}
	switch msg.Type {
	case "subscribe":
		h.subscribe(c, msg.Data.Topics)
	case "refresh":
		h.refresh(c, msg.Data.Token)
	default:
		c.writeControl(encodeControl(TypePong, nil))
	}
}

// subscribe replaces c's topic filter (nil: every topic) and answers
// subscribed with the seq N from which it applies: every event up to N was
// delivered under the old filter, every event after N follows the new one.
// With fanMu and the hub lock held no event is being routed or handed
// over: for a live session N is the last event routed, and every event up
// to it has reached it or was not for it; the next is routed under the new
// filter. (Without fanMu, an event whose recipients Dispatch had copied
// but not yet handed the frame was then dropped as already covered.) A
// catching-up session's N is its cursor; it drops the page it read under
// the old filter and reads on.
func (h *Hub) subscribe(c *client, topics []string) {
	if h.resplit(c, func() {
		c.topics = topicSet(topics)
		c.writeControl(encodeControl(TypeSubscribed, SubscribedData{Topics: topics, Seq: c.cursor}))
	}) {
		h.metrics.subscribes.Add(1)
	}
}

// resplit changes how c is routed (its filter, its roles) at a split: with
// fanMu and the hub lock held no event is being routed or handed over, c
// leaves the routing index, what was routed to it goes out first, change
// runs under c.mu with c.cursor at the split (a live session's: the last
// event routed; a catching-up one's: its cursor), and c comes back under
// its new routing. filterGen makes a catch-up page read the old way be
// read again. It reports false if c is closing.
func (h *Hub) resplit(c *client, change func()) bool {
	h.fanMu.Lock()
	defer h.fanMu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.routes.remove(c) {
		return false // closing
	}
	h.expiries.remove(c)
	c.mu.Lock()
	// Events routed the old way go before the answer.
	c.flushPending(nil)
	c.filterGen++
	if c.state == stateLive {
		c.cursor = max(c.cursor, h.routedSeq)
	}
	change()
	c.mu.Unlock()
	h.routes.add(c)
	h.expiries.add(c)
	return true
}

// refresh replaces c's token in band: validated as at connect (and against
// the revocations), its sub must be the session's user. The answer's seq N
// splits like subscribe's (fanMu, the hub lock): events ≤ N were routed by
// the old roles, events after N by the new; a catch-up page read under the
// old roles is dropped and read again (filterGen). The session then
// expires at the new exp. A refused token is answered with an error and
// the session keeps its old token and expiry.
func (h *Hub) refresh(c *client, raw string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	claims, err := h.auth.Validate(ctx, raw)
	if err == nil {
		if why := h.revoked.refuses(claims.UserID, claims.Issued, claims.Expires); why != "" {
			err = errors.New(why)
		}
	}
	if err != nil {
		h.metrics.refreshes("invalid_token")
		c.writeControl(encodeControl(TypeError, ErrorData{Code: ErrCodeInvalidToken, Message: err.Error()}))
		return
	}
	if claims.UserID != c.userID {
		h.metrics.refreshes("sub_mismatch")
		c.writeControl(encodeControl(TypeError, ErrorData{Code: ErrCodeSubMismatch, Message: "the token is for another user: reconnect with it instead"}))
		return
	}
	if h.resplit(c, func() {
		if c.present { // resplit holds the hub lock
			h.cfg.Presence.SessionClosed(c.userID, c.roles)
			h.cfg.Presence.SessionOpened(c.userID, claims.Roles)
		}
		c.roles, c.exp, c.iat = claims.Roles, claims.Expires, claims.Issued
		var exp int64
		if !c.exp.IsZero() {
			exp = c.exp.Unix()
		}
		c.writeControl(encodeControl(TypeRefreshed, RefreshedData{Roles: c.roles, Exp: exp, Seq: c.cursor}))
	}) {
		h.metrics.refreshes("ok")
	}
}

func (h *Hub) onError(s *melody.Session, err error) {
	// Never close from here: melody calls this handler from inside its
	// own write path (see docs/design.md, "melody: known traps").
	switch {
	case errors.Is(err, melody.ErrMessageBufferFull):
		h.metrics.sendError("queue_full")
	case errors.Is(err, melody.ErrWriteClosed), errors.Is(err, melody.ErrSessionClosed):
	case isTimeout(err):
		// melody ends the session after a failed write.
		h.metrics.sendError("write_timeout")
		if c := sessionClient(s); c != nil {
			c.logDropped("write_timeout")
		}
	}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// anyOrigin reports whether AllowedOrigins is "*".
func (h *Hub) anyOrigin() bool { return slices.Contains(h.cfg.AllowedOrigins, "*") }

// originAllowed checks the Origin header against AllowedOrigins.
func (h *Hub) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	for _, o := range h.cfg.AllowedOrigins {
		if o == "*" || strings.EqualFold(strings.TrimRight(o, "/"), origin) {
			return true
		}
	}
	return false
}
