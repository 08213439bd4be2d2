package ws

import (
	"bytes"
	"context"
	"maps"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/grupogad/outboxd/observability"
	"github.com/grupogad/outboxd/stream"
)

const scope = "github.com/grupogad/outboxd/ws"

// messagingSystem names outboxd in the messaging.system attribute.
const messagingSystem = "outboxd"

type telemetry struct {
	tracer trace.Tracer
	// spans is false under a no-op TracerProvider (tracing not exported):
	// the per-event process span is then not built at all (it cost 8 of
	// Dispatch's 10 allocations per event).
	spans   bool
	latency metric.Float64Histogram
}

// initTelemetry creates the hub's instruments. Counters are observed from
// hubMetrics, the same numbers /ws/stats shows: one source of truth.
func (h *Hub) initTelemetry() {
	tp, mp := h.cfg.TracerProvider, h.cfg.MeterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	h.tel.tracer = tp.Tracer(scope)
	_, noSpans := tp.(noop.TracerProvider)
	h.tel.spans = !noSpans
	m := mp.Meter(scope)
	// Instrument creation fails only for invalid names; these are valid.
	h.tel.latency, _ = m.Float64Histogram(observability.LatencyMetric, metric.WithUnit("s"),
		metric.WithDescription("From the event's created_at (producer's INSERT) to its write on the socket."),
		metric.WithExplicitBucketBoundaries(observability.LatencyBuckets...))
	sessions, _ := m.Int64ObservableGauge("outboxd.ws.sessions", metric.WithDescription("Open WebSocket sessions."))
	byRole, _ := m.Int64ObservableGauge("outboxd.ws.connections.by_role",
		metric.WithDescription("Open sessions by JWT role (a session with several roles counts under each; sessions without a role: no_role=\"true\", no role label)."))
	users, _ := m.Int64ObservableGauge("outboxd.ws.users", metric.WithDescription("Distinct users connected."))
	byTransport, _ := m.Int64ObservableGauge("outboxd.ws.sessions.by_transport", metric.WithDescription("Open sessions by transport: websocket or sse."))
	connects, _ := m.Int64ObservableCounter("outboxd.ws.connects", metric.WithDescription("Accepted WebSocket connections."))
	rejections, _ := m.Int64ObservableCounter("outboxd.ws.rejections", metric.WithDescription("Refused connection attempts by reason."))
	sent, _ := m.Int64ObservableCounter("outboxd.ws.messages.sent", metric.WithDescription("Event and notification frames handed to sessions, by topic."))
	subscriptions, _ := m.Int64ObservableGauge("outboxd.ws.subscriptions", metric.WithDescription("Sessions with a topic filter."))
	sendErrors, _ := m.Int64ObservableCounter("outboxd.ws.send.errors", metric.WithDescription("Frames that could not be sent, by reason."))
	drops, _ := m.Int64ObservableCounter("outboxd.ws.drops", metric.WithDescription("Sessions closed by the server, by reason."))
	refreshes, _ := m.Int64ObservableCounter("outboxd.ws.refreshes", metric.WithDescription("In-band token refreshes, by outcome: ok, invalid_token, sub_mismatch."))
	broadcasts, _ := m.Int64ObservableCounter("outboxd.ws.broadcasts", metric.WithDescription("Test broadcasts."))
	catchUps, _ := m.Int64ObservableCounter("outboxd.ws.catchups", metric.WithDescription("Times a session's live queue filled and it caught up from memory or the table."))
	resyncs, _ := m.Int64ObservableCounter("outboxd.ws.resyncs", metric.WithDescription("resync_required frames sent."))
	ready, _ := m.Int64ObservableGauge("outboxd.ready", metric.WithDescription("1 while /readyz answers 200 (the same checks, reused for a second), else 0."))
	// The relay's position and backlog, as this replica's hub sees them, in
	// the relay's scope.
	rm := mp.Meter(relayScope)
	malformed, _ := rm.Int64ObservableCounter("outboxd.relay.rows.malformed", metric.WithUnit("{event}"),
		metric.WithDescription("Rows relayed with a column that could not be decoded as stored (created_at at infinity): delivered with the time they were read."))
	pages, _ := m.Int64ObservableCounter("outboxd.ws.catchup.pages", metric.WithDescription("Catch-up pages, by source: memory (recent frames) or table."))
	head, _ := rm.Int64ObservableGauge("outboxd.relay.head_seq", metric.WithDescription("Last assigned seq."))
	dispatched, _ := rm.Int64ObservableGauge("outboxd.relay.dispatched_seq", metric.WithDescription("Last seq this replica's hub delivered."))
	lag, _ := rm.Int64ObservableGauge("outboxd.relay.tailer.lag", metric.WithUnit("{event}"), metric.WithDescription("head_seq minus dispatched_seq."))
	pending, _ := rm.Int64ObservableGauge("outboxd.relay.pending", metric.WithUnit("{event}"), metric.WithDescription("Rows not yet sequenced."))
	oldest, _ := rm.Float64ObservableGauge("outboxd.relay.oldest_pending_age", metric.WithUnit("s"), metric.WithDescription("Age of the oldest row not yet sequenced."))

	_, _ = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		if status, _ := h.readiness(ctx); status == http.StatusOK {
			o.ObserveInt64(ready, 1)
		} else {
			o.ObserveInt64(ready, 0)
		}
		h.mu.RLock()
		o.ObserveInt64(sessions, int64(len(h.routes.all)))
		perTransport := map[string]int64{TransportWebSocket: 0, TransportSSE: 0}
		for c := range h.routes.all {
			perTransport[c.transport]++
		}
		o.ObserveInt64(users, int64(len(h.routes.byUser)))
		o.ObserveInt64(subscriptions, int64(len(h.routes.all)-len(h.routes.open)))
		for role, n := range h.routes.roles {
			o.ObserveInt64(byRole, int64(n), metric.WithAttributes(attribute.String("role", role)))
		}
		noRole := h.routes.noRole
		h.mu.RUnlock()
		for tr, n := range perTransport {
			o.ObserveInt64(byTransport, n, metric.WithAttributes(attribute.String("transport", tr)))
		}
		// Sessions without a role carry no role label at all, so that no
		// role name (not even "none") can be mistaken for them.
		o.ObserveInt64(byRole, int64(noRole), metric.WithAttributes(attribute.Bool("no_role", true)))

		hm := h.metrics
		o.ObserveInt64(connects, hm.connects.Load())
		o.ObserveInt64(broadcasts, hm.broadcasts.Load())
		o.ObserveInt64(catchUps, hm.catchUps.Load())
		o.ObserveInt64(resyncs, hm.resyncs.Load())
		o.ObserveInt64(pages, hm.pagesMemory.Load(), metric.WithAttributes(attribute.String("source", "memory")))
		o.ObserveInt64(pages, hm.pagesTable.Load(), metric.WithAttributes(attribute.String("source", "table")))
		d, rj, se := h.Counts()
		hm.mu.Lock()
		rf := maps.Clone(hm.refreshed)
		hm.mu.Unlock()
		// Every known reason is a series from the start, at zero: rate()
		// and an alert see it before its first increment.
		for _, c := range []struct {
			counter metric.Int64ObservableCounter
			key     string
			counts  map[string]int64
			known   []string
		}{
			{drops, "reason", d, dropReasons},
			{rejections, "reason", rj, rejectReasons},
			{sendErrors, "reason", se, sendErrorReasons},
			{refreshes, "outcome", rf, refreshOutcomes},
		} {
			for _, r := range c.known {
				if _, ok := c.counts[r]; !ok {
					c.counts[r] = 0
				}
			}
			for r, n := range c.counts {
				o.ObserveInt64(c.counter, n, metric.WithAttributes(attribute.String(c.key, r)))
			}
		}
		for topic, n := range hm.topicCounts() {
			o.ObserveInt64(sent, n, metric.WithAttributes(attribute.String("topic", topic)))
		}
		return nil
	}, sessions, byTransport, byRole, users, subscriptions, connects, rejections, sent, sendErrors, drops, refreshes, broadcasts, catchUps, resyncs, pages, ready)
	_, _ = rm.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		o.ObserveInt64(malformed, h.metrics.malformed.Load())
		disp := h.head.Load()
		o.ObserveInt64(dispatched, disp)
		if st, err := h.relayStatus(ctx); err == nil {
			o.ObserveInt64(head, st.HeadSeq)
			o.ObserveInt64(lag, max(st.HeadSeq-disp, 0))
			o.ObserveInt64(pending, st.Pending)
			o.ObserveFloat64(oldest, st.Lag)
		}
		return nil
	}, malformed, head, dispatched, lag, pending, oldest)
}

