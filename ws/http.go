package ws

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/grupogad/outboxd/stream"
)

// Routes registers the hub's public endpoints on mux: /ws/connect,
// /ws/_test/broadcast, /ws/_test/token, /healthz, /readyz. /ws/stats is
// operational: register StatsHandler where it belongs (the public mux by
// default, or an admin address).
func (h *Hub) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /ws/connect", h.handleConnect)
	mux.HandleFunc("GET /ws/sse", h.handleSSE)
	mux.HandleFunc("POST /ws/_test/broadcast", h.handleTestBroadcast)
	mux.HandleFunc("POST /ws/_test/token", h.handleTestToken)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.Handle("GET /readyz", h.ReadyHandler(false))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type httpError struct {
	Error  string `json:"error"`
	Detail string `json:"detail"`
}

// opening is a stream request that passed the checks every transport
// shares: the session to attach, and the handshake slot it holds.
type opening struct {
	c            *client
	fromProtocol bool
	release      func() // gives the handshake slot back (once)
}

// openSession runs the checks every transport shares, before any stream
// starts — shutdown, origin, handshakes in flight, connect rate, the token
// and its revocation, since/epoch/topics (and batch where the transport
// takes it), the connection limits — and answers a refusal with its HTTP
// status and JSON error. ok is false when it answered. lastEventID, when
// the request carries one (SSE), is the since that wins over the query's.
func (h *Hub) openSession(w http.ResponseWriter, r *http.Request, span trace.Span, withBatch bool) (o opening, ok bool) {
	reject := func(status int, reason string, body any) {
		h.metrics.reject(reason)
		endWithError(span, reason)
		writeJSON(w, status, body)
	}
	o.release = func() {}
	if h.closing.Load() {
		reject(http.StatusServiceUnavailable, "shutting_down", httpError{"shutting_down", "server is shutting down: reconnect to another replica"})
		return o, false
	}
	if !h.originAllowed(r) {
		reject(http.StatusForbidden, "origin", httpError{"forbidden_origin", "origin not allowed"})
		return o, false
	}
	if limit := h.cfg.Limits.MaxHandshakes; limit > 0 {
		if h.handshakes.Add(1) > int32(limit) {
			h.handshakes.Add(-1)
			w.Header().Set("Retry-After", "1")
			reject(http.StatusServiceUnavailable, "busy", httpError{"busy", "too many connections being opened; retry in a second"})
			return o, false
		}
		var once sync.Once
		o.release = func() { once.Do(func() { h.handshakes.Add(-1) }) }
	}
	fail := func() (opening, bool) { o.release(); return o, false }
	addr := clientAddr(r, h.cfg.TrustedProxies)
	if ok, wait := h.connectLimiter.allow(addr, time.Now()); !ok {
		w.Header().Set("Retry-After", retryAfter(wait))
		reject(http.StatusTooManyRequests, "rate_limited", httpError{"rate_limited", "too many connection attempts from this address; retry later"})
		return fail()
	}
	raw, fromProtocol := tokenFromRequest(r)
	claims, err := h.auth.Validate(r.Context(), raw)
	if err != nil {
		reject(http.StatusUnauthorized, "invalid_token", httpError{"invalid_token", err.Error()})
		return fail()
	}
	if why := h.revoked.refuses(claims.UserID, claims.Issued, claims.Expires); why != "" {
		reject(http.StatusUnauthorized, "revoked", httpError{"invalid_token", why})
		return fail()
	}
	q := r.URL.Query()
	sinceRaw := q.Get("since")
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		sinceRaw = id // an EventSource resuming: its last id wins
	}
	since, hasSince, err := ParseSince(sinceRaw)
	if err != nil {
		reject(http.StatusBadRequest, "invalid_since", httpError{"invalid_since", err.Error()})
		return fail()
	}
	epoch, err := ParseEpoch(q.Get("epoch"))
	if err != nil {
		reject(http.StatusBadRequest, "invalid_epoch", httpError{"invalid_epoch", err.Error()})
		return fail()
	}
	topics, err := ParseTopics(q.Get("topics"))
	if err != nil {
		reject(http.StatusBadRequest, "invalid_topics", httpError{"invalid_topics", err.Error()})
		return fail()
	}
	batch := true // a one-way stream writes each envelope as an event of its own anyway
	if withBatch {
		if batch, err = ParseBatch(q.Get("batch")); err != nil {
			reject(http.StatusBadRequest, "invalid_batch", httpError{"invalid_batch", err.Error()})
			return fail()
		}
	}
	if status, reason := h.overLimit(claims.UserID); status != 0 {
		reject(status, reason, httpError{reason, "connection limit reached; retry later"})
		return fail()
	}
	o.c = h.newClient(claims, addr, sessionParams{since: since, hasSince: hasSince, epoch: epoch, topics: topics, batch: batch})
	o.c.handshake = span
	o.fromProtocol = fromProtocol
	return o, true
}

