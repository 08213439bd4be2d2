package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/pyvenv"
)

// The example producers — Go, Python/SQLAlchemy and plain SQL — run against
// the real database, and every event they commit reaches a WebSocket client
// entitled to all of them, once, in seq order.
func TestExampleProducersReachClient(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := startOutboxd(t, db)
	conn, _ := dialAs(t, p, "u1", "LEVEL_1", "admin")
	type frame struct {
		Type string          `json:"type"`
		Seq  int64           `json:"seq"`
		Data json.RawMessage `json:"data"`
	}
	frames := make(chan frame, 1000)
	go func() {
		defer close(frames)
		for {
			var f frame
			if err := conn.ReadJSON(&f); err != nil {
				return
			}
			frames <- f
		}
	}()
	if f := <-frames; f.Type != "welcome" {
		t.Fatalf("first frame %+v", f)
	}

	root, _ := filepath.Abs(filepath.Join("..", ".."))
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "DATABASE_URL="+db.URL)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	// The Go example is a module of its own: it builds with the producer
	// library alone (and the OTel SDK it uses for its spans).
	goProducer := filepath.Join(t.TempDir(), "go-producer")
	build := exec.Command("go", "build", "-o", goProducer, ".")
	build.Dir = filepath.Join(root, "examples", "go-producer")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the Go example: %v\n%s", err, out)
	}
	run(goProducer, "-count", "40", "-rate", "0")
	run(pyvenv.Python(t), "examples/python-sqlalchemy/producer.py", "--count", "20", "--rate", "0")
	run("psql", db.URL, "-v", "ON_ERROR_STOP=1", "-q", "-f", "examples/sql/emit.sql")

	var total int64
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox.events`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total < 50 {
		t.Fatalf("the producers committed only %d events", total)
	}
	topics := map[string]int{}
	var last int64
	deadline := time.After(30 * time.Second)
	for last < total {
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatalf("connection closed after seq %d of %d", last, total)
			}
			if f.Seq == 0 {
				continue
			}
			if f.Seq != last+1 {
				t.Fatalf("seq %d after %d", f.Seq, last)
			}
			last = f.Seq
			topics[f.Type]++
		case <-deadline:
			t.Fatalf("received %d of %d events", last, total)
		}
	}
	var names []string
	for k := range topics {
		names = append(names, k)
	}
	sort.Strings(names)
	if !slices.Equal(names, []string{"dashboard_event", "efectivo_event", "system_event", "task_event"}) {
		t.Fatalf("topics %v", topics)
	}
	// The Python producer's after_flush listener emitted status changes.
	var statusChanges int64
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox.events
		WHERE payload->>'action' = 'status_changed' AND payload ? 'previous'`).Scan(&statusChanges); err != nil {
		t.Fatal(err)
	}
	if statusChanges == 0 {
		t.Fatal("no status_changed event from the SQLAlchemy listener")
	}
}
