package ws

import (
	"context"
	"time"

	"github.com/grupogad/outboxd/stream"
)

// Store is everything the hub asks of the database, in the relay's terms:
// seqs, targets, events and byte budgets. relay.Store implements it over
// PostgreSQL on a pool of its own; internal/memstore in memory, for tests.
// The hub runs no SQL.
type Store interface {
	// History is the head and the epoch the hub starts from.
	History(ctx context.Context) (stream.History, error)
	// Position is the head and the oldest retained seq, for resume checks.
	Position(ctx context.Context) (stream.Position, error)
	// ReadEntitled appends the events a catching-up client is entitled to.
	ReadEntitled(ctx context.Context, q stream.ReplayQuery, buf []stream.Event) (stream.Page, []stream.Event, error)
	// Status is the relay's position for /ws/stats and /metrics.
	Status(ctx context.Context) (stream.Status, error)
	// Revocations reads the users revoked within maxAge, with the time
	// (unix seconds) before which their tokens are refused.
	Revocations(ctx context.Context, maxAge time.Duration) (map[string]int64, error)
	// Ping checks that the database answers (/readyz).
	Ping(ctx context.Context) error
}
