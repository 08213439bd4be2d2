package relay

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/grupogad/outboxd/internal/dbtest"
)

// fillTargeted writes n sequenced rows for user u2, then sets the targets
// of the given seqs: u1's, a role's, or a broadcast.
func fillTargeted(tb testing.TB, db *dbtest.DB, n int) {
	tb.Helper()
	db.Exec(tb, `SET session_replication_role = replica;
INSERT INTO outbox.events (topic, payload, target_users, seq, delivered_at)
SELECT 't', '{}', ARRAY['u2'], g, now() FROM generate_series(1, `+strconv.Itoa(n)+`) g;
UPDATE outbox.relay_state SET last_seq = `+strconv.Itoa(n)+`;
RESET session_replication_role;
ANALYZE outbox.events`)
}

// replayAll reads what u1 (role LEVEL_1) may see after since, page by
// page as the hub does, and returns the seqs and the number of reads.
func replayAll(tb testing.TB, s *Store, since int64, skip bool) (seqs []int64, reads int) {
	tb.Helper()
	cursor := since
	for {
		reads++
		p, evs, err := s.ReadEntitled(context.Background(), ReplayQuery{After: cursor, Span: 256, MaxBytes: 1 << 20,
			User: "u1", Roles: []string{"LEVEL_1"}, SkipEmpty: skip}, nil)
		if err != nil {
			tb.Fatal(err)
		}
		for _, e := range evs {
			seqs = append(seqs, e.Seq)
		}
		cursor = p.ScannedTo
		if cursor >= p.Head {
			return seqs, reads
		}
	}
}

// A client entitled to little replays what is its own, in order, in a few
// reads instead of one per 256 seqs.
func TestReplaySkipsWhatIsNotTheClients(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	fillTargeted(t, db, 20_000)
	db.Exec(t, `UPDATE outbox.events SET target_users = ARRAY['u1'] WHERE seq IN (50, 12000);
UPDATE outbox.events SET target_users = NULL WHERE seq = 15000;
UPDATE outbox.events SET target_users = '{}', target_roles = ARRAY['LEVEL_1'] WHERE seq = 19990;
UPDATE outbox.events SET target_users = '{}' WHERE seq = 19995`)
	s := NewStore(db.Pool)
	want := []int64{50, 12000, 15000, 19990}
	withSkip, skipReads := replayAll(t, s, 0, true)
	withoutSkip, rangeReads := replayAll(t, s, 0, false)
	if !slices.Equal(withSkip, want) || !slices.Equal(withoutSkip, want) {
		t.Fatalf("replayed %v with skips, %v without; want %v", withSkip, withoutSkip, want)
	}
	if skipReads > 10 || rangeReads < 70 {
		t.Fatalf("%d reads with skips, %d without", skipReads, rangeReads)
	}
}

// The skip-ahead is an index lookup: each of its three parts uses its
// partial index (a predicate that no longer matches the index's, after a
// migration, would silently read the whole table instead).
func TestNextEntitledUsesTheIndexes(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	fillTargeted(t, db, 20_000)
	db.Exec(t, `UPDATE outbox.events SET target_users = NULL, target_roles = ARRAY['LEVEL_2'] WHERE seq % 100 = 0;
UPDATE outbox.events SET target_users = NULL WHERE seq % 100 = 1;
ANALYZE outbox.events`)
	rows, err := db.Pool.Query(context.Background(), `EXPLAIN `+nextEntitledSQL, int64(10), []string{"u1"}, []string{"LEVEL_1"})
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	text := strings.Join(plan, "\n")
	for _, idx := range []string{"events_broadcast_seq_idx", "events_target_users_idx", "events_target_roles_idx"} {
		if !strings.Contains(text, idx) {
			t.Errorf("the plan does not use %s:\n%s", idx, text)
		}
	}
	if strings.Contains(text, "Seq Scan") {
		t.Errorf("the plan reads the table:\n%s", text)
	}
}

// The case: 100,000 rows for another user; a client resumes
// 99,000 behind. One resume's database work, by page ranges alone and with
// the entitlement lookup.
func benchSparseReplay(b *testing.B, skip bool) {
	db := dbtest.New(b)
	fillTargeted(b, db, 100_000)
	s := NewStore(db.Pool)
	b.ResetTimer()
	reads := 0
	for range b.N {
		_, r := replayAll(b, s, 1_000, skip)
		reads += r
	}
	b.ReportMetric(float64(reads)/float64(b.N), "reads/op")
}

func BenchmarkReplaySparse_100k_Ranges(b *testing.B)    { benchSparseReplay(b, false) }
func BenchmarkReplaySparse_100k_SkipEmpty(b *testing.B) { benchSparseReplay(b, true) }
