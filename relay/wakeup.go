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
)

const wakeupTrigger = "events_notify_pending"

// SetWakeup creates (notify) or drops (poll) the producer trigger, only if
// it is not already so: the DDL locks outbox.events for a moment. Every
// replica should be configured alike; the last to start wins.
func SetWakeup(ctx context.Context, pool *pgxpool.Pool, mode string) (changed bool, err error) {
	if mode != WakeupPoll && mode != WakeupNotify {
		return false, fmt.Errorf("relay: wake-up mode %q; want %q or %q", mode, WakeupPoll, WakeupNotify)
	}
	want := mode == WakeupNotify
	exists, err := wakeupTriggerExists(ctx, pool)
	if err != nil || exists == want {
		return false, err
	}
	ddl := `DROP TRIGGER IF EXISTS ` + wakeupTrigger + ` ON outbox.events`
	if want {
		ddl = `CREATE TRIGGER ` + wakeupTrigger + ` AFTER INSERT ON outbox.events FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_pending()`
	}
	// The DDL takes a lock that queues producers' INSERTs behind it: give
	// up after lock_timeout rather than stall the app behind a long
	// transaction on the table.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, ddl)
		return err
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			return false, fmt.Errorf("relay: RELAY_WAKEUP=%s needs the TRIGGER privilege on outbox.events (docs/least-privilege.sql): %w", mode, err)
		}
		// Two replicas starting together may race: losing is fine if the
		// state is the wanted one.
		if exists, rerr := wakeupTriggerExists(ctx, pool); rerr == nil && exists == want {
			return false, nil
		}
		return false, fmt.Errorf("relay: set wake-up mode %s: %w", mode, err)
	}
	return true, nil
}

func wakeupTriggerExists(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	var exists bool
	err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'outbox.events'::regclass AND tgname = $1)`,
		wakeupTrigger).Scan(&exists)
	if err != nil {
		return false, fmt.Errorf("relay: read wake-up trigger: %w", err)
	}
	return exists, nil
}