// relayScope is the instrumentation scope of the relay's gauges the hub
// observes (relay.scope's value).
const relayScope = "github.com/grupogad/outboxd/relay"

// The reasons and outcomes the per-reason counters start with at zero.
var (
	dropReasons      = []string{"too_far_behind", "past_retention", "token_expired", "disconnected", "history_changed", "message_rate"}
	rejectReasons    = []string{"invalid_token", "revoked", "origin", "invalid_since", "invalid_epoch", "invalid_topics", "invalid_batch", "busy", "rate_limited", "shutting_down", "upgrade", "too_many_connections", "too_many_connections_for_user"}
	sendErrorReasons = []string{"queue_full", "write_timeout"}
	refreshOutcomes  = []string{"ok", "invalid_token", "sub_mismatch"}
)

// startProcessSpan starts the consumer span of one relayed event, linked to
// the producer's trace when the row carries one.
func (h *Hub) startProcessSpan(ctx context.Context, e *stream.Event) trace.Span {
	if !h.tel.spans {
		return noSpan
	}
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			semconv.MessagingSystemKey.String(messagingSystem),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingDestinationName(e.Topic),
			semconv.MessagingMessageID(strconv.FormatInt(e.ID, 10)),
			attribute.Int64("outboxd.seq", e.Seq),
		),
	}
	if l, ok := observability.LinkFromTraceparent(e.Traceparent); ok {
		opts = append(opts, trace.WithLinks(l))
	}
	_, span := h.tel.tracer.Start(ctx, "process "+e.Topic, opts...)
	return span
}

