package tracing

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Config is the `tracing` section.
type Config struct {
	// Endpoint is the collector's OTLP/HTTP address, such as http://127.0.0.1:4318 (the path
	// defaults to /v1/traces); empty turns tracing off.
	Endpoint string `yaml:"endpoint"`
	// SampleRatio is the share of traces that start here to record (API requests without a
	// sampled parent, automatic failovers): 1 records all, 0 none. A request whose caller sent
	// a traceparent follows the caller's decision.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// Headers are sent with every export (a hosted collector's API key). Never logged.
	Headers map[string]string `yaml:"headers"`
	// CAFile verifies an https collector with this CA bundle instead of the system's.
	CAFile string `yaml:"ca_file"`
}

// Enabled reports whether spans are exported.
func (c Config) Enabled() bool { return c.Endpoint != "" }

// Ratio returns SampleRatio, 1 when unset.
func (c Config) Ratio() float64 {
	if c.SampleRatio == nil {
		return 1
	}
	return *c.SampleRatio
}

// Validate checks the section.
func (c Config) Validate() error {
	var errs []error
	if c.Endpoint != "" {
		if _, err := endpointURL(c.Endpoint); err != nil {
			errs = append(errs, err)
		}
	}
	if r := c.Ratio(); r < 0 || r > 1 {
		errs = append(errs, fmt.Errorf("tracing.sample_ratio %v: want a number from 0 to 1", r))
	}
	if c.CAFile != "" && !strings.HasPrefix(c.Endpoint, "https://") {
		errs = append(errs, errors.New("tracing.ca_file is set but tracing.endpoint is not an https:// address"))
	}
	return errors.Join(errs...)
}

// endpointURL returns the full export URL for endpoint.
func endpointURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("tracing.endpoint %q: want the collector's OTLP/HTTP address, such as http://127.0.0.1:4318", endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces"
	}
	return u.String(), nil
}

// enabled is set while a provider of ours is installed; sampler decides the fate of traces
// that start at an automatic failover.
var (
	enabled atomic.Bool
	sampler atomic.Pointer[sdktrace.Sampler]
)

// Enabled reports whether tracing is on in this process.
func Enabled() bool { return enabled.Load() }

// Tracer returns PGBastion's tracer (a no-op one while tracing is off).
func Tracer() trace.Tracer { return otel.Tracer("github.com/pgbastion/pgbastion") }

// Metrics holds pgbastion_tracing_export_errors_total: failed exports (the collector
// unreachable or refusing), each a batch of spans dropped.
var (
	Metrics      = metrics.NewSet()
	exportErrors = Metrics.NewCounter("pgbastion_tracing_export_errors_total")
)

// exportRetry: a batch is tried again for a while (a collector restarting), then dropped.
var exportRetry = otlptracehttp.RetryConfig{Enabled: true, InitialInterval: time.Second, MaxInterval: 5 * time.Second, MaxElapsedTime: 30 * time.Second}

// errorLogEvery rate-limits the log line of failed exports (lastLog: when it was last
// written): a collector that is down fails every batch.
const errorLogEvery = time.Minute

var lastLog atomic.Int64

// Setup installs an exporting tracer provider for node (the service instance) and returns the
// function that flushes and stops it. With tracing off it installs nothing. Export errors go
// to log (at most one line a minute) and to Metrics; they never hold anything up.
func Setup(cfg Config, node, version string, log *slog.Logger) (func(context.Context) error, error) {
	if !cfg.Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		exportErrors.Inc()
		n := exportErrors.Get()
		now := time.Now().UnixNano()
		if last := lastLog.Load(); now-last >= int64(errorLogEvery) && lastLog.CompareAndSwap(last, now) {
			log.Warn("tracing: spans not exported (is the collector up?); they are dropped, nothing waits for them",
				"endpoint", cfg.Endpoint, "error", err, "errors_so_far", n)
		}
	}))
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u, _ := endpointURL(cfg.Endpoint)
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(u), otlptracehttp.WithTimeout(10 * time.Second), otlptracehttp.WithRetry(exportRetry)}
	if len(cfg.Headers) > 0 {
		opts = append(opts, otlptracehttp.WithHeaders(cfg.Headers))
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tracing.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tracing.ca_file %s: no PEM certificate in it", cfg.CAFile)
		}
		opts = append(opts, otlptracehttp.WithTLSClientConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	return Install(sdktrace.WithBatcher(exp), cfg.Ratio(), node, version), nil
}

// Install makes PGBastion's spans go to an exporter (sdktrace.WithBatcher for Setup's, or
// WithSyncer for a test's) and returns the function that flushes and stops it.
func Install(exporter sdktrace.TracerProviderOption, ratio float64, node, version string) func(context.Context) error {
	res := resource.NewSchemaless(
		attribute.String("service.name", "pgbastion"),
		attribute.String("service.instance.id", node),
		attribute.String("service.version", version),
	)
	root := sdktrace.TraceIDRatioBased(ratio)
	tp := sdktrace.NewTracerProvider(
		exporter,
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(root)),
		sdktrace.WithIDGenerator(idGenerator{}),
	)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	sampler.Store(&root)
	enabled.Store(true)
	return func(ctx context.Context) error {
		enabled.Store(false)
		return tp.Shutdown(ctx)
	}
}

// fixedIDs in a context makes the next span started with it take these IDs: an operation's
// span is recorded when it ends, with the IDs its children have used as their parent since
// it began.
type fixedIDs struct {
	trace trace.TraceID
	span  trace.SpanID
}

type fixedKey struct{}

type idGenerator struct{}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if f, ok := ctx.Value(fixedKey{}).(fixedIDs); ok {
		return f.trace, f.span
	}
	return newTraceID(), newSpanID()
}

func (idGenerator) NewSpanID(ctx context.Context, t trace.TraceID) trace.SpanID {
	if f, ok := ctx.Value(fixedKey{}).(fixedIDs); ok && f.trace == t {
		return f.span
	}
	return newSpanID()
}

func newTraceID() (t trace.TraceID) {
	for !t.IsValid() {
		_, _ = rand.Read(t[:])
	}
	return t
}

func newSpanID() (s trace.SpanID) {
	for !s.IsValid() {
		_, _ = rand.Read(s[:])
	}
	return s
}

// NewRequestID returns a random request ID (16 hexadecimal digits).
func NewRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
