// Command go-producer is a realistic outboxd producer: a small task-management
// workload (tasks and personnel, "efectivos") whose every change is written
// in one transaction with its event, emitted with outbox.Emit as the LAST
// statement.
//
//	go run ./examples/go-producer -count 100 -rate 20
//
// It creates its demo tables if they are missing. Events:
//
//	task_event       task created (to role LEVEL_1) or status changed (to the assignee and LEVEL_1)
//	efectivo_event   availability changed (to everyone)
//	dashboard_event  counters refreshed (to role admin)
//	system_event     an alert every 25 operations (to everyone)
//
// It is a module of its own that needs only the producer library (go get
// github.com/grupogad/outboxd/outbox), pgx and, for tracing, the
// OpenTelemetry SDK: with OTEL_EXPORTER_OTLP_ENDPOINT set, every operation
// is a span, its traceparent is stored with the event, and outboxd's
// "process <topic>" span links to it, so a trace viewer shows producer →
// outboxd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/signal"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/grupogad/outboxd/outbox"
)

// setupTracing exports spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT
// is set (the exporter reads the standard OTEL_* variables), and tells the
// outbox library how to read the current span's W3C traceparent.
func setupTracing(ctx context.Context) (shutdown func(context.Context) error, err error) {
	outbox.SetTraceparentFunc(func(ctx context.Context) string {
		c := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, c)
		return c["traceparent"]
	})
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, err
	}
	name := envOr("OTEL_SERVICE_NAME", "go-producer")
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(name))))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

const schema = `
CREATE TABLE IF NOT EXISTS demo_tasks (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  title      text NOT NULL,
  status     text NOT NULL DEFAULT 'pending',
  assignee   text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS demo_efectivos (
  id         bigint PRIMARY KEY,
  nombre     text NOT NULL,
  disponible boolean NOT NULL DEFAULT true
);
INSERT INTO demo_efectivos (id, nombre)
SELECT g, 'Efectivo ' || g FROM generate_series(1, 20) g ON CONFLICT DO NOTHING;`

var statuses = []string{"pending", "in_progress", "blocked", "done"}

func main() {
	url := flag.String("database-url", envOr("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "PostgreSQL URL")
	count := flag.Int("count", 100, "operations to run (each one transaction)")
	rate := flag.Float64("rate", 10, "operations per second (0: as fast as possible)")
	users := flag.Int("users", 5, "operators u1..uN tasks are assigned to")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	shutdown, err := setupTracing(ctx)
	if err != nil {
		log.Fatal(err)
	}
	err = run(ctx, *url, *count, *rate, *users)
	if serr := shutdown(context.Background()); serr != nil {
		log.Printf("go-producer: flushing spans: %v", serr)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, url string, count int, rate float64, users int) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	var migrated bool
	if err := pool.QueryRow(ctx, `SELECT to_regprocedure('outbox.emit(text,jsonb,text[],text[],text)') IS NOT NULL`).Scan(&migrated); err != nil {
		return err
	}
	if !migrated {
		return errors.New("this database has no outbox schema: run `outboxd migrate` (or start outboxd, which applies it) first")
	}
	if _, err := pool.Exec(ctx, schema); err != nil {
		return fmt.Errorf("the demo tables demo_tasks and demo_efectivos (this example's own; another program may have made tables of those names with other columns: drop them or use another database): %w", err)
	}
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		tick = t.C
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for i := range count {
		if tick != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-tick:
			}
		}
		// One span per operation: the event's traceparent points at it.
		octx, span := otel.Tracer("go-producer").Start(ctx, "demo operation")
		span.SetAttributes(attribute.Int("demo.operation", i))
		op := operation(octx, r, i, users)
		err := pgx.BeginFunc(octx, pool, op)
		span.End()
		if err != nil {
			return fmt.Errorf("operation %d: %w", i, err)
		}
	}
	log.Printf("go-producer: %d operations committed", count)
	return nil
}

// operation picks the next change; each writes the model, then emits.
func operation(ctx context.Context, r *rand.Rand, i, users int) func(pgx.Tx) error {
	switch {
	case i%25 == 24:
		return func(tx pgx.Tx) error {
			_, err := outbox.Emit(ctx, tx, outbox.Event{Topic: "system_event",
				Data: map[string]any{"level": "warning", "message": "Revisión periódica del sistema", "op": i}, Broadcast: true})
			return err
		}
	case i%10 == 9:
		return func(tx pgx.Tx) error {
			var open, done int
			if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status <> 'done'), count(*) FILTER (WHERE status = 'done') FROM demo_tasks`).Scan(&open, &done); err != nil {
				return err
			}
			_, err := outbox.Emit(ctx, tx, outbox.Event{Topic: "dashboard_event",
				Data: map[string]any{"open_tasks": open, "done_tasks": done}, Roles: []string{"admin"}})
			return err
		}
	case r.IntN(3) == 0:
		return func(tx pgx.Tx) error {
			id := 1 + r.IntN(20)
			var disponible bool
			if err := tx.QueryRow(ctx, `UPDATE demo_efectivos SET disponible = NOT disponible WHERE id = $1 RETURNING disponible`, id).Scan(&disponible); err != nil {
				return err
			}
			_, err := outbox.Emit(ctx, tx, outbox.Event{Topic: "efectivo_event",
				Data: map[string]any{"action": "availability_changed", "efectivo_id": id, "disponible": disponible}, Broadcast: true})
			return err
		}
	case i == 0 || r.IntN(2) == 0: // the first operation creates a task: later ones have one to change
		return func(tx pgx.Tx) error {
			assignee := fmt.Sprintf("u%d", 1+r.IntN(users))
			var id int64
			if err := tx.QueryRow(ctx, `INSERT INTO demo_tasks (title, assignee) VALUES ($1, $2) RETURNING id`,
				fmt.Sprintf("Tarea %d", i), assignee).Scan(&id); err != nil {
				return err
			}
			_, err := outbox.Emit(ctx, tx, outbox.Event{Topic: "task_event",
				Data: map[string]any{"action": "created", "task_id": id, "assignee": assignee}, Roles: []string{"LEVEL_1"}})
			return err
		}
	default:
		return func(tx pgx.Tx) error {
			status := statuses[r.IntN(len(statuses))]
			var id int64
			var assignee string
			err := tx.QueryRow(ctx, `UPDATE demo_tasks SET status = $1, updated_at = now()
				WHERE id = (SELECT id FROM demo_tasks ORDER BY random() LIMIT 1) RETURNING id, assignee`, status).Scan(&id, &assignee)
			if err == pgx.ErrNoRows {
				return nil // no task yet
			}
			if err != nil {
				return err
			}
			_, err = outbox.Emit(ctx, tx, outbox.Event{Topic: "task_event",
				Data:  map[string]any{"action": "status_changed", "task_id": id, "status": status},
				Users: []string{assignee}, Roles: []string{"LEVEL_1"}})
			return err
		}
	}
}
