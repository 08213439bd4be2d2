package observability

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// LatencyBuckets are the end-to-end latency histogram's bounds, in seconds:
// 1 ms to 10 s.
var LatencyBuckets = []float64{0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// LatencyMetric is the name of the end-to-end latency histogram.
const LatencyMetric = "outboxd.e2e.latency"

// Options describe this process for the OTel resource.
type Options struct {
	ServiceName string // default "outboxd"; OTEL_SERVICE_NAME overrides
	Version     string
	InstanceID  string // default the host name and pid
	// Env is the environment to read OTEL_* from (default os.Getenv).
	Env func(string) string
}

// Providers are the configured OpenTelemetry providers.
type Providers struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// MetricsHandler serves the Prometheus exposition (GET /metrics).
	MetricsHandler http.Handler
	// Exporting reports whether spans leave the process (OTLP configured).
	Exporting bool
	shutdown  []func(context.Context) error
}

// Shutdown flushes and stops the exporters.
func (p *Providers) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range p.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}

// Setup builds the providers from the standard OTEL_* variables and installs
// them (and the W3C propagator) as the globals:
//
//   - traces go to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT or
//     OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (OTEL_EXPORTER_OTLP_PROTOCOL
//     grpc or http/protobuf, the default), unless OTEL_TRACES_EXPORTER=none;
//     otherwise no spans are recorded at all;
//   - metrics are always exposed for Prometheus, and also pushed by OTLP
//     (over the same OTEL_EXPORTER_OTLP_PROTOCOL, or
//     OTEL_EXPORTER_OTLP_METRICS_PROTOCOL) when an OTLP endpoint is set and
//     OTEL_METRICS_EXPORTER is not none.
func Setup(ctx context.Context, o Options) (*Providers, error) {
	getenv := o.Env
	if getenv == nil {
		getenv = os.Getenv
	}
	res, err := newResource(ctx, o)
	if err != nil {
		return nil, err
	}
	p := &Providers{}
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))

	endpoint := getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != ""
	tracesEndpoint := endpoint || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
	if tracesEndpoint && getenv("OTEL_TRACES_EXPORTER") != "none" {
		var exp sdktrace.SpanExporter
		switch proto := firstNonEmpty(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf"); proto {
		case "grpc":
			exp, err = otlptracegrpc.New(ctx)
		case "http/protobuf":
			exp, err = otlptracehttp.New(ctx)
		default:
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: %q; want grpc or http/protobuf", proto)
		}
		if err != nil {
			return nil, fmt.Errorf("otlp trace exporter: %w", err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		p.TracerProvider, p.Exporting = tp, true
		p.shutdown = append(p.shutdown, tp.Shutdown)
	} else {
		p.TracerProvider = noop.NewTracerProvider()
	}
	otel.SetTracerProvider(p.TracerProvider)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// No otel_scope_* labels on every series: the metric names say where
	// they come from.
	promExp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mopts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(promExp), LatencyView(), HTTPViews()}
	if endpoint || getenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") != "" {
		if getenv("OTEL_METRICS_EXPORTER") != "none" {
			var mexp sdkmetric.Exporter
			switch proto := firstNonEmpty(getenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"), getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf"); proto {
			case "grpc":
				mexp, err = otlpmetricgrpc.New(ctx)
			case "http/protobuf":
				mexp, err = otlpmetrichttp.New(ctx)
			default:
				return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: %q; want grpc or http/protobuf", proto)
			}
			if err != nil {
				return nil, fmt.Errorf("otlp metric exporter: %w", err)
			}
			mopts = append(mopts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(mexp)))
		}
	}
	mp := sdkmetric.NewMeterProvider(mopts...)
	p.MeterProvider = mp
	p.shutdown = append(p.shutdown, mp.Shutdown)
	otel.SetMeterProvider(mp)
	p.MetricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return p, nil
}

// HTTPViews keep otelhttp's request duration with the labels a dashboard
// groups by — method, route, status — and drop its body-size histograms:
// with every label otelhttp sets (protocol, server address and port,
// scheme, …) a handful of requests made tens of kilobytes of output.
func HTTPViews() sdkmetric.Option {
	return sdkmetric.WithView(
		sdkmetric.NewView(sdkmetric.Instrument{Name: "http.server.request.duration"},
			sdkmetric.Stream{AttributeFilter: attribute.NewAllowKeysFilter(
				"http.request.method", "http.route", "http.response.status_code")}),
		sdkmetric.NewView(sdkmetric.Instrument{Name: "http.server.request.body.size"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationDrop{}}),
		sdkmetric.NewView(sdkmetric.Instrument{Name: "http.server.response.body.size"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationDrop{}}),
	)
}

// LatencyView gives the latency histogram its 1 ms–10 s buckets.
func LatencyView() sdkmetric.Option {
	return sdkmetric.WithView(sdkmetric.NewView(
		sdkmetric.Instrument{Name: LatencyMetric},
		sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: LatencyBuckets}},
	))
}

func newResource(ctx context.Context, o Options) (*resource.Resource, error) {
	name := firstNonEmpty(o.ServiceName, "outboxd")
	inst := o.InstanceID
	if inst == "" {
		host, _ := os.Hostname()
		inst = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	// Later options win: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
	// override the defaults.
	return resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(name), semconv.ServiceVersion(o.Version), semconv.ServiceInstanceID(inst)),
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
	)
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			return s
		}
	}
	return ""
}

// Traceparent returns the W3C traceparent of the span in ctx, or "". Install
// it with outbox.SetTraceparentFunc so that Emit stores it.
func Traceparent(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c["traceparent"]
}

// LinkFromTraceparent parses a stored traceparent into a span link; ok is
// false for an empty or malformed one.
func LinkFromTraceparent(tp string) (trace.Link, bool) {
	if tp == "" {
		return trace.Link{}, false
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp})
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return trace.Link{}, false
	}
	return trace.Link{SpanContext: sc}, true
}
