package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/internal/pyvenv"
)

// jaegerConfig is Jaeger v2 all-in-one with in-memory storage, every port
// on 127.0.0.1.
const jaegerConfig = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: %s
    grpc:
      endpoint: %s
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
      http:
        endpoint: %s
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

type jaegerTrace struct {
	TraceID string `json:"traceID"`
	Spans   []struct {
		TraceID       string `json:"traceID"`
		SpanID        string `json:"spanID"`
		OperationName string `json:"operationName"`
		ProcessID     string `json:"processID"`
		References    []struct {
			RefType string `json:"refType"`
			TraceID string `json:"traceID"`
			SpanID  string `json:"spanID"`
		} `json:"references"`
	} `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

// A traced producer transaction (the Go example, with the OTel SDK) and
// outboxd export to a real Jaeger v2; through Jaeger's query API, outboxd's
// "process task_event" span is there and links to the producer's span, in
// a trace Jaeger holds too: producer → outboxd in one view.
func TestTracesInJaeger(t *testing.T) {
	t.Parallel()
	root, _ := filepath.Abs(filepath.Join("..", ".."))
	jaeger := filepath.Join(root, ".tools", "bin", "jaeger")
	if _, err := os.Stat(jaeger); err != nil {
		t.Fatalf("Jaeger is required (scripts/ensure-jaeger.sh builds it): %v", err)
	}
	query, otlpHTTP := proctest.FreeAddr(t), proctest.FreeAddr(t)
	cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(jaegerConfig, query, proctest.FreeAddr(t), proctest.FreeAddr(t), otlpHTTP)), 0o644); err != nil {
		t.Fatal(err)
	}
	j := exec.Command(jaeger, "--config", cfg)
	var jlog proctest.SyncBuffer
	j.Stdout, j.Stderr = &jlog, &jlog
	if err := j.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Process.Kill(); _ = j.Wait() })
	get := func(path string, v any) error {
		resp, err := http.Get("http://" + query + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return json.NewDecoder(resp.Body).Decode(v)
	}
	eventually(t, time.Minute, func() bool { return get("/api/services", &map[string]any{}) == nil },
		func() string { return "Jaeger did not start:\n" + jlog.String() })

	otel := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + otlpHTTP, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_METRICS_EXPORTER=none", "OTEL_BSP_SCHEDULE_DELAY=100"}
	// Built before the client connects: a build slowed down by the rest of
	// the suite once outlasted the heartbeat of a client not reading.
	producer := filepath.Join(t.TempDir(), "go-producer")
	build := exec.Command("go", "build", "-o", producer, ".")
	build.Dir = filepath.Join(root, "examples", "go-producer")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the Go example: %v\n%s", err, out)
	}
	db := dbtest.New(t)
	p := startOutboxd(t, db, append([]string{"OTEL_SERVICE_NAME=outboxd"}, otel...)...)
	conn, _ := dialAs(t, p, "u1", "LEVEL_1")
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	var welcome map[string]any
	if err := conn.ReadJSON(&welcome); err != nil {
		t.Fatal(err)
	}

	// The first operation of the example creates a task for LEVEL_1.
	run := exec.Command(producer, "-count", "1", "-rate", "0")
	run.Env = append(os.Environ(), append([]string{"DATABASE_URL=" + db.URL, "OTEL_SERVICE_NAME=go-producer"}, otel...)...)
	if out, err := run.CombinedOutput(); err != nil {
		t.Fatalf("go-producer: %v\n%s", err, out)
	}
	var ev map[string]any
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := conn.ReadJSON(&ev); err != nil || ev["seq"] != 1.0 {
		t.Fatalf("event %v %v", ev, err)
	}

	checkLinked(t, get, time.Minute, "go-producer", jlog.String())

	// The Python example, with the W3C header and the span export by hand.
	py := exec.Command(pyvenv.Python(t), "examples/python-sqlalchemy/producer.py", "--count", "1", "--rate", "0")
	py.Dir = root
	py.Env = append(os.Environ(), append([]string{"DATABASE_URL=" + db.URL, "OTEL_SERVICE_NAME=python-producer"}, otel...)...)
	if out, err := py.CombinedOutput(); err != nil {
		t.Fatalf("python producer: %v\n%s", err, out)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := conn.ReadJSON(&ev); err != nil || ev["seq"] != 2.0 {
		t.Fatalf("event %v %v", ev, err)
	}
	checkLinked(t, get, time.Minute, "python-producer", jlog.String())
}

// checkLinked finds, through Jaeger's query API, an outboxd "process …"
// span linked to a trace whose span comes from service, and that trace in
// Jaeger too.
func checkLinked(t *testing.T, get func(string, any) error, d time.Duration, service, jlog string) {
	t.Helper()
	eventually(t, d, func() bool { return linked(get, service) },
		func() string { return "no outboxd process span linked to a " + service + " span in Jaeger:\n" + jlog })
}

// linked reports whether Jaeger holds an outboxd "process …" span linked to
// a "demo operation" span of service, itself in Jaeger.
func linked(get func(string, any) error, service string) bool {
	var res struct{ Data []jaegerTrace }
	if get("/api/traces?service=outboxd&limit=100&lookback=1h", &res) != nil {
		return false
	}
	for _, tr := range res.Data {
		for _, s := range tr.Spans {
			if !strings.HasPrefix(s.OperationName, "process ") {
				continue
			}
			for _, r := range s.References {
				if r.TraceID == s.TraceID {
					continue
				}
				var prod struct{ Data []jaegerTrace }
				if get("/api/traces/"+r.TraceID, &prod) != nil || len(prod.Data) != 1 {
					continue
				}
				for _, ps := range prod.Data[0].Spans {
					if prod.Data[0].Processes[ps.ProcessID].ServiceName == service && ps.OperationName == "demo operation" &&
						ps.SpanID == r.SpanID {
						return true
					}
				}
			}
		}
	}
	return false
}
