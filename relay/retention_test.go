package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
)

// fillRetained writes n sequenced rows (seq 1..n) straight into the table,
// the first expired of them delivered two days ago, and a hole of missing
// seqs among the expired ones (rows deleted by hand).
func fillRetained(tb testing.TB, db *dbtest.DB, n, expired int) {
	tb.Helper()
	ctx := context.Background()
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Release()
	exec := func(sql string, args ...any) {
		tb.Helper()
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute) // millions of rows, on a busy machine
		defer cancel()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			tb.Fatalf("%s: %v", sql, err)
		}
	}
	// session_replication_role=replica skips the trigger that keeps seq
	// for the relay: this is a fixture, not a producer. In chunks, so that
	// no one statement runs for long.
	exec(`SET session_replication_role = replica`)
	defer exec(`RESET session_replication_role`)
	const chunk = 500_000
	for lo := 1; lo <= n; lo += chunk {
		exec(`INSERT INTO outbox.events (topic, payload, seq, delivered_at)
SELECT 't', '{}', g, CASE WHEN g <= $3 THEN now() - interval '2 days' ELSE now() END
FROM generate_series($1::bigint, $2::bigint) g`, lo, min(lo+chunk-1, n), expired)
	}
	exec(`UPDATE outbox.relay_state SET last_seq = $1`, n)
	exec(`DELETE FROM outbox.events WHERE seq BETWEEN 10 AND 20`)
	exec(`ANALYZE outbox.events`)
}

// Retention's statements cost one seq range each, whatever is retained:
// here 200,000 rows, of which the first 100 (with a hole) expired. The
// planner must use the seq index range (EXPLAIN), and the sweep deletes
// exactly the expired rows. BenchmarkRetentionSweep_5MRetained times it at
// 5,000,100 rows.
func TestRetentionCostIsBoundedByRange(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	fillRetained(t, db, 200_000, 100)
	var plan string
	rows, err := db.Pool.Query(ctx, `EXPLAIN `+deleteRangeSQL, int64(1), int64(10001), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan += line + "\n"
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if strings.Contains(plan, "Seq Scan") || strings.Count(plan, "Index Scan using events_seq_key") != 2 ||
		strings.Count(plan, "Index Cond: ((seq >= '1'::bigint) AND (seq < '10001'::bigint))") != 2 {
		t.Fatalf("retention's plan is not a seq range:\n%s", plan)
	}
	r := NewRetention(db.Pool, RetentionConfig{Window: time.Hour, BatchSize: 30})
	n, err := r.SweepOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 100-11 {
		t.Fatalf("deleted %d rows, want 89 (100 expired, 11 deleted by hand)", n)
	}
	if got := db.Int64(t, `SELECT min(seq) FROM outbox.events`); got != 101 {
		t.Fatalf("oldest seq %d, want 101", got)
	}
	if n, err := r.SweepOnce(ctx); err != nil || n != 0 {
		t.Fatalf("second sweep: %d %v", n, err)
	}
}

// BenchmarkRetentionSweep_5MRetained: one sweep over 5,000,100 retained
// rows of which 100 expired (the case: a week at 30 events/s is
// 18M rows; the old statement walked them all).
func BenchmarkRetentionSweep_5MRetained(b *testing.B) {
	db := dbtest.New(b)
	ctx := context.Background()
	fillRetained(b, db, 5_000_100, 100)
	r := NewRetention(db.Pool, RetentionConfig{Window: time.Hour})
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		if i > 0 { // expire 100 rows again
			db.Exec(b, `SET session_replication_role = replica;
INSERT INTO outbox.events (topic, payload, seq, delivered_at)
SELECT 't', '{}', g, now() - interval '2 days' FROM generate_series(1, 100) g;
RESET session_replication_role`)
		}
		b.StartTimer()
		n, err := r.SweepOnce(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if n != 89 && n != 100 {
			b.Fatalf("deleted %d", n)
		}
	}
}
