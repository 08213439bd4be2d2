package sql_test

import (
	"context"
	"slices"
	"testing"

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
	if err != nil || !slices.Equal(applied, []int64{1, 2, 3, 4, 5, 6, 7}) || !schemaExists() {
		t.Fatalf("up: %v %v schema=%v", applied, err, schemaExists())
	}
	st, err := m.Status(ctx)
	if err != nil || len(st) != 7 || !st[0].Applied || !st[6].Applied {
		t.Fatalf("status: %+v %v", st, err)
	}
	// Down one version at a time, down to the schema.
	for v := int64(7); v > 2; v-- {
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
	if applied, err := m.Up(ctx); err != nil || len(applied) != 7 || !schemaExists() {
		t.Fatalf("up again: %v %v", applied, err)
	}
	if applied, err := m.Up(ctx); err != nil || len(applied) != 0 {
		t.Fatalf("up when current: %v %v", applied, err)
	}
	if _, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "task_event", Data: map[string]int{"n": 1}, Broadcast: true}); err != nil {
		t.Fatalf("emit after up/down/up: %v", err)
	}
}
