package relay

import (
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/grupogad/outboxd/stream"
)

// The stream's words live in the leaf package stream (which the hub
// imports without the relay); the relay speaks them under its own names.
type (
	// Event is a sequenced outbox row (stream.Event).
	Event = stream.Event
	// Dispatcher receives events in seq order (stream.Dispatcher).
	Dispatcher = stream.Dispatcher
	// DispatcherFunc adapts a function to Dispatcher.
	DispatcherFunc = stream.DispatcherFunc
	// Rebaser follows the relay onto another history (stream.Rebaser).
	Rebaser = stream.Rebaser
	// Fanout reports the local fan-out's backlog (stream.Fanout).
	Fanout = stream.Fanout
	// History is a head and its epoch (stream.History).
	History = stream.History
	// Position is a head and the oldest retained seq (stream.Position).
	Position = stream.Position
	// ReplayQuery is a replay read (stream.ReplayQuery).
	ReplayQuery = stream.ReplayQuery
	// Page is what a replay read covered (stream.Page).
	Page = stream.Page
	// Status is the relay's position for /ws/stats (stream.Status).
	Status = stream.Status
)

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
	setCreatedAt(e, *created)
	return nil
}

// setCreatedAt decodes created_at: the table's trigger sets it (migration
// 00010), but a table owner's UPDATE can still store ±infinity, which no
// time.Time holds. Scanning into time.Time failed the whole read, and the
// tailer retried it for ever: every replica stopped delivering.
func setCreatedAt(e *Event, ts pgtype.Timestamptz) {
	if ts.Valid && ts.InfinityModifier == pgtype.Finite {
		e.CreatedAt = ts.Time.UTC()
		return
	}
	e.CreatedAt, e.Malformed = time.Now().UTC(), true
}