// handleConnect authenticates and upgrades. It is not wrapped by otelhttp
// (the request lasts as long as the connection): a short "ws.handshake"
// span covers the checks and the upgrade instead.
func (h *Hub) handleConnect(w http.ResponseWriter, r *http.Request) {
	_, span := h.tel.tracer.Start(r.Context(), "ws.handshake", trace.WithSpanKind(trace.SpanKindServer))
	o, ok := h.openSession(w, r, span, true)
	if !ok {
		return
	}
	defer o.release()
	c, fromProtocol := o.c, o.fromProtocol

	// The token stays out of every log: melody keeps the request, so drop
	// it from the URL too.
	r.URL.RawQuery = ""
	r.Header.Del("Authorization")
	if fromProtocol {
		// The upgrade answers with outboxd.v1; the token goes no further.
		r.Header.Set("Sec-WebSocket-Protocol", Subprotocol)
	}
	// melody serves the session in the goroutine that calls it, for as long
	// as the connection lasts. Call it from a fresh goroutine and return
	// once the connection is hijacked: net/http's goroutine then ends and
	// frees what it held for the request (its 4 KiB read and write buffers,
	// the request, its deep stack), about a third of an idle session's
	// memory (BENCHMARKS.md, scenario 5).
	go func() {
		if err := h.m.HandleRequestWithKeys(w, r, map[string]any{clientKey: c}); err != nil {
			h.metrics.reject("upgrade")
			endWithError(span, "upgrade")
			h.cfg.Logger.Debug("upgrade failed", "err", err, "remote", c.remote)
			close(c.upgraded) // onConnect never ran: the handler may return
		}
	}()
	<-c.upgraded
}

// sessionParams are what a client asks for when it connects.
type sessionParams struct {
	since    int64
	hasSince bool
	epoch    string
	topics   []string
	batch    bool
}

// newClient is a session for claims' holder at remote, not yet attached
// to a transport (Hub.attach).
func (h *Hub) newClient(claims Claims, remote string, p sessionParams) *client {
	c := &client{
		hub: h, userID: claims.UserID, roles: claims.Roles, exp: claims.Expires, iat: claims.Issued,
		remote: remote, since: p.since, hasSince: p.hasSince, epoch: p.epoch, topics: topicSet(p.topics), heapIdx: -1, batch: p.batch,
		sent: make(chan struct{}, 1), done: make(chan struct{}), upgraded: make(chan struct{}),
		transport: TransportWebSocket,
	}
	if l := h.cfg.Limits; l.MessageRate > 0 {
		c.msgLimiter = rate.NewLimiter(rate.Limit(l.MessageRate), max(l.MessageBurst, 1))
	}
	return c
}

// Stats is /ws/stats's "stats" object: the seed's fields, plus relay.
type Stats struct {
	TotalConnections  int             `json:"total_connections"`
	ConnectionsByRole map[string]int  `json:"connections_by_role"`
	UniqueUsers       int             `json:"unique_users"`
	HeartbeatActive   bool            `json:"heartbeat_active"`
	HeartbeatInterval int             `json:"heartbeat_interval"`
	Metrics           MetricsSnapshot `json:"metrics"`
	Relay             RelayStats      `json:"relay"`
}

// RelayStats is the relay's position as seen by this replica.
type RelayStats struct {
	stream.Status
	// DispatchedSeq is the last seq this replica's hub delivered.
	DispatchedSeq int64  `json:"dispatched_seq"`
	Error         string `json:"error,omitempty"`
	// Reads is where event reads go, with a standby (READ_DATABASE_URL).
	Reads *stream.ReadsStatus `json:"reads,omitempty"`
	// Subscriptions: sessions with a topic filter, and how many name each
	// topic. (Here, in the object the contract leaves open, so that the
	// seed's fields of "stats" stay exactly as they were.)
	Subscriptions struct {
		Sessions int            `json:"sessions"`
		ByTopic  map[string]int `json:"by_topic"`
	} `json:"subscriptions"`
}

