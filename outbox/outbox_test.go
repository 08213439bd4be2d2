package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/grupogad/outboxd/outbox"
)

// noSQL fails the test if Emit sends anything to the database.
type noSQL struct{ t *testing.T }

func (n noSQL) Exec(context.Context, string, ...any) (pgconn.CommandTag, error) {
	n.t.Fatal("Exec called for an invalid event")
	return pgconn.CommandTag{}, nil
}

func (n noSQL) QueryRow(context.Context, string, ...any) pgx.Row {
	n.t.Fatal("QueryRow called for an invalid event")
	return nil
}

func TestEmitRefusesBadEventsBeforeSQL(t *testing.T) {
	t.Parallel()
	big := map[string]string{"x": strings.Repeat("a", outbox.MaxPayloadBytes)}
	cases := []struct {
		name string
		ev   outbox.Event
		want string
	}{
		{"empty topic", outbox.Event{Data: map[string]int{}}, "topic"},
		{"upper-case topic", outbox.Event{Topic: "Task", Data: map[string]int{}}, "topic"},
		{"topic too long", outbox.Event{Topic: "t" + strings.Repeat("a", 64), Data: map[string]int{}}, "topic"},
		{"topic with space", outbox.Event{Topic: "task event", Data: map[string]int{}}, "topic"},
		{"nil data", outbox.Event{Topic: "task_event"}, "nil"},
		{"array data", outbox.Event{Topic: "task_event", Data: []int{1}}, "JSON object"},
		{"raw string data", outbox.Event{Topic: "task_event", Data: json.RawMessage(`"x"`)}, "JSON object"},
		{"invalid raw JSON", outbox.Event{Topic: "task_event", Data: []byte(`{"a":`)}, "JSON object"},
		{"unmarshalable", outbox.Event{Topic: "task_event", Data: map[string]any{"f": func() {}}}, "data"},
		{"too large", outbox.Event{Topic: "task_event", Data: big}, "bytes"},
		{"empty user", outbox.Event{Topic: "task_event", Data: map[string]int{}, Users: []string{"u1", ""}}, "user"},
		{"empty role", outbox.Event{Topic: "task_event", Data: map[string]int{}, Roles: []string{""}}, "role"},
		{"huge traceparent", outbox.Event{Topic: "task_event", Data: map[string]int{}, Traceparent: strings.Repeat("0", 600)}, "traceparent"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := outbox.Emit(context.Background(), noSQL{t}, c.ev)
			if !errors.Is(err, outbox.ErrInvalidEvent) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Emit: %v; want ErrInvalidEvent mentioning %q", err, c.want)
			}
			if _, err := outbox.EmitBatch(context.Background(), noSQL{t}, []outbox.Event{{Topic: "ok", Data: map[string]int{}}, c.ev}); !errors.Is(err, outbox.ErrInvalidEvent) || !strings.Contains(err.Error(), "event 1") {
				t.Fatalf("EmitBatch: %v; want ErrInvalidEvent for event 1", err)
			}
		})
	}
}

type row struct {
	topic   string
	payload string
	users   []string
	roles   []string
	tp      *string
}

