package ws

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/grupogad/outboxd/outbox"
)

// sseEvent is one Server-Sent Event (or a comment, with Comment set).
type sseEvent struct {
	Event, ID, Data, Comment string
}

// sseClient reads an SSE stream in the background.
type sseClient struct {
	t      *testing.T
	resp   *http.Response
	events chan sseEvent
	done   chan struct{}
}

func (e *env) sse(query string, header http.Header) (*sseClient, *http.Response) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/ws/sse?"+query, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, resp
	}
	c := &sseClient{t: e.t, resp: resp, events: make(chan sseEvent, 100000), done: make(chan struct{})}
	e.t.Cleanup(func() { resp.Body.Close() })
	go func() {
		defer close(c.done)
		br := bufio.NewReader(resp.Body)
		var ev sseEvent
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case line == "":
				if ev != (sseEvent{}) {
					c.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				c.events <- sseEvent{Comment: strings.TrimSpace(line[1:])}
			case strings.HasPrefix(line, "event: "):
				ev.Event = line[len("event: "):]
			case strings.HasPrefix(line, "id: "):
				ev.ID = line[len("id: "):]
			case strings.HasPrefix(line, "data: "):
				ev.Data = line[len("data: "):]
			}
		}
	}()
	return c, resp
}

func (c *sseClient) next(d time.Duration) sseEvent {
	c.t.Helper()
	select {
	case ev := <-c.events:
		return ev
	case <-time.After(d):
		c.t.Fatalf("no SSE event within %s", d)
	}
	return sseEvent{}
}

// eventsOf reads n events that carry a seq, skipping the rest.
func (c *sseClient) eventsOf(n int) []sseEvent {
	c.t.Helper()
	var out []sseEvent
	for len(out) < n {
		ev := c.next(10 * time.Second)
		if ev.Comment == "" && ev.Event != TypeWelcome && ev.ID != "" {
			out = append(out, ev)
		}
	}
	return out
}

func sseIDs(evs []sseEvent) string {
	var ids []string
	for _, e := range evs {
		ids = append(ids, e.Event+"#"+e.ID)
	}
	return strings.Join(ids, " ")
}

// The SSE transport: the WebSocket protocol's tests that apply to a
// one-way stream — routing and topics, welcome with the seq it starts
// after, every envelope an event with its seq as id and the same JSON as
// data, resume with Last-Event-ID (over the query's since), epoch resync,
// a disconnect as "event: close" 4003, counted in /ws/stats.
func TestSSEStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	tok := url.QueryEscape(e.token("op1", "LEVEL_1"))
	s, _ := e.sse("token="+tok+"&topics=task_event,system_event", nil)
	w := s.next(5 * time.Second)
	var welcome struct {
		Type string      `json:"type"`
		Data WelcomeData `json:"data"`
	}
	if w.Event != TypeWelcome || json.Unmarshal([]byte(w.Data), &welcome) != nil || w.ID != "0" || welcome.Data.UserID != "op1" {
		t.Fatalf("welcome %+v", w)
	}
	e.emit(ev("task_event", 1, nil, []string{"LEVEL_1"}), ev("efectivo_event", 2, nil, []string{"LEVEL_1"}),
		ev("task_event", 3, nil, []string{"LEVEL_2"}), ev("system_event", 4, nil, nil))
	got := s.eventsOf(2)
	if sseIDs(got) != "task_event#1 system_event#4" {
		t.Fatalf("routed: %s", sseIDs(got))
	}
	var env frame
	if json.Unmarshal([]byte(got[0].Data), &env) != nil || env.Seq != 1 || env.Type != "task_event" {
		t.Fatalf("data is not the envelope: %s", got[0].Data)
	}
	if n := int(e.stats()["stats"].(map[string]any)["total_connections"].(float64)); n != 1 {
		t.Fatalf("total_connections %d, want the SSE session", n)
	}

	// Resume: Last-Event-ID wins over since; the welcome's id is it.
	r, _ := e.sse("token="+tok+"&since=0", http.Header{"Last-Event-Id": {"2"}})
	if w := r.next(5 * time.Second); w.Event != TypeWelcome || w.ID != "2" {
		t.Fatalf("resumed welcome %+v", w)
	}
	if got := sseIDs(r.eventsOf(1)); got != "system_event#4" {
		t.Fatalf("resumed after 2 with LEVEL_1: %s", got)
	}
	// Another history: resync_required, live continues.
	x, _ := e.sse("token="+tok+"&since=1&epoch=other", nil)
	x.next(5 * time.Second)
	if rs := x.next(5 * time.Second); rs.Event != TypeResyncRequired {
		t.Fatalf("after a foreign epoch: %+v", rs)
	}

	// Disconnect: every earlier event, then event: close 4003.
	tx, err := e.db.Pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Disconnect(t.Context(), tx, []string{"op1"}, "role changed"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	for {
		ev := s.next(10 * time.Second)
		if ev.Event == "close" {
			if ev.Data != `{"code":4003,"reason":"role changed"}` {
				t.Fatalf("close %+v", ev)
			}
			break
		}
	}
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end after its close event")
	}
}

// Refused before the stream starts, as /ws/connect: a bad token 401, a bad
// since 400; the token also as Authorization: Bearer.
func TestSSERefusalsAndBearer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	if _, resp := e.sse("token=nope", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: %d", resp.StatusCode)
	}
	if _, resp := e.sse("token="+url.QueryEscape(e.token("u"))+"&since=-3", nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad since: %d", resp.StatusCode)
	}
	s, resp := e.sse("", http.Header{"Authorization": {"Bearer " + e.token("u", "R")}})
	if s == nil {
		t.Fatalf("bearer: %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	if w := s.next(5 * time.Second); w.Event != TypeWelcome {
		t.Fatalf("first event %+v", w)
	}
}

// Heartbeat comments, a 4001 close event at the token's exp, and a slow
// SSE reader catching up from the table with nothing lost.
func TestSSEHeartbeatExpiryAndCatchUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{HeartbeatInterval: 300 * time.Millisecond, SendBuffer: 8}})
	short, err := MintHS256(testSecret, "op1", []string{"R"}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := e.sse("token="+url.QueryEscape(short), nil)
	s.next(5 * time.Second) // welcome
	for pings := 0; pings < 2; {
		if ev := s.next(5 * time.Second); ev.Comment == "ping" {
			pings++
		}
	}
	for {
		ev := s.next(10 * time.Second)
		if ev.Event == "close" {
			if !strings.Contains(ev.Data, `"code":4001`) {
				t.Fatalf("close %+v", ev)
			}
			break
		}
	}

	// A burst larger than the session's queue: caught up from the table.
	c, _ := e.sse("token="+url.QueryEscape(e.token("op2", "R")), nil)
	c.next(5 * time.Second)
	var evs []outbox.Event
	for i := range 500 {
		evs = append(evs, outbox.Event{Topic: "task_event", Data: map[string]any{"n": i, "pad": strings.Repeat("x", 500)}, Roles: []string{"R"}})
	}
	e.emit(evs...)
	got := c.eventsOf(500)
	for i, ev := range got {
		if ev.ID != fmt.Sprint(i+1) {
			t.Fatalf("event %d has id %s", i, ev.ID)
		}
	}
}