// Stats returns the current statistics.
func (h *Hub) Stats(ctx context.Context) Stats {
	h.mu.RLock()
	s := Stats{
		TotalConnections:  len(h.routes.all),
		ConnectionsByRole: make(map[string]int, len(h.routes.roles)),
		UniqueUsers:       len(h.routes.byUser),
		HeartbeatActive:   true,
		HeartbeatInterval: int(h.cfg.HeartbeatInterval / time.Second),
	}
	for role, n := range h.routes.roles {
		s.ConnectionsByRole[role] = n
	}
	s.Relay.Subscriptions.Sessions = len(h.routes.all) - len(h.routes.open)
	s.Relay.Subscriptions.ByTopic = make(map[string]int, len(h.routes.byTopic))
	for topic, set := range h.routes.byTopic {
		s.Relay.Subscriptions.ByTopic[topic] = len(set)
	}
	h.mu.RUnlock()
	if h.cfg.HideRoleNames {
		clear(s.ConnectionsByRole)
	}
	s.Metrics = h.metrics.snapshot()
	s.Relay.DispatchedSeq = h.head.Load()
	st, err := h.relayStatus(ctx)
	if err != nil {
		s.Relay.Error = "database unavailable"
	}
	s.Relay.Status = st
	if h.cfg.Reads != nil {
		r := h.cfg.Reads()
		s.Relay.Reads = &r
	}
	return s
}

// statusTTL is how long /ws/stats and /metrics reuse one read of the
// relay's status: scraping them often must not load the database.
const statusTTL = time.Second

// relayStatus reads the relay's status from the database at most once per
// statusTTL; concurrent callers wait for the one read under way.
func (h *Hub) relayStatus(ctx context.Context) (stream.Status, error) {
	h.status.mu.Lock()
	defer h.status.mu.Unlock()
	if !h.status.at.IsZero() && time.Since(h.status.at) < statusTTL {
		return h.status.st, h.status.err
	}
	h.status.st, h.status.err = h.store.Status(ctx)
	h.status.at = time.Now()
	return h.status.st, h.status.err
}

// StatsHandler serves GET /ws/stats.
func (h *Hub) StatsHandler() http.Handler { return http.HandlerFunc(h.handleStats) }

func (h *Hub) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"status":    "ok",
		"stats":     h.Stats(r.Context()),
		"timestamp": formatTime(time.Now()),
	})
}

const maxTestBody = 16 << 10

func (h *Hub) handleTestBroadcast(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Production {
		writeJSON(w, http.StatusForbidden, map[string]string{"status": "forbidden"})
		return
	}
	// A cross-site page must not make a visitor's browser broadcast (a
	// simple POST needs no CORS preflight): an Origin, which browsers send
	// on every POST, must be allowed as for /ws/connect, and where any
	// origin may connect (ALLOWED_ORIGINS=*), be this server's own.
	if !h.originAllowed(r) || (r.Header.Get("Origin") != "" && h.anyOrigin() && !sameOrigin(r)) {
		writeJSON(w, http.StatusForbidden, httpError{"forbidden_origin", "origin not allowed"})
		return
	}
	n := NotificationData{Title: "BroadcastTest", Content: "Mensaje de prueba", Level: "info"}
	if err := decodeOptionalBody(r, &n); err != nil {
		writeJSON(w, http.StatusBadRequest, httpError{"invalid_body", err.Error()})
		return
	}
	sent := h.Broadcast(n)
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "sent": sent, "metrics": h.metrics.snapshot()})
}

// Broadcast sends a notification frame to every connection and returns
// how many it was queued for.
func (h *Hub) Broadcast(n NotificationData) int {
	frame := encodeControl(TypeNotification, n)
	h.mu.RLock()
	clients := h.sessionsLocked()
	h.mu.RUnlock()
	sent := 0
	for _, c := range clients {
		if c.writeControl(frame) {
			sent++
		}
	}
	h.metrics.broadcast(sent)
	return sent
}