// noSpan is what startProcessSpan returns when tracing is off.
var noSpan = trace.SpanFromContext(context.Background())

func endProcessSpan(span trace.Span, recipients int) {
	span.SetAttributes(attribute.Int("outboxd.recipients", recipients))
	span.End()
}

func endWithError(span trace.Span, reason string) {
	span.SetStatus(codes.Error, reason)
	span.End()
}

var (
	eventPrefix = []byte(`{"type":"`)
	seqMarker   = []byte(`","seq":`)
	tsMarker    = []byte(`"timestamp":"`)
)

// observeSent records the end-to-end latency of an event frame written to a
// socket, reading created_at back from the frame (always at the same place
// in encodeEvent's output).
//
// A batched frame is one observation, of its first event: the oldest, the
// others went out with it. (One per event cost 17 % of outboxd's CPU at
// 2,500 events/s to 100 clients: a timestamp parse and a histogram lock
// per event per client.)
func (h *Hub) observeSent(frame []byte) {
	if !bytes.HasPrefix(frame, eventPrefix) {
		return
	}
	head := frame[len(eventPrefix):min(len(frame), 120)]
	if !bytes.Contains(head, seqMarker) {
		return // a control frame
	}
	i := bytes.Index(head, tsMarker)
	if i < 0 || i+len(tsMarker)+len(timestampLayout)-5 > len(head) {
		return
	}
	ts := head[i+len(tsMarker):]
	end := bytes.IndexByte(ts, '"')
	if end < 0 {
		return
	}
	created, ok := parseFrameTime(ts[:end])
	if !ok {
		return
	}
	h.tel.latency.Record(context.Background(), time.Since(created).Seconds())
}

// parseFrameTime reads a frame's timestamp. This runs once per message
// sent, so the UTC form outboxd writes ("2006-01-02T15:04:05.000000Z") is
// read by position, ten times cheaper than time.Parse; anything else falls
// back to it.
func parseFrameTime(b []byte) (time.Time, bool) {
	const utcLen = len("2006-01-02T15:04:05.000000Z")
	num := func(i, n int) (int, bool) {
		v := 0
		for _, c := range b[i : i+n] {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	if len(b) == utcLen && b[4] == '-' && b[7] == '-' && b[10] == 'T' && b[13] == ':' && b[16] == ':' && b[19] == '.' && b[26] == 'Z' {
		y, ok1 := num(0, 4)
		mo, ok2 := num(5, 2)
		d, ok3 := num(8, 2)
		h, ok4 := num(11, 2)
		mi, ok5 := num(14, 2)
		s, ok6 := num(17, 2)
		us, ok7 := num(20, 6)
		if ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h < 24 && mi < 60 && s < 61 {
			return time.Date(y, time.Month(mo), d, h, mi, s, us*1000, time.UTC), true
		}
	}
	t, err := time.Parse(timestampLayout, string(b))
	return t, err == nil
}
