package relay

import (
	"context"
	"time"
)

// OldestSeqSQL is a scalar subquery for the oldest retained seq (NULL when
// none). ORDER BY … LIMIT 1 walks the seq index from its low end and stops
// at the first entry; min(seq) may instead be planned as an aggregate over
// the whole index (statistics taken while rows were pending say every seq
// is NULL), which costs 180 ms on a million rows.
const OldestSeqSQL = `(SELECT seq FROM outbox.events WHERE seq IS NOT NULL ORDER BY seq LIMIT 1)`

// ReadStatus reads the relay's position from the database.
func ReadStatus(ctx context.Context, q Querier) (Status, error) {
	var s Status
	err := q.QueryRow(ctx, `SELECT
	  (SELECT last_seq FROM outbox.relay_state),
	  coalesce(`+OldestSeqSQL+`, 0),
	  (SELECT count(*) FROM outbox.events WHERE seq IS NULL),
	  coalesce((SELECT extract(epoch FROM clock_timestamp() - min(created_at))::float8
	            FROM outbox.events WHERE seq IS NULL), 0),
	  (SELECT epoch FROM outbox.relay_state)`).Scan(&s.HeadSeq, &s.OldestSeq, &s.Pending, &s.Lag, &s.Epoch)
	return s, err
}

// statusTimeout bounds ReadStatus when called by the stats endpoint.
const statusTimeout = 2 * time.Second

// ReadStatusTimeout is ReadStatus with its own short timeout.
func ReadStatusTimeout(ctx context.Context, q Querier) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	return ReadStatus(ctx, q)
}
