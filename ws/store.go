package ws

import (
	"context"
	"time"

	"github.com/grupogad/outboxd/relay"
)

const queryTimeout = 10 * time.Second

// entitledFilter matches rows for a client with user $2 and roles $3:
// broadcasts (no targets), or an overlap with its user or roles.
const entitledFilter = `((coalesce(cardinality(e.target_users), 0) = 0 AND coalesce(cardinality(e.target_roles), 0) = 0)
   OR e.target_users && $2::text[] OR e.target_roles && $3::text[])`

// catchUpSQL reads, in one snapshot, the head, the oldest retained seq and
// up to $4 entitled events after $1 (not beyond that head).
const catchUpSQL = `SELECT h.last_seq, h.oldest, ev.id, ev.seq, ev.topic, ev.payload, ev.created_at
FROM (SELECT last_seq, coalesce((SELECT min(seq) FROM outbox.events WHERE seq IS NOT NULL), 0) AS oldest
      FROM outbox.relay_state) h
LEFT JOIN LATERAL (
  SELECT e.id, e.seq, e.topic, e.payload, e.created_at FROM outbox.events e
  WHERE e.seq > $1 AND e.seq <= h.last_seq AND ` + entitledFilter + `
  ORDER BY e.seq LIMIT $4) ev ON true
ORDER BY ev.seq`

type catchUpPage struct {
	head   int64 // relay head in the read's snapshot
	oldest int64 // oldest retained seq (0: table empty)
}

// pastRetention reports whether events after cursor may have been deleted.
func (p catchUpPage) pastRetention(cursor int64) bool {
	if p.oldest == 0 {
		return cursor < p.head
	}
	return cursor < p.oldest-1
}

func (h *Hub) readEntitled(ctx context.Context, after int64, c *client, limit int, buf []relay.Event) (catchUpPage, []relay.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var page catchUpPage
	rows, err := h.pool.Query(ctx, catchUpSQL, after, []string{c.userID}, c.roles, limit)
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

type resumeState struct {
	catchUpPage
	entitled int64 // entitled events after since, counted up to ReplayMax+1
}

const resumeSQL = `SELECT h.last_seq, h.oldest,
  (SELECT count(*) FROM (SELECT 1 FROM outbox.events e
     WHERE e.seq > $1 AND e.seq <= h.last_seq AND ` + entitledFilter + ` LIMIT $4) x)
FROM (SELECT last_seq, coalesce((SELECT min(seq) FROM outbox.events WHERE seq IS NOT NULL), 0) AS oldest
      FROM outbox.relay_state) h`

func (h *Hub) resumeStatus(ctx context.Context, since int64, c *client) (resumeState, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var st resumeState
	err := h.pool.QueryRow(ctx, resumeSQL, since, []string{c.userID}, c.roles, h.cfg.ReplayMax+1).
		Scan(&st.head, &st.oldest, &st.entitled)
	return st, err
}
