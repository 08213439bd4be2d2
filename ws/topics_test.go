package ws

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func (c *wsClient) subscribed() SubscribedData {
	c.t.Helper()
	f := c.nextControl(5 * time.Second)
	var d SubscribedData
	if f.Type != TypeSubscribed || json.Unmarshal(f.Data, &d) != nil {
		c.t.Fatalf("frame %+v, want subscribed", f)
	}
	return d
}

func (c *wsClient) send(s string) {
	c.t.Helper()
	if err := c.conn.WriteMessage(1, []byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

func topicsOf(fs []frame) string {
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s#%d", f.Type, f.Seq))
	}
	return strings.Join(out, " ")
}

// The topic filter matrix: on connect, after a subscribe (events before
// and after the answered seq), on resume, combined with targets, and bad
// filters refused.
func TestTopicFilters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	tasks := e.connect("topics=task_event", "op1", "LEVEL_1")
	both := e.connect("topics=task_event,efectivo_event", "op2", "LEVEL_2")
	all := e.connect("", "op3", "LEVEL_1")
	e.emit(ev("task_event", 1, nil, nil), ev("efectivo_event", 2, nil, nil), ev("system_event", 3, nil, nil),
		ev("task_event", 4, nil, []string{"LEVEL_2"}), ev("efectivo_event", 5, []string{"op1"}, nil))
	if got := topicsOf(tasks.events(1, 5*time.Second)); got != "task_event#1" {
		t.Fatalf("task_event only: %s", got)
	}
	if got := topicsOf(both.events(3, 5*time.Second)); got != "task_event#1 efectivo_event#2 task_event#4" {
		t.Fatalf("two topics with role LEVEL_2: %s", got)
	}
	if got := topicsOf(all.events(3, 5*time.Second)); got != "task_event#1 efectivo_event#2 system_event#3" {
		t.Fatalf("no filter: %s", got)
	}

	// At run time: the answer's seq splits old filter from new.
	tasks.send(`{"type":"subscribe","data":{"topics":["system_event","efectivo_event"]}}`)
	d := tasks.subscribed()
	if d.Seq != 5 || strings.Join(d.Topics, ",") != "efectivo_event,system_event" {
		t.Fatalf("subscribed %+v, want seq 5 and the sorted topics", d)
	}
	e.emit(ev("task_event", 6, nil, nil), ev("system_event", 7, nil, nil), ev("efectivo_event", 8, []string{"op1"}, nil))
	if got := topicsOf(tasks.events(2, 5*time.Second)); got != "system_event#7 efectivo_event#8" {
		t.Fatalf("after subscribe: %s", got)
	}
	tasks.quiet(100 * time.Millisecond)
	// null: every topic again.
	tasks.send(`{"type":"subscribe","data":{"topics":null}}`)
	if d := tasks.subscribed(); d.Topics != nil || d.Seq != 8 {
		t.Fatalf("subscribed %+v", d)
	}
	e.emit(ev("dashboard_event", 9, nil, nil))
	if got := topicsOf(tasks.events(1, 5*time.Second)); got != "dashboard_event#9" {
		t.Fatalf("unfiltered again: %s", got)
	}

	// Resume with a filter: from memory, and from the table.
	mem := e.connect("since=0&topics=efectivo_event", "op1", "LEVEL_1")
	if got := topicsOf(mem.events(3, 5*time.Second)); got != "efectivo_event#2 efectivo_event#5 efectivo_event#8" {
		t.Fatalf("resume with a filter (memory): %s", got)
	}
	e.hub.recent.reset()
	table := e.connect("since=0&topics=efectivo_event,dashboard_event", "op1", "LEVEL_1")
	if got := topicsOf(table.events(4, 5*time.Second)); got != "efectivo_event#2 efectivo_event#5 efectivo_event#8 dashboard_event#9" {
		t.Fatalf("resume with a filter (table): %s", got)
	}
	mem.quiet(100 * time.Millisecond)

	// Bad filters: HTTP 400 on connect, an error frame on subscribe.
	for _, bad := range []string{"topics=Task", "topics=a,,b", "topics=outboxd.disconnect",
		"topics=" + strings.TrimSuffix(strings.Repeat("t,", 65), ",")} {
		_, resp, err := e.dial("token="+url.QueryEscape(e.token("u"))+"&"+bad, dialOpts{})
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%s: %v %v", bad, err, resp)
		}
	}
	all.send(`{"type":"subscribe","data":{"topics":["ok","Not OK"]}}`)
	if f := all.nextControl(5 * time.Second); f.Type != TypeError || !strings.Contains(string(f.Data), ErrCodeInvalidTopics) {
		t.Fatalf("frame %+v, want error invalid_topics", f)
	}
	if st := e.hub.Stats(t.Context()); st.Relay.Subscriptions.Sessions != 3 || st.Relay.Subscriptions.ByTopic["efectivo_event"] != 3 {
		t.Fatalf("stats subscriptions %+v", st.Relay.Subscriptions)
	}
}

// An event on a topic few subscribe to visits those few, not every
// session of its role.
func TestTopicRoutingVisitsOnlySubscribers(t *testing.T) {
	t.Parallel()
	r := newRouting()
	for i := range 1000 {
		r.add(&client{userID: fmt.Sprintf("u%d", i), roles: []string{"LEVEL_1"}, topics: topicSet([]string{"task_event"})})
	}
	for i := range 3 {
		r.add(&client{userID: fmt.Sprintf("a%d", i), roles: []string{"LEVEL_1"}, topics: topicSet([]string{"system_event"})})
	}
	r.add(&client{userID: "other", roles: []string{"LEVEL_2"}, topics: topicSet([]string{"system_event"})})
	visits := 0
	r.each("system_event", nil, []string{"LEVEL_1"}, 1, func(*client) { visits++ })
	if visits != 3 {
		t.Fatalf("%d sessions reached, want the 3 subscribers of LEVEL_1", visits)
	}
	visits = 0
	r.each("system_event", nil, nil, 2, func(*client) { visits++ })
	if visits != 4 {
		t.Fatalf("broadcast reached %d, want the 4 subscribers", visits)
	}
}
