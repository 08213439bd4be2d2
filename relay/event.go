package relay

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Event is a sequenced outbox row.
type Event struct {
	ID      int64
	Seq     int64
	Topic   string
	Payload json.RawMessage
	// Users and Roles are the targets: nil is SQL's NULL, empty an empty
	// set. Only both nil reaches everyone.
	Users       []string
	Roles       []string
	Traceparent string
	CreatedAt   time.Time
	// Malformed says a column could not be decoded as it is (created_at
	// set to ±infinity by an UPDATE behind the relay's back, say): the
	// event is still relayed, with CreatedAt the time it was read, so that
	// no row is left pending or holds back the rows after it. The hub
	// counts and logs it.
	Malformed bool
}

// Broadcast reports whether the event goes to every client.
func (e *Event) Broadcast() bool { return e.Users == nil && e.Roles == nil }

// Dispatcher receives events in seq order. Dispatch may be called again with
// events already dispatched (after a reconnect); implementations dedupe by
// Seq. An error makes the tailer retry the same events after a backoff.
type Dispatcher interface {
	Dispatch(ctx context.Context, events []Event) error
}

// DispatcherFunc adapts a function to Dispatcher.
type DispatcherFunc func(ctx context.Context, events []Event) error

// Dispatch calls f.
func (f DispatcherFunc) Dispatch(ctx context.Context, events []Event) error { return f(ctx, events) }

// selectEvents is the column list scanEvent reads.
const selectEvents = `SELECT id, seq, topic, payload, target_users, target_roles,
       coalesce(traceparent, ''), created_at FROM outbox.events`

type scanner interface{ Scan(dest ...any) error }

// scanEvent scans one row into e; created is the caller's, reused from
// row to row (one fewer allocation a row).
func scanEvent(r scanner, e *Event, created *pgtype.Timestamptz) error {
	var payload []byte
	if err := r.Scan(&e.ID, &e.Seq, &e.Topic, &payload, &e.Users, &e.Roles, &e.Traceparent, created); err != nil {
		return err
	}
	e.Payload = payload
	e.setCreatedAt(*created)
	return nil
}

// setCreatedAt decodes created_at: the table's trigger sets it (migration
// 00010), but a table owner's UPDATE can still store ±infinity, which no
// time.Time holds. Scanning into time.Time failed the whole read, and the
// tailer retried it for ever: every replica stopped delivering.
func (e *Event) setCreatedAt(ts pgtype.Timestamptz) {
	if ts.Valid && ts.InfinityModifier == pgtype.Finite {
		e.CreatedAt = ts.Time.UTC()
		return
	}
	e.CreatedAt, e.Malformed = time.Now().UTC(), true
}
