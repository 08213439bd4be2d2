// Package outbox is the producer side of outboxd: applications call Emit inside
// their own database transaction, and outboxd relays the row to WebSocket
// clients after the transaction commits.
//
// It depends on pgx and the standard library only, and accepts anything with
// Exec and QueryRow: a pgx.Tx, a *pgx.Conn or a *pgxpool.Pool.
//
// # The producer rule
//
// Emit the event as the LAST statement of the transaction, after the model
// writes it describes:
//
//	tx, _ := pool.Begin(ctx)
//	tx.Exec(ctx, `UPDATE tasks SET status = 'done' WHERE id = $1`, id)
//	outbox.Emit(ctx, tx, outbox.Event{Topic: "task_event", Data: change})
//	tx.Commit(ctx)
//
// Transactions that touch the same rows then take their outbox ids in lock
// order, so delivery follows causal order. An event emitted earlier in the
// transaction is still delivered, and still only if the transaction commits,
// but may be ordered before a conflicting transaction that committed first.
//
// # Guarantees
//
//   - Atomicity: the event exists if and only if the transaction commits. A
//     rolled-back transaction never produces a message.
//   - Order: outboxd gives every committed event a gap-free sequence number
//     (seq) in the order the rows became visible, and delivers in seq order.
//   - Durability: an event is kept until it is relayed, and then for the
//     retention window, so clients can resume with since=<seq>.
//   - Validation: a bad event is refused by Emit before any SQL is sent
//     (ErrInvalidEvent), and by CHECK constraints at INSERT for producers that
//     write SQL directly, so the relay never meets a poison row.
//
// # Targets
//
// Users and Roles are a union: a client receives the event if its JWT "sub"
// is in Users or one of its roles is in Roles. Both empty means everyone.
//
// # Tracing
//
// If Event.Traceparent is empty, Emit asks the function installed with
// SetTraceparentFunc for the W3C traceparent of the context's span (outboxd's
// observability package provides one for OpenTelemetry). The relay links its
// consumer span to it.
package outbox
