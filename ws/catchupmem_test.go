package ws

import (
	"strings"
	"testing"
	"time"

	"github.com/grupogad/outboxd/outbox"
)

// Sessions that resume from the start and then barely read (here: never,
// their sockets full) do not hold the catch-up memory while they wait for
// their sockets: an honest client's resume from the start completes
// within a few seconds beside them. (With each page's reservation held
// until its last frame was queued, 20 such sessions held all of it, and
// the honest resume waited for their write timeout.)
func TestSlowReadersDoNotStarveAResume(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{
		CatchUpMemory: 8 << 20, WriteTimeout: time.Minute, LagWindow: time.Minute,
	}})
	pad := strings.Repeat("x", 4000)
	var evs []outbox.Event
	for i := range 1500 { // ~6 MB: more than the slow readers' sockets take
		evs = append(evs, outbox.Event{Topic: "task_event", Data: map[string]any{"n": i, "pad": pad}, Broadcast: true})
	}
	for i := 0; i < len(evs); i += 250 {
		e.emit(evs[i : i+250]...)
	}
	waitFor(t, 30*time.Second, "head 1500", func() bool { return e.hub.Head() == 1500 })
	e.hub.recent.reset() // from the table, not from memory
	// Each user may hold a quarter of the memory: four slow users, five
	// sessions each, could take all of it.
	for u := range 4 {
		for range 5 {
			tok := e.token("slow"+string(rune('a'+u)), "LEVEL_1")
			if _, _, err := e.dial("token="+tok+"&since=0", dialOpts{noReader: true, rcvBuf: 4096}); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 10*time.Second, "20 slow sessions", func() bool { return e.connections() == 20 })
	// Let them fill their queues and sockets (four are enough to hold all
	// of the memory when a page keeps its reservation while it waits).
	waitFor(t, 10*time.Second, "the slow sessions' queues to fill", func() bool {
		e.hub.mu.RLock()
		defer e.hub.mu.RUnlock()
		full := 0
		for c := range e.hub.routes.all {
			if c.inflightBytes.Load() > 0 {
				full++
			}
		}
		return full >= 4
	})
	start := time.Now()
	honest := e.connect("since=0", "honest", "LEVEL_1")
	fs := honest.events(1500, 30*time.Second)
	took := time.Since(start)
	if fs[0].Seq != 1 || fs[1499].Seq != 1500 {
		t.Fatalf("honest resume: seqs %d..%d", fs[0].Seq, fs[1499].Seq)
	}
	// The bound stated in docs/security.md: an honest resume of this size
	// is not held behind slow readers (here it takes well under a second;
	// held behind them, it waited for their write timeout, a minute).
	if took > 10*time.Second {
		t.Fatalf("honest resume of 1,500 events took %s beside 20 slow readers", took)
	}
}
