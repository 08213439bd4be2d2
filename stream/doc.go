// Package stream holds the words the relay and the hub speak to each other:
// a sequenced event, where a history stands (its head, the oldest retained
// seq, its epoch), a replay read and what it covered, the relay's status,
// and the interfaces by which the relay hands events over (Dispatcher,
// Rebaser) and asks about the fan-out's backlog (Fanout).
//
// It imports the standard library only: the package that serves browsers
// (ws) depends on it and not on the relay, so it has no database driver in
// its graph, and a second store or transport can speak the same words.
//
// # Ordering
//
// Seqs are gap-free and follow commit order (the relay's sequencer numbers
// rows by visibility). A Dispatcher receives events in seq order, possibly
// again after a reconnect: it dedupes by Seq. A seq means something only
// within its history (Epoch): a restored or recreated database is another
// one, announced through Rebaser.
package stream
