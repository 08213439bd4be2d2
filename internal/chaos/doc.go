// Package chaos holds outboxd's failure tests: real outboxd processes on one
// real PostgreSQL, killed, partitioned and restarted while events stream,
// with clients that resume across replicas. The invariant checked every
// time: each client receives every event it is entitled to, once after
// dedupe by seq, in seq order, and the table's seq is gap-free.
//
// `go test ./internal/chaos` runs the short forms (CI). OUTBOXD_CHAOS_LONG=1
// (make chaos) runs the long forms: more events, more kills, a 1,000,000-row
// burst. TestPostgresRestart restarts the local PostgreSQL cluster, so it is
// behind the pgrestart build tag and `make test` runs it on its own, after
// every other package has finished.
package chaos
