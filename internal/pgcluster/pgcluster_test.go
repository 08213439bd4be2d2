package pgcluster

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A primary and a standby of it: what commits on the primary is read on
// the standby, which refuses writes; stopped and started, it streams again.
func TestPrimaryAndStandby(t *testing.T) {
	p := StartPrimary(t)
	s := p.StartStandby()
	p.Exec("", `CREATE TABLE t (n int)`)
	p.Exec("", `INSERT INTO t VALUES (1), (2)`)
	s.WaitReplayed(p, time.Minute)
	count := func() int {
		t.Helper()
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, s.URL(""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO t VALUES (3)`); err == nil {
			t.Fatal("the standby accepted a write")
		}
		return n
	}
	if n := count(); n != 2 {
		t.Fatalf("standby has %d rows, want 2", n)
	}
	s.Stop()
	p.Exec("", `INSERT INTO t VALUES (3)`)
	s.Start()
	s.WaitReplayed(p, time.Minute)
	if n := count(); n != 3 {
		t.Fatalf("restarted standby has %d rows, want 3", n)
	}
}
