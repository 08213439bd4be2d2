package observability

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// receiver is an in-process OTLP/HTTP trace endpoint.
type receiver struct {
	mu    sync.Mutex
	names []string
	attrs map[string]string // resource attributes
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" {
		http.NotFound(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var req coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, kv := range rs.GetResource().GetAttributes() {
			rc.attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				rc.names = append(rc.names, s.GetName())
			}
		}
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

// Not parallel: Setup installs the OTel globals and reads OTEL_* from the
// process environment, as outboxd does.
func TestOTLPHTTPExportReachesReceiver(t *testing.T) {
	rc := &receiver{attrs: map[string]string{}}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_METRICS_EXPORTER", "none")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")

	p, err := Setup(context.Background(), Options{Version: "1.2.3", InstanceID: "replica-a"})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Exporting {
		t.Fatal("not exporting with an OTLP endpoint set")
	}
	ctx, span := p.TracerProvider.Tracer("test").Start(context.Background(), "process task_event",
		trace.WithSpanKind(trace.SpanKindConsumer))
	if tp := Traceparent(ctx); len(tp) != 55 || tp[:3] != "00-" {
		t.Fatalf("traceparent %q", tp)
	}
	span.End()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(sctx); err != nil { // flushes the batch
		t.Fatal(err)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.names) != 1 || rc.names[0] != "process task_event" {
		t.Fatalf("received spans %v", rc.names)
	}
	want := map[string]string{"service.name": "outboxd", "service.version": "1.2.3", "service.instance.id": "replica-a",
		"deployment.environment.name": "test"}
	for k, v := range want {
		if rc.attrs[k] != v {
			t.Errorf("resource %s = %q, want %q", k, rc.attrs[k], v)
		}
	}
}

func TestNoExportWithoutEndpoint(t *testing.T) {
	p, err := Setup(context.Background(), Options{Env: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background()) //nolint:errcheck
	if p.Exporting {
		t.Fatal("exporting without an endpoint")
	}
	ctx, span := p.TracerProvider.Tracer("t").Start(context.Background(), "x")
	defer span.End()
	if Traceparent(ctx) != "" {
		t.Fatal("a no-op span produced a traceparent")
	}
	rec := httptest.NewRecorder()
	p.MetricsHandler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "go_goroutines") {
		t.Fatalf("/metrics: %d", rec.Code)
	}
}

func TestBadProtocolRefused(t *testing.T) {
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}
	if _, err := Setup(context.Background(), Options{Env: func(k string) string { return env[k] }}); err == nil {
		t.Fatal("unknown OTLP protocol accepted")
	}
}

func TestLinkFromTraceparent(t *testing.T) {
	if _, ok := LinkFromTraceparent(""); ok {
		t.Fatal("empty")
	}
	if _, ok := LinkFromTraceparent("garbage"); ok {
		t.Fatal("garbage")
	}
	l, ok := LinkFromTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	if !ok || l.SpanContext.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("link %+v", l)
	}
}
