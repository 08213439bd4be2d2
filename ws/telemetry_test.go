package ws

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/observability"
	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/relay"
)

func TestRelaySpanLinkedToProducer(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	e := newEnv(t, envOpts{cfg: Config{TracerProvider: tp}, sequencerCfg: relay.SequencerConfig{TracerProvider: tp}})
	cl := e.connect("", "u1", "LEVEL_1")

	ctx, producer := tp.Tracer("app").Start(context.Background(), "POST /tasks")
	ids, err := outbox.EmitBatch(ctx, e.db.Pool, []outbox.Event{{
		Topic: "task_event", Data: map[string]int{"task_id": 1}, Roles: []string{"LEVEL_1"},
		Traceparent: observability.Traceparent(ctx),
	}})
	producer.End()
	if err != nil {
		t.Fatal(err)
	}
	cl.events(1, 5*time.Second)

	var process, batch sdktrace.ReadOnlySpan
	waitFor(t, 5*time.Second, "the relay's spans", func() bool {
		for _, s := range spans.GetSpans().Snapshots() {
			switch s.Name() {
			case "process task_event":
				process = s
			case "outbox sequence":
				batch = s
			}
		}
		return process != nil && batch != nil
	})
	if process.SpanKind() != trace.SpanKindConsumer {
		t.Fatalf("kind %v", process.SpanKind())
	}
	links := process.Links()
	psc := producer.SpanContext()
	if len(links) != 1 || links[0].SpanContext.TraceID() != psc.TraceID() || links[0].SpanContext.SpanID() != psc.SpanID() {
		t.Fatalf("links %+v, want the producer span %s/%s", links, psc.TraceID(), psc.SpanID())
	}
	attrs := map[attribute.Key]attribute.Value{}
	for _, kv := range process.Attributes() {
		attrs[kv.Key] = kv.Value
	}
	want := map[string]string{
		"messaging.system": "outboxd", "messaging.operation.type": "process",
		"messaging.destination.name": "task_event", "messaging.message.id": itoa(ids[0]),
	}
	for k, v := range want {
		if attrs[attribute.Key(k)].String() != v {
			t.Errorf("%s = %q, want %q", k, attrs[attribute.Key(k)].String(), v)
		}
	}
	if attrs["outboxd.recipients"].AsInt64() != 1 || attrs["outboxd.seq"].AsInt64() != 1 {
		t.Errorf("attributes %v", process.Attributes())
	}
	rows := map[attribute.Key]attribute.Value{}
	for _, kv := range batch.Attributes() {
		rows[kv.Key] = kv.Value
	}
	if rows["outboxd.batch.rows"].AsInt64() != 1 {
		t.Errorf("batch span attributes %v", batch.Attributes())
	}
	// The handshake span exists and ended.
	found := false
	for _, s := range spans.GetSpans().Snapshots() {
		found = found || s.Name() == "ws.handshake"
	}
	if !found {
		t.Error("no ws.handshake span")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value returns the value of the series of family name whose labels
// include the given ones (-1 if there is none).
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			ok := false
			for _, l := range m.GetLabel() {
				ok = ok || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
			}
			if !ok {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

func TestPrometheusMetricsExact(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), observability.LatencyView())
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	handler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})

	e := newEnv(t, envOpts{cfg: Config{MeterProvider: mp}, sequencerCfg: relay.SequencerConfig{MeterProvider: mp}})
	cl := e.connect("", "u1", "LEVEL_1")
	other := e.connect("", "u2")
	_, resp, _ := e.dial("token=bad", dialOpts{}) // one rejection
	if resp == nil || resp.StatusCode != 401 {
		t.Fatalf("bad token: %v", resp)
	}
	const n = 37
	var evs []outbox.Event
	for i := range n {
		evs = append(evs, ev("task_event", i, nil, []string{"LEVEL_1"}))
	}
	e.emit(evs...)
	cl.events(n, 10*time.Second)
	if got := e.hub.Broadcast(NotificationData{Title: "t"}); got != 2 {
		t.Fatalf("broadcast sent %d", got)
	}
	cl.next(5 * time.Second)
	other.next(5 * time.Second)

	var fams map[string]*dto.MetricFamily
	waitFor(t, 5*time.Second, "the latency histogram to count every event", func() bool {
		fams = scrape(t, handler)
		// The sequencer records its batch after COMMIT returns, and the hub
		// counts an event's frames after queueing them to every recipient:
		// both may come after the client already read the events.
		return value(fams, "outboxd_e2e_latency_seconds") == n && value(fams, "outboxd_relay_batch_rows") >= 1 &&
			value(fams, "outboxd_ws_messages_sent_total", "topic", "task_event") >= n
	})
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"outboxd_ws_messages_sent_total", []string{"topic", "task_event"}, n},
		{"outboxd_ws_messages_sent_total", []string{"topic", "notification"}, 2},
		{"outboxd_ws_broadcasts_total", nil, 1},
		{"outboxd_ws_connects_total", nil, 2},
		{"outboxd_ws_rejections_total", []string{"reason", "invalid_token"}, 1},
		{"outboxd_ws_sessions", nil, 2},
		{"outboxd_ws_connections_by_role", []string{"role", "LEVEL_1"}, 1},
		{"outboxd_ws_connections_by_role", []string{"no_role", "true"}, 1},
		{"outboxd_ws_users", nil, 2},
		{"outboxd_relay_head_seq", nil, n},
		{"outboxd_relay_dispatched_seq", nil, n},
		{"outboxd_relay_tailer_lag", nil, 0},
		{"outboxd_relay_pending", nil, 0},
		{"outboxd_e2e_latency_seconds", nil, n},
	}
	for _, c := range checks {
		if got := value(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if value(fams, "outboxd_relay_batch_rows") < 1 || value(fams, "outboxd_relay_batch_duration_seconds") < 1 {
		t.Error("no sequencer batch histograms")
	}
	// The stats endpoint reads the same counters.
	st := e.hub.Stats(context.Background())
	if st.Metrics.TotalMessagesSent != n+2 || st.Metrics.TotalBroadcasts != 1 {
		t.Errorf("stats metrics %+v", st.Metrics)
	}
	// Buckets run from 1 ms to 10 s.
	h := fams["outboxd_e2e_latency_seconds"].GetMetric()[0].GetHistogram()
	if b := h.GetBucket(); b[0].GetUpperBound() != 0.001 || b[len(b)-2].GetUpperBound() != 10 {
		t.Errorf("buckets %v", b)
	}
}

func TestTokensNeverLogged(t *testing.T) {
	t.Parallel()
	var logs proctest.SyncBuffer
	logger := observability.NewLogger(&logs, slog.LevelDebug, "json")
	e := newEnv(t, envOpts{cfg: Config{Logger: logger}})
	good := e.token("u1", "LEVEL_1")
	expired, _ := MintHS256(testSecret, "u1", nil, -time.Hour)
	cl, _, err := e.dial("token="+url.QueryEscape(good), dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	cl.next(5 * time.Second)
	cl2, _, err := e.dial("", dialOpts{header: http.Header{"Authorization": {"Bearer " + good}}})
	if err != nil {
		t.Fatal(err)
	}
	cl2.next(5 * time.Second)
	cl3, _, err := e.dial("", dialOpts{header: http.Header{"Sec-WebSocket-Protocol": {Subprotocol + ", " + SubprotocolTokenPrefix + good}}})
	if err != nil {
		t.Fatal(err)
	}
	cl3.next(5 * time.Second)
	for _, bad := range []string{expired, "x" + good} {
		if _, resp, _ := e.dial("token="+url.QueryEscape(bad), dialOpts{}); resp == nil || resp.StatusCode != 401 {
			t.Fatalf("bad token accepted: %v", resp)
		}
	}
	_ = cl.conn.Close()
	_ = cl2.conn.Close()
	_ = cl3.conn.Close()
	waitFor(t, 5*time.Second, "disconnects", func() bool { return e.connections() == 0 })
	out := logs.String()
	if !strings.Contains(out, `"msg":"client connected"`) || !strings.Contains(out, `"msg":"client disconnected"`) {
		t.Fatalf("expected connect/disconnect lines at debug level, got:\n%s", out)
	}
	for _, tok := range []string{good, expired} {
		// A token's signature is its last part: the part no legitimate log
		// line could contain by chance.
		sig := tok[strings.LastIndexByte(tok, '.')+1:]
		if strings.Contains(out, sig) {
			t.Fatalf("a token appears in the log:\n%s", out)
		}
	}
}

func TestLogLinesCarryTraceIDs(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger := observability.NewLogger(&buf, slog.LevelInfo, "json")
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "op")
	logger.InfoContext(ctx, "inside")
	span.End()
	logger.Info("outside")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"trace_id":"`+span.SpanContext().TraceID().String()) ||
		!strings.Contains(lines[0], `"span_id":"`) || strings.Contains(lines[1], "trace_id") {
		t.Fatalf("lines:\n%s", buf.String())
	}
}

func TestParseFrameTime(t *testing.T) {
	base := time.Date(2026, 11, 27, 5, 1, 2, 123456000, time.UTC)
	for i := range 2000 {
		want := base.Add(time.Duration(i) * 7919 * time.Hour).Add(time.Duration(i*104729) * time.Microsecond).Truncate(time.Microsecond)
		s := want.Format(timestampLayout)
		got, ok := parseFrameTime([]byte(s))
		if !ok || !got.Equal(want) {
			t.Fatalf("%s: got %s %v", s, got, ok)
		}
	}
	// Not outboxd's UTC form: time.Parse decides.
	if got, ok := parseFrameTime([]byte("2026-11-27T06:01:02.123456+01:00")); !ok || !got.Equal(base) {
		t.Fatalf("offset form: %s %v", got, ok)
	}
	for _, bad := range []string{"", "2026-13-27T05:01:02.123456Z", "2026-11-27T05:01:02.12345xZ", "2026-11-27 05:01:02.123456Z", "garbage"} {
		if _, ok := parseFrameTime([]byte(bad)); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func BenchmarkParseFrameTime(b *testing.B) {
	ts := []byte("2026-11-27T05:01:02.123456Z")
	for b.Loop() {
		if _, ok := parseFrameTime(ts); !ok {
			b.Fatal("not parsed")
		}
	}
}
