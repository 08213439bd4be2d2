package relay

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store holds every statement the WebSocket hub runs: the history and
// position it starts from, the entitled replay reads of catching-up
// clients, and the status it reports. It works on a pool of its own: the
// sequencer, tailer and retention use another, so no number of clients
// resuming at once can take the relay's connections. The pool's size is
// the bound on concurrent replay reads; a read waits for a connection at
// most its timeout.
type Store struct {
	pool    *pgxpool.Pool
	timeout time.Duration
	reads   *Reads
}

// NewStore returns a Store working through pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool, timeout: QueryTimeoutDefault} }

// WithReads sends the replay pages to a standby while it keeps up (the
// positions and resume checks stay on pool).
func (s *Store) WithReads(r *Reads) *Store { s.reads = r; return s }

// History reads the head and epoch.
func (s *Store) History(ctx context.Context) (History, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return ReadHistory(ctx, s.pool)
}

const positionSQL = `SELECT (SELECT last_seq FROM outbox.relay_state), coalesce(` + OldestSeqSQL + `, 0)`

// Position reads the head and the oldest retained seq.
func (s *Store) Position(ctx context.Context) (Position, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var p Position
	err := s.pool.QueryRow(ctx, positionSQL).Scan(&p.Head, &p.Oldest)
	return p, err
}

// Status reads what /ws/stats and /metrics report, with a short timeout.
func (s *Store) Status(ctx context.Context) (Status, error) { return ReadStatusTimeout(ctx, s.pool) }

// revocationsSQL reads the revocations younger than $1 (outbox.disconnect,
// migration 00010), in unix seconds.
const revocationsSQL = `SELECT user_id, extract(epoch FROM revoked_at)::bigint FROM outbox.revocations
WHERE revoked_at >= now() - $1::interval`

// Revocations reads who was revoked within maxAge, and when (unix
// seconds): tokens of those users issued earlier are refused.
func (s *Store) Revocations(ctx context.Context, maxAge time.Duration) (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, revocationsSQL, maxAge)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	var user string
	var at int64
	_, err = pgx.ForEachRow(rows, []any{&user, &at}, func() error {
		out[user] = at
		return nil
	})
	return out, err
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// entitledFilter matches rows for a client with user $2, roles $3 and topic
// filter $5 (NULL: every topic): broadcasts (both targets NULL), or an
// overlap with its user or roles — an empty array is an empty set, it
// matches nobody — and never control rows (topics outboxd.*).
const entitledFilter = `((e.target_users IS NULL AND e.target_roles IS NULL)
   OR e.target_users && $2::text[] OR e.target_roles && $3::text[])
   AND ($5::text[] IS NULL OR e.topic = ANY ($5::text[]))
   AND e.topic NOT LIKE 'outboxd.%'`

// replaySQL reads, in one snapshot, the head, the oldest retained seq and
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
const replaySQL = `SELECT h.last_seq, h.oldest, ev.id, ev.seq, ev.topic, ev.payload, ev.created_at
FROM (SELECT (SELECT last_seq FROM outbox.relay_state) AS last_seq,
             coalesce(` + OldestSeqSQL + `, 0) AS oldest) h
LEFT JOIN LATERAL (
  SELECT e.id, e.seq, e.topic, e.payload, e.created_at FROM outbox.events e
  WHERE e.seq > $1 AND e.seq <= least(h.last_seq, $1 + $4) AND ` + entitledFilter + `
  ORDER BY e.seq) ev ON true
ORDER BY ev.seq`

