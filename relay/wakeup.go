package relay

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PendingChannel is notified by the optional producer trigger (one NOTIFY
// per INSERT statement into outbox.events, empty payload) so that an idle
// sequencer starts a batch at once instead of at its next poll.
const PendingChannel = "outbox_pending"

// Wake-up modes of the sequencer (RELAY_WAKEUP).
const (
	// WakeupPoll: the sequencer polls the pending index (2 ms while events
	// flow, backing off to RELAY_POLL_INTERVAL when idle); producers pay
	// nothing. The default.
	WakeupPoll = "poll"
	// WakeupNotify: a statement-level trigger on outbox.events notifies
	// PendingChannel; an idle sequencer wakes on it. For low-rate apps: the
	// first event after a quiet spell is sequenced at once, but every
	// producer transaction takes PostgreSQL's notification queue lock at
	// commit (BENCHMARKS.md).
	WakeupNotify = "notify"
	// WakeupIdle: the trigger notifies only while the sequencer sleeps
	// idle, and then once for all the statements of that moment (migration
	// 00009: an advisory lock the sequencer holds while it is busy). While
	// events flow a producer's statement pays a failed lock try; the
	// sequencer polls as in poll mode and, once idle, is woken at once.
	// While no sequencer runs, nobody holds the key: every producer
	// transaction then notifies, as in notify mode.
	WakeupIdle = "idle"
)

// The trigger each mode wants (poll: none) and the function it calls.
var wakeupTriggers = map[string]struct{ name, function string }{
	WakeupNotify: {"events_notify_pending", "outbox.notify_pending()"},
	WakeupIdle:   {"events_notify_pending_if_idle", "outbox.notify_pending_if_idle()"},
}

// idleWakeKey is the advisory lock (two-integer form) the sequencer holds
// while busy in idle mode; outbox.notify_pending_if_idle tries it.
const idleWakeKey = "1869968482, 2003919717"

// SetWakeup creates the producer trigger mode wants and drops the other,
// only if they are not already so: the DDL locks outbox.events for a
// moment. Every replica should be configured alike; the last to start
// wins.
func SetWakeup(ctx context.Context, pool *pgxpool.Pool, mode string) (changed bool, err error) {
	if _, ok := wakeupTriggers[mode]; !ok && mode != WakeupPoll {
		return false, fmt.Errorf("relay: wake-up mode %q; want %q, %q or %q", mode, WakeupPoll, WakeupIdle, WakeupNotify)
	}
	ddl, err := wakeupDDL(ctx, pool, mode)
	if err != nil || len(ddl) == 0 {
		return false, err
	}
	// The DDL takes a lock that queues producers' INSERTs behind it: give
	// up after lock_timeout rather than stall the app behind a long
	// transaction on the table.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
			return err
		}
		for _, stmt := range ddl {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			return false, fmt.Errorf("relay: RELAY_WAKEUP=%s needs the TRIGGER privilege on outbox.events (docs/least-privilege.sql): %w", mode, err)
		}
		// Two replicas starting together may race: losing is fine if the
		// state is the wanted one.
		if rest, rerr := wakeupDDL(ctx, pool, mode); rerr == nil && len(rest) == 0 {
			return false, nil
		}
		return false, fmt.Errorf("relay: set wake-up mode %s: %w", mode, err)
	}
	return true, nil
}

// wakeupDDL returns the statements that bring the triggers to mode's.
func wakeupDDL(ctx context.Context, pool *pgxpool.Pool, mode string) ([]string, error) {
	var ddl []string
	for m, tr := range wakeupTriggers {
		exists, err := wakeupTriggerExists(ctx, pool, tr.name)
		if err != nil {
			return nil, err
		}
		switch want := m == mode; {
		case exists && !want:
			ddl = append([]string{`DROP TRIGGER ` + tr.name + ` ON outbox.events`}, ddl...) // drops first
		case want && !exists:
			ddl = append(ddl, `CREATE TRIGGER `+tr.name+` AFTER INSERT ON outbox.events FOR EACH STATEMENT EXECUTE FUNCTION `+tr.function)
		}
	}
	return ddl, nil
}

func wakeupTriggerExists(ctx context.Context, pool *pgxpool.Pool, name string) (bool, error) {
	var exists bool
	err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'outbox.events'::regclass AND tgname = $1)`,
		name).Scan(&exists)
	if err != nil {
		return false, fmt.Errorf("relay: read wake-up trigger: %w", err)
	}
	return exists, nil
}
