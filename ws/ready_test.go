package ws

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grupogad/outboxd/relay"
)

// While events flow, the readiness check never finds the dispatch
// position ahead of the database head: it reads the position first. (It
// read it after its query, and failed on every probe that the hub
// overtook: 46 of 20,963 at 500 events/s.)
func TestReadinessUnderLoadHasNoFalseFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	r := &relay.Readiness{Querier: e.db.Pool, Sequencer: e.seq, Tailer: e.tail, Dispatched: e.hub.Head, Epoch: e.hub.Epoch, StallAfter: 30 * time.Second}
	waitFor(t, 10*time.Second, "the tailer at its starting position", e.tail.Ready)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	go func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ctx.Err() == nil; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			_, _ = e.db.Pool.Exec(ctx, `SELECT outbox.emit('task_event', '{}')`)
		}
	}()
	checks, failed := 0, 0
	var last error
	for ctx.Err() == nil {
		if err := r.Check(ctx); err != nil && ctx.Err() == nil {
			failed++
			last = err
		}
		checks++
	}
	if failed > 0 {
		t.Fatalf("%d of %d checks failed under load; last: %v", failed, checks, last)
	}
	if e.hub.Head() < 100 {
		t.Fatalf("only %d events flowed: no load", e.hub.Head())
	}
}

// /readyz's public body says ok or unavailable and nothing more; the
// detailed one (the admin address's) names the checks; one check serves
// every probe within readyTTL.
func TestReadyzBodyAndCache(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	fail := atomic.Bool{}
	e := newEnv(t, envOpts{cfg: Config{Ready: func(context.Context) error {
		calls.Add(1)
		if fail.Load() {
			return errTest
		}
		return nil
	}}})
	get := func(h http.Handler) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "/readyz", nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		return rec.Code, body
	}
	status, body := get(e.hub.ReadyHandler(false))
	if status != http.StatusOK || len(body) != 1 || body["status"] != "ok" {
		t.Fatalf("public: %d %v", status, body)
	}
	for range 50 {
		get(e.hub.ReadyHandler(false))
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d checks for 51 probes within a second, want 1", n)
	}
	fail.Store(true)
	e.hub.ready.mu.Lock()
	e.hub.ready.at = time.Time{} // as if readyTTL had passed
	e.hub.ready.mu.Unlock()
	status, body = get(e.hub.ReadyHandler(true))
	checks, _ := body["checks"].(map[string]any)
	if status != http.StatusServiceUnavailable || body["status"] != "unavailable" || !strings.Contains(checks["relay"].(string), errTest.Error()) {
		t.Fatalf("detailed: %d %v", status, body)
	}
	if status, body = get(e.hub.ReadyHandler(false)); status != http.StatusServiceUnavailable || len(body) != 1 {
		t.Fatalf("public while failing: %d %v", status, body)
	}
}

var errTest = errTestType("relay test failure")

type errTestType string

func (e errTestType) Error() string { return string(e) }
