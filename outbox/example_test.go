package outbox_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/outbox"
)

func ExampleEvent_Validate() {
	ev := outbox.Event{Topic: "Task Event", Data: map[string]any{"id": 1}}
	err := ev.Validate()
	fmt.Println(errors.Is(err, outbox.ErrInvalidEvent))
	fmt.Println(err)

	ev = outbox.Event{Topic: "task_event", Data: map[string]any{"id": 1, "status": "done"}, Roles: []string{"LEVEL_1"}}
	fmt.Println(ev.Validate())
	// Output:
	// true
	// outbox: invalid event: topic "Task Event" must match ^[a-z][a-z0-9_.-]{0,63}$
	// <nil>
}

// Emit the event as the last statement of the transaction that changes the model.
func ExampleEmit() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/app")
	if err != nil {
		return
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `UPDATE tasks SET status = 'done' WHERE id = $1`, 42); err != nil {
		return
	}
	if _, err := outbox.Emit(ctx, tx, outbox.Event{
		Topic: "task_event",
		Data:  map[string]any{"task_id": 42, "status": "done"},
		Roles: []string{"LEVEL_1"},
	}); err != nil {
		return
	}
	_ = tx.Commit(ctx)
}
