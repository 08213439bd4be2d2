package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ReadHistory reads relay_state's head and epoch.
func ReadHistory(ctx context.Context, q Querier) (History, error) {
	var h History
	err := q.QueryRow(ctx, `SELECT last_seq, epoch FROM outbox.relay_state`).Scan(&h.Head, &h.Epoch)
	if err != nil {
		return h, fmt.Errorf("relay: read history: %w", err)
	}
	return h, nil
}

// healthSQL reads, with index lookups only: the head and epoch, the age of
// the oldest pending row (the pending index, lowest id) and how long ago the
// head row was sequenced (the seq index). NULL ages mean no such row.
const healthSQL = `SELECT rs.last_seq, rs.epoch,
  (SELECT extract(epoch FROM clock_timestamp() - e.created_at)::float8
     FROM outbox.events e WHERE e.seq IS NULL ORDER BY e.id LIMIT 1),
  (SELECT extract(epoch FROM clock_timestamp() - e.delivered_at)::float8
     FROM outbox.events e WHERE e.seq = rs.last_seq)
FROM outbox.relay_state rs`

// Readiness decides whether this replica can serve: its relay runs and
// makes progress, and its dispatch position belongs to the database's
// history. It is what /readyz reports; it holds no state of its own, so
// it turns green again by itself once the cause is gone.
type Readiness struct {
	Querier   Querier
	Sequencer *Sequencer
	Tailer    *Tailer
	// Dispatched is the newest seq the hub has announced to clients, and
	// Epoch the history it belongs to.
	Dispatched func() int64
	Epoch      func() string
	// StallAfter is how long pending rows may wait with no batch committed
	// (by any replica), the sequencer may keep failing, or the tailer may go
	// without a successful read, before the replica is reported not ready.
	StallAfter time.Duration
}

// Check returns nil when ready, else an error naming every problem.
func (r *Readiness) Check(ctx context.Context) error {
	var problems []string
	if r.Sequencer != nil {
		if !r.Sequencer.Running() {
			problems = append(problems, "sequencer not running")
		} else if since, err := r.Sequencer.FailingSince(); err != nil && time.Since(since) > r.StallAfter {
			problems = append(problems, fmt.Sprintf("sequencer failing for %s: %v", time.Since(since).Round(time.Second), err))
		}
	}
	if r.Tailer != nil {
		if !r.Tailer.Ready() {
			problems = append(problems, "tailer not running")
		} else if last := r.Tailer.LastRead(); time.Since(last) > r.StallAfter {
			problems = append(problems, fmt.Sprintf("tailer has not read the table for %s", time.Since(last).Round(time.Second)))
		}
	}
	// The dispatch position is read before the head: the hub only ever
	// dispatches what was sequenced, so read in this order it is never
	// ahead unless the database went back. (Read after, it often was: the
	// events sequenced during the query had reached the hub.)
	var dispatched int64
	if r.Dispatched != nil {
		dispatched = r.Dispatched()
	}
	var head int64
	var epoch string
	var pendingAge, sinceBatch *float64
	if err := r.Querier.QueryRow(ctx, healthSQL).Scan(&head, &epoch, &pendingAge, &sinceBatch); err != nil {
		problems = append(problems, "database: "+err.Error())
		return errors.New(strings.Join(problems, "; "))
	}
	if r.Epoch != nil && r.Epoch() != epoch {
		problems = append(problems, "the database holds another outbox history (restored or recreated); rebasing")
	}
	if r.Dispatched != nil && dispatched > head {
		problems = append(problems, fmt.Sprintf("dispatch position %d is ahead of the database head %d", dispatched, head))
	}
	stall := r.StallAfter.Seconds()
	if pendingAge != nil && *pendingAge > stall && (sinceBatch == nil || *sinceBatch > stall) {
		problems = append(problems, fmt.Sprintf("sequencing stalled: the oldest pending row is %.0fs old and no batch committed for %s",
			*pendingAge, describeAge(sinceBatch)))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// Degraded says how the relay works below its configuration while it is
// still ready: the sequencer retrying smaller batches after a timeout.
func (r *Readiness) Degraded() string {
	if r.Sequencer == nil {
		return ""
	}
	if n := r.Sequencer.BatchLimit(); n < r.Sequencer.cfg.BatchSize {
		return fmt.Sprintf("sequencer batches at most %d rows (of %d) after a batch timed out; growing back", n, r.Sequencer.cfg.BatchSize)
	}
	return ""
}

func describeAge(s *float64) string {
	if s == nil {
		return "as long as rows are retained"
	}
	return fmt.Sprintf("%.0fs", *s)
}
