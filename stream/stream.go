package stream

import (
	"context"
	"encoding/json"
	"time"
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
// Seq. An error makes the caller retry the same events after a backoff.
type Dispatcher interface {
	Dispatch(ctx context.Context, events []Event) error
}

// DispatcherFunc adapts a function to Dispatcher.
type DispatcherFunc func(ctx context.Context, events []Event) error

// Dispatch calls f.
func (f DispatcherFunc) Dispatch(ctx context.Context, events []Event) error { return f(ctx, events) }

// Rebaser is implemented by a Dispatcher that can follow the relay onto
// another history: the database was restored or recreated, so the seqs it
// has delivered mean nothing any more. Rebase is called between Dispatch
// calls, with the new history's epoch and head; dispatching then continues
// after head.
type Rebaser interface {
	Rebase(ctx context.Context, epoch string, head int64)
}

// Fanout reports the local fan-out's backlog.
type Fanout interface {
	// Unwritten is how many frames are queued to the sessions and not yet
	// written to their sockets.
	Unwritten() int
}

// History is the database's current position and the identity of its
// history (a restored or recreated database is another history, and seqs
// from one mean nothing in the other).
type History struct {
	Head  int64
	Epoch string
}

// Position is the head and the oldest retained seq (0 when the table
// holds no sequenced row), read in one snapshot.
type Position struct {
	Head   int64
	Oldest int64
}

// PastRetention reports whether events after cursor may have been deleted.
func (p Position) PastRetention(cursor int64) bool {
	if p.Oldest == 0 {
		return cursor < p.Head
	}
	return cursor < p.Oldest-1
}

// ReplayQuery asks for the events a client is entitled to in the seq range
// (After, After+Span], capped at the head, and at most MaxBytes of payload
// (always at least one event).
type ReplayQuery struct {
	After    int64
	Span     int
	MaxBytes int
	User     string
	Roles    []string
	// Topics is the client's topic filter (nil: every topic).
	Topics []string
	// SkipEmpty: when the range holds nothing for the client, ask the
	// entitlement indexes for the next seq it may see and cover everything
	// before it. Cheap for a client entitled to little; for one entitled to
	// much of the table the index lookup costs more than a range, so the
	// hub stops asking once a skip gains little.
	SkipEmpty bool
}

// Page is what a replay read covered.
type Page struct {
	Position
	// ScannedTo is the last seq the read covered: every entitled event up
	// to it was returned.
	ScannedTo int64
	// Bytes is the payload bytes returned.
	Bytes int
	// Skipped is how many seqs past the range a SkipEmpty lookup covered.
	Skipped int64
}

// Status is the relay's position, as /ws/stats reports it.
type Status struct {
	// HeadSeq is the last assigned seq.
	HeadSeq int64 `json:"head_seq"`
	// OldestSeq is the oldest retained seq (0 when the table is empty):
	// clients can resume from OldestSeq-1.
	OldestSeq int64 `json:"oldest_seq"`
	// Pending counts rows not yet sequenced.
	Pending int64 `json:"pending"`
	// Lag is the age in seconds of the oldest pending row (0 when none).
	Lag float64 `json:"lag"`
	// Epoch identifies the history the seqs belong to (outbox.epoch()).
	Epoch string `json:"epoch"`
}

// The outbox table's limits and reserved names, as the migrations define
// them (the producer library, a module of its own, states them again; a
// test holds the two equal).
const (
	// MaxPayloadBytes is the largest payload a row may carry, as JSON text
	// (events_payload_max_256kib_check).
	MaxPayloadBytes = 256 << 10
	// ReservedTopicPrefix starts the topics of control rows: never
	// delivered as frames, never subscribable, refused by outbox.emit.
	ReservedTopicPrefix = "outboxd."
	// TopicDisconnect is outbox.disconnect's control row.
	TopicDisconnect = "outboxd.disconnect"
)

// ReadsStatus is where event reads go when a standby is configured
// (READ_DATABASE_URL), as /ws/stats reports it under relay.reads.
type ReadsStatus struct {
	// Source is "standby" while reads go there, else "primary".
	Source string `json:"source"`
	// StandbyUp: the standby answered its last check.
	StandbyUp bool `json:"standby_up"`
	// LagSeconds is how long the standby has lacked an event this replica
	// knows of; LagEvents how many seqs it is behind (both 0 while it is
	// down, when they are not known).
	LagSeconds float64 `json:"lag_seconds"`
	LagEvents  int64   `json:"lag_events"`
	// StandbyPages and PrimaryPages count the event pages read from each.
	StandbyPages int64 `json:"standby_pages"`
	PrimaryPages int64 `json:"primary_pages"`
}
