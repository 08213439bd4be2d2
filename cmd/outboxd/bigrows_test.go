package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
)

// procKiB reads one field (VmRSS, VmHWM) of /proc/PID/status.
func procKiB(t *testing.T, p *proctest.Process, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb)
			return kb
		}
	}
	t.Fatalf("no %s", field)
	return 0
}

// Memory is bounded in bytes, not rows: one transaction commits rows of
// ~256 KiB; two clients read them all, in order, while a third never reads.
// The peak RSS growth of outboxd is sampled (VmHWM, reset before the
// commit) and must stay under 64 MiB.
func TestBigRowsMemoryIsBounded(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name       string
		rows       int
		repeatsMD5 int // payload ≈ 32 × repeatsMD5 bytes
	}{
		{"400 × 250 KB (100 MB)", 400, 7800},
		{"1,000 × 256 KiB", 1000, 8150},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := dbtest.New(t)
			p := startOutboxd(t, db, append([]string{"LOG_LEVEL=info"}, strings.Fields(os.Getenv("BIGROWS_ENV"))...)...)
			t.Cleanup(func() {
				// A reader cut here says only 1006: outboxd's log says why.
				if t.Failed() {
					t.Logf("outboxd log:\n%s", p.Stderr)
				}
			})
			var wg sync.WaitGroup
			got := make([][]int64, 2)
			for i := range got {
				conn, tok := dialAs(t, p, fmt.Sprintf("reader%d", i))
				wg.Go(func() {
					// A reader the server cuts for being slow (a loaded CI
					// host) resumes with since, as a client would: the
					// order check below then spans the resume.
					resumes := 0
					for int64(len(got[i])) < int64(c.rows) {
						_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
						var f struct {
							Seq int64 `json:"seq"`
						}
						if err := conn.ReadJSON(&f); err != nil {
							// A cut is a close frame, or — when the server
							// closes with our unread bytes in its socket —
							// a reset or EOF; a read that times out is a
							// stall, not a cut.
							var ne net.Error
							if errors.As(err, &ne) && ne.Timeout() || resumes == 3 {
								t.Errorf("reader %d after %d events (%d resumes): %v", i, len(got[i]), resumes, err)
								return
							}
							resumes++
							t.Logf("reader %d cut after %d events (%v): resuming", i, len(got[i]), err)
							_ = conn.Close()
							var derr error
							conn, _, derr = websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/ws/connect?token=%s&since=%d",
								p.Addr, url.QueryEscape(tok), len(got[i])), nil)
							if derr != nil {
								t.Errorf("reader %d resume: %v", i, derr)
								return
							}
							defer conn.Close()
							continue
						}
						if f.Seq > 0 {
							got[i] = append(got[i], f.Seq)
						}
					}
				})
			}
			stuck, _ := dialAs(t, p, "stuck") // reads nothing until the readers are done
			base := procKiB(t, p, "VmRSS")
			if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.Cmd.Process.Pid), []byte("5"), 0); err != nil {
				t.Fatalf("reset the peak RSS: %v", err)
			}
			db.Exec(t, fmt.Sprintf(`SELECT outbox.emit('big', jsonb_build_object('i', g, 'pad', repeat(md5(g::text), %d)))
				FROM generate_series(1, %d) g`, c.repeatsMD5, c.rows))
			wg.Wait()
			for i, seqs := range got {
				for j, s := range seqs {
					if s != int64(j+1) {
						t.Fatalf("reader %d: event %d has seq %d", i, j, s)
					}
				}
			}
			peak := procKiB(t, p, "VmHWM")
			// The client that never read either catches up now, in order,
			// or was cut (4008 for falling behind, or its write timed out);
			// it would then resume with since.
			var last int64
			for last < int64(c.rows) {
				_ = stuck.SetReadDeadline(time.Now().Add(60 * time.Second))
				var f struct {
					Type string `json:"type"`
					Seq  int64  `json:"seq"`
				}
				if err := stuck.ReadJSON(&f); err != nil {
					if ce, ok := err.(*websocket.CloseError); ok && ce.Code != 4008 && ce.Code != websocket.CloseAbnormalClosure {
						t.Fatalf("the stuck client was closed with %d", ce.Code)
					}
					t.Logf("the stuck client was cut after seq %d: %v", last, err)
					break
				}
				if f.Seq == 0 {
					continue
				}
				if f.Seq != last+1 {
					t.Fatalf("the stuck client got seq %d after %d", f.Seq, last)
				}
				last = f.Seq
			}
			growth := float64(peak-base) / 1024
			t.Logf("%s: RSS %d MiB before, peak %d MiB: growth %.1f MiB", c.name, base/1024, peak/1024, growth)
			if growth >= 64 {
				t.Errorf("peak RSS grew by %.1f MiB, want < 64", growth)
			}
		})
	}
}
