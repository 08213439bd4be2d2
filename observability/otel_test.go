package observability

import (
	"context"
	"io"
	"net"
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

// Metrics pushed over OTLP honour OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the
// exporter opens an HTTP/2 (gRPC) connection, not an HTTP/1.1 POST. (It
// used OTLP/HTTP whatever the protocol said.) Not parallel: it sets OTEL_*.
func TestOTLPMetricsHonourGRPC(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	first := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 14)
		n, _ := io.ReadFull(c, b)
		first <- string(b[:n])
	}()
	t.Setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://"+l.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "true")
	p, err := Setup(context.Background(), Options{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := p.MeterProvider.Meter("test").Int64Counter("probe")
	c.Add(context.Background(), 1)
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.Shutdown(sctx) // flushes; the fake endpoint never answers
	select {
	case got := <-first:
		if got != "PRI * HTTP/2.0" {
			t.Fatalf("the metric exporter opened with %q, want the HTTP/2 preface of gRPC", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the metric exporter never connected")
	}
}
