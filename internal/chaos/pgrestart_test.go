//go:build pgrestart

package chaos

import (
	"net/http"
	"os"
	"os/exec"
	"sort"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
)

// restartPostgres restarts the local Debian cluster, as an operator would.
func restartPostgres(t *testing.T) time.Duration {
	t.Helper()
	entries, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(entries) == 0 {
		t.Fatalf("this test restarts the local Debian PostgreSQL cluster; none found in /etc/postgresql: %v", err)
	}
	var versions []string
	for _, e := range entries {
		versions = append(versions, e.Name())
	}
	sort.Strings(versions)
	start := time.Now()
	out, err := exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", versions[len(versions)-1], "main", "restart").CombinedOutput()
	if err != nil {
		t.Fatalf("pg_ctlcluster restart: %v\n%s", err, out)
	}
	return time.Since(start)
}

// Scenario 2: PostgreSQL restarted mid-stream; every replica recovers by
// itself and nothing is lost. Not parallel, and run on its own (make test
// does): the restart cuts every connection on the server.
func TestPostgresRestart(t *testing.T) {
	db := dbtest.New(t)
	n := pick(3000, 20000)
	addrs, f1, f2 := twoReplicas(t, db)
	prod := produce(t, db.URL, n, 10, 5*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	took := restartPostgres(t)
	t.Logf("PostgreSQL restarted in %s", took.Round(time.Millisecond))
	prod.wait(t)
	f1.WaitFor(int64(n), 60*time.Second)
	f2.WaitFor(int64(n), 60*time.Second)
	f1.CheckExactly(int64(n))
	f2.CheckExactly(int64(n))
	// Each replica is ready again.
	for _, a := range addrs {
		deadline := time.Now().Add(10 * time.Second)
		for !ready(a) {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s not ready after the restart", a)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	assertGapFree(t, db, int64(n))
}

func ready(addr string) bool {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