// sameOrigin reports whether r's Origin names the host r was sent to.
func sameOrigin(r *http.Request) bool {
	u, err := url.Parse(r.Header.Get("Origin"))
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

// decodeOptionalBody decodes a JSON object body into v; an empty body keeps v.
func decodeOptionalBody(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxTestBody+1))
	if err != nil {
		return err
	}
	if len(body) > maxTestBody {
		return errBodyTooLarge
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

type bodyError string

func (e bodyError) Error() string { return string(e) }

const errBodyTooLarge = bodyError("body larger than 16 KiB")

// MaxTestTokenTTL bounds development tokens.
const MaxTestTokenTTL = 24 * time.Hour

func (h *Hub) handleTestToken(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Production || !h.cfg.TestTokens {
		writeJSON(w, http.StatusForbidden, map[string]string{"status": "forbidden"})
		return
	}
	req := struct {
		Sub   string   `json:"sub"`
		Role  string   `json:"role"`
		Roles []string `json:"roles"`
		TTL   int      `json:"ttl"`
	}{Sub: "dev-user", TTL: 3600}
	if err := decodeOptionalBody(r, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, httpError{"invalid_body", err.Error()})
		return
	}
	ttl := time.Duration(req.TTL) * time.Second
	if req.Sub == "" || ttl <= 0 || ttl > MaxTestTokenTTL {
		writeJSON(w, http.StatusBadRequest, httpError{"invalid_body", "sub must be non-empty and ttl between 1 and 86400 seconds"})
		return
	}
	roles := req.Roles
	if req.Role != "" {
		roles = append([]string{req.Role}, roles...)
	}
	tok, err := h.auth.Mint(req.Sub, roles, ttl)
	if err != nil {
		writeJSON(w, http.StatusNotImplemented, httpError{"no_secret_key", err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": tok})
}

// ReadyHandler serves /readyz: 200 {"status":"ok"} or 503
// {"status":"unavailable"}, the checks named only when detail is set (the
// admin address): positions and errors are not the public's. A result is
// reused for readyTTL, so that probes — a load balancer's every few
// hundred milliseconds, or a flood — cost the database one check a second.
func (h *Hub) ReadyHandler(detail bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status, checks := h.readiness(r.Context())
		word := "ok"
		if status != http.StatusOK {
			word = "unavailable"
		}
		body := map[string]any{"status": word}
		if detail {
			body["checks"] = checks
		}
		writeJSON(w, status, body)
	})
}

// readyTTL is how long one readiness check is reused.
const readyTTL = time.Second

// readiness runs the checks, or returns the last result within readyTTL.
// A change of verdict is logged with its reasons.
func (h *Hub) readiness(parent context.Context) (int, map[string]string) {
	h.ready.mu.Lock()
	defer h.ready.mu.Unlock()
	if h.closing.Load() {
		return http.StatusServiceUnavailable, map[string]string{"hub": "shutting down"}
	}
	if !h.ready.at.IsZero() && time.Since(h.ready.at) < readyTTL {
		return h.ready.status, h.ready.checks
	}
	ctx, cancel := context.WithTimeout(parent, 2*time.Second)
	defer cancel()
	checks := map[string]string{}
	status := http.StatusOK
	if err := h.store.Ping(ctx); err != nil {
		checks["database"] = "unreachable"
		status = http.StatusServiceUnavailable
	} else {
		checks["database"] = "ok"
	}
	if h.cfg.Ready != nil {
		if err := h.cfg.Ready(ctx); err != nil {
			checks["relay"] = err.Error()
			status = http.StatusServiceUnavailable
		} else {
			checks["relay"] = "ok"
		}
	}
	if h.cfg.Degraded != nil {
		if d := h.cfg.Degraded(); d != "" {
			checks["relay_degraded"] = d
		}
	}
	if parent.Err() != nil {
		// The prober went away: do not cache a verdict it cut short.
		return status, checks
	}
	if was := h.ready.status; was != 0 && was != status {
		if status == http.StatusOK {
			h.cfg.Logger.Info("ready again")
		} else {
			h.cfg.Logger.Warn("not ready", "checks", checks)
		}
	}
	h.ready.at, h.ready.status, h.ready.checks = time.Now(), status, checks
	return status, checks
}
