package ws

import (
	"context"
	"time"

	"github.com/grupogad/outboxd/relay"
)

const queryTimeout = 10 * time.Second

// entitledFilter matches rows for a client with user $2 and roles $3:
// broadcasts (both targets NULL), or an overlap with its user or roles. An
// empty array is an empty set: it matches nobody.
const entitledFilter = `((e.target_users IS NULL AND e.target_roles IS NULL)
   OR e.target_users && $2::text[] OR e.target_roles && $3::text[])`

// catchUpSQL reads, in one snapshot, the head, the oldest retained seq and
// the entitled events in the seq RANGE ($1, min($1+$4, head)]. Bounding the
// range, not just the row count, bounds the work whatever plan PostgreSQL
// picks: with LIMIT alone it may read every row after $1 and sort them (it
// cannot estimate how selective the entitlement filter is), which for a
// client 150,000 events behind costs ~70 ms per page of 256.
//
// The one-row position comes from scalar subqueries: a join with
// relay_state, a tiny table autovacuum may never analyze, makes the planner
// estimate thousands of rows and a cost high enough to JIT-compile a 0.1 ms
// query for 100 ms.
const catchUpSQL = `SELECT h.last_seq, h.oldest, ev.id, ev.seq, ev.topic, ev.payload, ev.created_at
FROM (SELECT (SELECT last_seq FROM outbox.relay_state) AS last_seq,
             coalesce(` + relay.OldestSeqSQL + `, 0) AS oldest) h
LEFT JOIN LATERAL (
  SELECT e.id, e.seq, e.topic, e.payload, e.created_at FROM outbox.events e
  WHERE e.seq > $1 AND e.seq <= least(h.last_seq, $1 + $4) AND ` + entitledFilter + `
  ORDER BY e.seq) ev ON true
ORDER BY ev.seq`

type catchUpPage struct {
	head   int64 // relay head in the read's snapshot
	oldest int64 // oldest retained seq (0: table empty)
}

// scannedTo is the last seq the read covered: every entitled event up to
// it was returned.
func (p catchUpPage) scannedTo(after int64, span int) int64 {
	return max(after, min(p.head, after+int64(span)))
}

// pastRetention reports whether events after cursor may have been deleted.
func (p catchUpPage) pastRetention(cursor int64) bool {
	if p.oldest == 0 {
		return cursor < p.head
	}
	return cursor < p.oldest-1
}

// readEntitled appends to buf the events for c in (after, after+span],
// capped at the head.
func (h *Hub) readEntitled(ctx context.Context, after int64, c *client, span int, buf []relay.Event) (catchUpPage, []relay.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var page catchUpPage
	rows, err := h.pool.Query(ctx, catchUpSQL, after, []string{c.userID}, c.roles, span)
	if err != nil {
		return page, buf, err
	}
	defer rows.Close()
	for rows.Next() {
		var id, seq *int64
		var topic *string
		var payload []byte
		var created *time.Time
		if err := rows.Scan(&page.head, &page.oldest, &id, &seq, &topic, &payload, &created); err != nil {
			return page, buf, err
		}
		if id == nil { // no entitled rows: the LEFT JOIN's empty side
			continue
		}
		buf = append(buf, relay.Event{ID: *id, Seq: *seq, Topic: *topic, Payload: payload, CreatedAt: *created})
	}
	return page, buf, rows.Err()
}

const statusSQL = `SELECT (SELECT last_seq FROM outbox.relay_state),
  coalesce(` + relay.OldestSeqSQL + `, 0)`

// position reads the head and the oldest retained seq.
func (h *Hub) position(ctx context.Context) (catchUpPage, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var p catchUpPage
	err := h.pool.QueryRow(ctx, statusSQL).Scan(&p.head, &p.oldest)
	return p, err
}