func readRow(t *testing.T, db *testDB, id int64) row {
	t.Helper()
	var r row
	err := db.Pool.QueryRow(context.Background(), `SELECT topic, payload::text, target_users, target_roles, traceparent
		FROM outbox.events WHERE id = $1`, id).Scan(&r.topic, &r.payload, &r.users, &r.roles, &r.tp)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestEmitStoresTheEvent(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	ctx := context.Background()
	outbox.SetTraceparentFunc(func(ctx context.Context) string {
		tp, _ := ctx.Value(tpKey{}).(string)
		return tp
	})
	t.Cleanup(func() { outbox.SetTraceparentFunc(nil) })
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := outbox.Emit(context.WithValue(ctx, tpKey{}, tp), tx, outbox.Event{
		Topic: "efectivo_event", Data: map[string]any{"efectivo_id": 7, "disponible": false},
		Users: []string{"u1"}, Roles: []string{"LEVEL_1", "admin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := readRow(t, db, id)
	if r.topic != "efectivo_event" || r.payload != `{"disponible": false, "efectivo_id": 7}` ||
		strings.Join(r.users, ",") != "u1" || strings.Join(r.roles, ",") != "LEVEL_1,admin" || r.tp == nil || *r.tp != tp {
		t.Fatalf("stored %+v", r)
	}

	// A broadcast stores NULL targets; a rolled-back transaction stores nothing.
	tx, err = db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Emit(ctx, tx, outbox.Event{Topic: "system_event", Data: json.RawMessage(`{"alert":"x"}`), Broadcast: true}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	id2, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "system_event", Data: json.RawMessage(`{"alert":"y"}`), Broadcast: true})
	if err != nil {
		t.Fatal(err)
	}
	r = readRow(t, db, id2)
	if r.users != nil || r.roles != nil || r.tp != nil {
		t.Fatalf("broadcast stored targets %+v", r)
	}
	if n := db.Int64(t, `SELECT count(*) FROM outbox.events`); n != 2 {
		t.Fatalf("%d rows, want 2 (the rolled-back event must not exist)", n)
	}
	// Empty targets (a recipient query that found nobody) are stored as
	// empty sets, never as NULL: they reach nobody.
	for _, ev := range []outbox.Event{{Users: []string{}}, {Roles: []string{}}, {}} {
		ev.Topic, ev.Data = "system_event", json.RawMessage(`{"alert":"z"}`)
		id, err := outbox.Emit(ctx, db.Pool, ev)
		if err != nil {
			t.Fatal(err)
		}
		if r := readRow(t, db, id); r.users == nil || r.roles == nil || len(r.users)+len(r.roles) != 0 {
			t.Fatalf("%+v stored targets %+v, want two empty arrays", ev, r)
		}
	}
	if _, err := outbox.Emit(ctx, db.Pool, outbox.Event{Topic: "t", Data: map[string]int{}, Broadcast: true, Roles: []string{"x"}}); !errors.Is(err, outbox.ErrInvalidEvent) {
		t.Fatalf("Broadcast with Roles: %v", err)
	}
}

type tpKey struct{}

func TestEmitBatchOneRoundTripInOrder(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	ctx := context.Background()
	evs := []outbox.Event{
		{Topic: "task_event", Data: map[string]int{"n": 0}, Users: []string{"a", "b"}},
		{Topic: "dashboard_event", Data: map[string]int{"n": 1}, Broadcast: true},
		{Topic: "task_event", Data: map[string]int{"n": 2}, Roles: []string{"LEVEL_2"}, Traceparent: "tp"},
	}
	ids, err := outbox.EmitBatch(ctx, db.Pool, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 || ids[0] >= ids[1] || ids[1] >= ids[2] {
		t.Fatalf("ids %v", ids)
	}
	want := []row{
		{topic: "task_event", payload: `{"n": 0}`, users: []string{"a", "b"}, roles: []string{}},
		{topic: "dashboard_event", payload: `{"n": 1}`},
		{topic: "task_event", payload: `{"n": 2}`, users: []string{}, roles: []string{"LEVEL_2"}},
	}
	for i, id := range ids {
		r := readRow(t, db, id)
		if r.topic != want[i].topic || r.payload != want[i].payload ||
			strings.Join(r.users, ",") != strings.Join(want[i].users, ",") || (r.users == nil) != (want[i].users == nil) ||
			strings.Join(r.roles, ",") != strings.Join(want[i].roles, ",") || (r.roles == nil) != (want[i].roles == nil) {
			t.Fatalf("row %d: %+v, want %+v", i, r, want[i])
		}
	}
	if ids, err := outbox.EmitBatch(ctx, db.Pool, nil); ids != nil || err != nil {
		t.Fatalf("empty batch: %v %v", ids, err)
	}
}

// Bad rows written directly in SQL are refused at INSERT by the constraints,
// in the producer's own transaction, with a message naming the rule.
func TestBadRowsRefusedAtInsert(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	ctx := context.Background()
	cases := []struct{ name, sql, constraint string }{
		{"bad topic", `SELECT outbox.emit('Bad Topic', '{}')`, "events_topic_format_check"},
		{"payload array", `SELECT outbox.emit('task_event', '[1,2]')`, "events_payload_object_check"},
		{"payload scalar", `INSERT INTO outbox.events (topic, payload) VALUES ('task_event', '"x"')`, "events_payload_object_check"},
		{"payload too big", `SELECT outbox.emit('task_event', jsonb_build_object('x', repeat('a', 262144)))`, "events_payload_max_256kib_check"},
		{"null user", `SELECT outbox.emit('task_event', '{}', ARRAY['u', NULL])`, "events_target_users_no_null_check"},
		{"null role", `SELECT outbox.emit('task_event', '{}', NULL, ARRAY[NULL::text])`, "events_target_roles_no_null_check"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := db.Pool.Exec(ctx, c.sql)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "23514" || pgErr.ConstraintName != c.constraint ||
				!strings.Contains(pgErr.Message, c.constraint) {
				t.Fatalf("got %v; want check violation of %s", err, c.constraint)
			}
		})
	}
	// Through Emit with a raw payload that bypasses nothing: Emit validates
	// first, so a constraint error can only come from a direct INSERT; the
	// translation is still checked with the SQL function path.
	var id int64
	if err := db.Pool.QueryRow(ctx, `SELECT outbox.emit('task_event', '{"ok":true}', ARRAY['u1'], NULL, '00-tp')`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if n := db.Int64(t, `SELECT count(*) FROM outbox.events`); n != 1 {
		t.Fatalf("%d rows, want only the good one", n)
	}
	// head() reads the last assigned seq.
	if h := db.Int64(t, `SELECT outbox.head()`); h != 0 {
		t.Fatalf("head %d", h)
	}
}
