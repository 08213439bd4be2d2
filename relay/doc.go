// Package relay moves events out of the outbox table: a Sequencer numbers
// committed rows, a Tailer reads them in that order and hands them to a
// Dispatcher (the WebSocket hub), and Retention deletes old rows.
//
// # Ordering
//
// Ids are taken when a producer's INSERT runs, but transactions commit in
// another order, so id order is not a safe resume cursor: a reader that has
// seen id 10 may later find id 9 commit. The Sequencer therefore assigns seq,
// a second, gap-free number, to rows it can SEE, in id order, batch by batch.
// A row that commits late is simply sequenced in a later batch. seq thus
// follows visibility order and a client that has seen seq N has seen every
// seq ≤ N it is entitled to.
//
// # Mutual exclusion
//
// Any replica may sequence. A batch runs in one READ COMMITTED transaction:
//
//  1. If a row is pending, SELECT last_seq FROM outbox.relay_state FOR
//     UPDATE SKIP LOCKED; no row means another replica holds the lock: back
//     off. With nothing pending it locks nothing, so an empty batch has no
//     transaction id and commits without writing WAL (no fsync).
//  2. Number up to BatchSize pending rows from last_seq+1, advance last_seq,
//     and pg_notify('outbox_seq', last_seq) — one NOTIFY per batch.
//
// The two steps are separate statements on purpose: the second takes a new
// snapshot after the lock is granted, so it sees the previous batch's commit.
// Folded into one statement, its snapshot could predate that commit and
// number rows twice. There is no leader election: a sequencer that dies
// mid-batch has its transaction rolled back, and its lock released, by
// PostgreSQL.
//
// BEGIN, both statements and COMMIT go in one pipeline (one round trip), so
// step 2 runs whether or not step 1 got the row: it guards itself, numbering
// nothing unless relay_state's xmax is this transaction's xid (a row lock
// writes the locker's xid there; a transaction that skipped the row has no
// xid). A committed batch is then handed to the local tailer (Handoff).
//
// # Wake-ups
//
// Producers pay nothing extra: no trigger, no NOTIFY per transaction (a
// NOTIFY serialises commits on a global lock). The sequencer polls the small
// partial index of pending rows adaptively: at once while batches come back
// full, after a pause that follows the batch's wall time when a batch was
// partial (and, with a Fanout, once the local fan-out's backlog is small
// or has stopped shrinking: awaitFanout), and with a doubling sleep while
// there is nothing to do — up to LingerPoll, or an eighth of the usual gap
// between rows if that is shorter, for a second after the last rows, each
// sleep ending in a batch (as cheap as a probe when it finds nothing), then
// up to PollInterval, each ending in a probe of the pending rows' index.
//
// Two opt-in triggers wake an idle sequencer at once (RELAY_WAKEUP). In
// notify mode every INSERT statement notifies outbox_pending. In idle
// mode (migration 00009) the sequencer holds a session-level advisory
// lock on a connection it keeps, from the batch that finds rows to the
// next that finds none; the trigger tries that lock for its transaction
// and notifies only when it gets it. While events flow a producer pays a
// failed lock try; once the sequencer lets go of the lock (and then probes
// once more, so that a row committed before is not left to the trigger),
// the first statement notifies and holds the lock to its commit, so the
// producers of that moment notify once between them. A row whose INSERT
// ran before the lock was let go and whose COMMIT came after that probe is
// in neither: the next poll (LingerPoll while lingering) finds it.
//
// Tailers (one per replica) LISTEN on outbox_seq on a dedicated connection
// and poll every FallbackPoll as well, so a lost notification or a pooler
// that cannot LISTEN costs latency, never events.
//
// # Failure
//
// Every query has a timeout. After an error a service waits with capped
// exponential backoff (100 ms doubling to 1 s) and tries again with a fresh
// connection from the pool, so it recovers by itself from
// pg_terminate_backend, a PostgreSQL restart or a network cut. The Tailer's
// cursor is in memory: it re-reads from its last dispatched seq, so delivery
// into the Dispatcher is at-least-once and in order; the hub dedupes by seq.
package relay
