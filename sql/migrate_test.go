package outboxsql_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/outbox"
	outboxsql "github.com/grupogad/outboxd/sql"
)

func TestMigrationsUpDownUp(t *testing.T) {
	t.Parallel()
	db := dbtest.NewEmpty(t)
	ctx := context.Background()
	m, err := outboxsql.NewMigrator(db.Pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	schemaExists := func() bool {
		return db.Int64(t, `SELECT count(*) FROM pg_namespace WHERE nspname = 'outbox'`) == 1
	}
	applied, err := m.Up(ctx)
	if err != nil || !slices.Equal(applied, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}) || !schemaExists() {
		t.Fatalf("up: %v %v schema=%v", applied, err, schemaExists())
	}
	st, err := m.Status(ctx)
	if err != nil || len(st) != 11 || !st[0].Applied || !st[10].Applied {
		t.Fatalf("status: %+v %v", st, err)
	}
	// Down one version at a time, down to the schema.
	for v := int64(11); v > 2; v-- {
		if got, err := m.Down(ctx); err != nil || got != v || !schemaExists() {
			t.Fatalf("down: %d (want %d) %v schema=%v", got, v, err, schemaExists())
		}
	}
	if v, err := m.Down(ctx); err != nil || v != 2 || !schemaExists() {
		t.Fatalf("down: %d %v schema=%v", v, err, schemaExists())
	}
	if v, err := m.Down(ctx); err != nil || v != 1 || schemaExists() {
		t.Fatalf("down: %d %v schema=%v", v, err, schemaExists())
	}
	if st, _ := m.Status(ctx); st[0].Applied || st[1].Applied {
		t.Fatal("status after down says applied")
	}
	if applied, err := m.Up(ctx); err != nil || len(applied) != 11 || !schemaExists() {
		t.Fatalf("up again: %v %v", applied, err)
	}
	if applied, err := m.Up(ctx); err != nil || len(applied) != 0 {
		t.Fatalf("up when current: %v %v", applied, err)
	}
	if _, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "task_event", Data: map[string]int{"n": 1}, Broadcast: true}); err != nil {
		t.Fatalf("emit after up/down/up: %v", err)
	}
}

// Migration 00008: the row checks hold for every row not yet sequenced —
// at INSERT (outbox's tests) and at any UPDATE before the sequencer numbers
// it; the sequencer's own UPDATE stops at seq IS NOT NULL (what that saves:
// BenchmarkSequencerBatchCPU_256Rows against _OldChecks).
func TestRowChecksHoldUntilSequenced(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	db.Exec(t, `INSERT INTO outbox.events (topic, payload) VALUES ('task_event', '{}')`)
	for _, c := range []struct{ set, constraint string }{
		{`topic = 'Bad Topic'`, "events_topic_format_check"},
		{`payload = '[1]'`, "events_payload_object_check"},
		{`payload = jsonb_build_object('x', repeat('a', 262144))`, "events_payload_max_256kib_check"},
		{`target_users = ARRAY[NULL::text]`, "events_target_users_no_null_check"},
		{`target_roles = ARRAY[NULL::text]`, "events_target_roles_no_null_check"},
		{`traceparent = repeat('0', 513)`, "events_traceparent_length_check"},
	} {
		_, err := db.Pool.Exec(ctx, `UPDATE outbox.events SET `+c.set+` WHERE seq IS NULL`)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23514" || pgErr.ConstraintName != c.constraint {
			t.Errorf("a pending row updated with %s: %v, want %s", c.set, err, c.constraint)
		}
	}
	db.Exec(t, `UPDATE outbox.events SET seq = 1, delivered_at = now() WHERE seq IS NULL`)
	if n := db.Int64(t, `SELECT count(*) FROM outbox.events WHERE seq = 1`); n != 1 {
		t.Fatalf("sequenced rows: %d", n)
	}
}