// ReadEntitled appends to buf the events q asks for. Rows are read as they
// stream in and reading stops once MaxBytes of payload are held: the rest
// of the page is not kept (a page of 256 rows of 256 KiB would be 64 MiB).
//
// From a standby (WithReads) a page covers at most what the standby has
// replayed, and both its statements run on one connection (the standby
// URL may lead to several standbys, each at its own position). A page
// that failed there, or covered nothing (the standby lacks even the next
// seq: the caller reads only below the head it knows), is read from the
// primary, so that a catch-up always makes progress.
func (s *Store) ReadEntitled(ctx context.Context, q ReplayQuery, buf []Event) (Page, []Event, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if standby, ok := s.reads.pick(false); ok {
		n := len(buf)
		p, out, err := readEntitledOn(ctx, standby, q, buf)
		switch {
		case err == nil && p.ScannedTo > q.After:
			s.reads.counted(true)
			return p, out, nil
		case err != nil && ctx.Err() != nil:
			return p, out, err
		case err != nil:
			s.reads.failed(err)
		}
		buf = out[:n]
	}
	s.reads.counted(false)
	return readEntitled(ctx, s.pool, q, buf)
}

// readEntitledOn reads one page on one connection of pool.
func readEntitledOn(ctx context.Context, pool *pgxpool.Pool, q ReplayQuery, buf []Event) (Page, []Event, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return Page{}, buf, err
	}
	defer conn.Release()
	return readEntitled(ctx, conn, q, buf)
}

func readEntitled(ctx context.Context, pool Querier, q ReplayQuery, buf []Event) (Page, []Event, error) {
	var p Page
	rows, err := pool.Query(ctx, replaySQL, q.After, []string{q.User}, q.Roles, q.Span, q.Topics)
	if err != nil {
		return p, buf, err
	}
	defer rows.Close()
	full := false
	var created pgtype.Timestamptz
	for rows.Next() {
		var id, seq *int64
		var topic *string
		var payload []byte
		if err := rows.Scan(&p.Head, &p.Oldest, &id, &seq, &topic, &payload, &created); err != nil {
			return p, buf, err
		}
		if id == nil { // no entitled rows: the LEFT JOIN's empty side
			continue
		}
		e := Event{ID: *id, Seq: *seq, Topic: *topic, Payload: payload}
		setCreatedAt(&e, created)
		buf = append(buf, e)
		p.Bytes += len(payload)
		if q.MaxBytes > 0 && p.Bytes >= q.MaxBytes {
			full = true
			break
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return p, buf, err
	}
	p.ScannedTo = max(q.After, min(p.Head, q.After+int64(q.Span)))
	if full {
		p.ScannedTo = buf[len(buf)-1].Seq
	}
	if q.SkipEmpty && len(buf) == 0 && p.ScannedTo < p.Head {
		var next *int64
		if err := pool.QueryRow(ctx, nextEntitledSQL, p.ScannedTo, []string{q.User}, q.Roles).Scan(&next); err != nil {
			return p, buf, err
		}
		to := p.Head
		if next != nil {
			to = min(*next-1, p.Head)
		}
		if to > p.ScannedTo {
			p.Skipped, p.ScannedTo = to-p.ScannedTo, to
		}
	}
	return p, buf, nil
}

// nextEntitledSQL finds the first seq after $1 that a client with user $2
// and roles $3 may see: the next broadcast (a partial btree on seq), or the
// lowest seq among the rows targeted at its user or at one of its roles (a
// GIN index of each target column, migration 00007). Each lookup repeats
// its index's predicate, or the planner could not use the partial index;
// the OFFSET 0 fences keep it from walking the seq index instead, which
// would read every row after $1 — the cost being avoided.
const nextEntitledSQL = `SELECT least(
  (SELECT seq FROM outbox.events
    WHERE seq > $1 AND seq IS NOT NULL AND target_users IS NULL AND target_roles IS NULL
    ORDER BY seq LIMIT 1),
  (SELECT min(t.seq) FROM (
     SELECT seq FROM outbox.events
     WHERE seq IS NOT NULL AND target_users IS NOT NULL AND target_users && $2::text[]
     OFFSET 0) t
   WHERE t.seq > $1),
  (SELECT min(t.seq) FROM (
     SELECT seq FROM outbox.events
     WHERE seq IS NOT NULL AND target_roles IS NOT NULL AND target_roles && $3::text[]
     OFFSET 0) t
   WHERE t.seq > $1))`
