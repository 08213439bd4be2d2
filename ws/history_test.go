package ws

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestClientAddrBehindTrustedProxies(t *testing.T) {
	t.Parallel()
	proxies, err := ParseTrustedProxies([]string{"10.0.0.0/8", " 192.168.1.5", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"no proxy header", "203.0.113.9:5000", nil, "203.0.113.9"},
		{"untrusted peer's header is ignored", "203.0.113.9:5000", []string{"198.51.100.1"}, "203.0.113.9"},
		{"trusted proxy, one hop", "10.1.2.3:40000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"trusted chain resolves to the first untrusted from the right", "10.1.2.3:40000",
			[]string{"198.51.100.1, 192.168.1.5", "10.9.9.9"}, "198.51.100.1"},
		{"spoofed entries left of the client are ignored", "10.1.2.3:40000",
			[]string{"1.1.1.1, 2.2.2.2, 198.51.100.1"}, "198.51.100.1"},
		{"garbage stops the walk at the last vouched address", "10.1.2.3:40000", []string{"not-an-ip, 10.4.4.4"}, "10.4.4.4"},
		{"all hops trusted: the leftmost", "10.1.2.3:40000", []string{"10.4.4.4"}, "10.4.4.4"},
		{"trusted proxy without header", "192.168.1.5:1", nil, "192.168.1.5"},
		{"IPv6 proxy", "[fd00::1]:443", []string{"2001:db8::7"}, "2001:db8::7"},
	} {
		r := &http.Request{RemoteAddr: tc.peer, Header: http.Header{}}
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := clientAddr(r, proxies); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
	if _, err := ParseTrustedProxies([]string{"10.0.0.0/8", "proxy.local"}); err == nil {
		t.Fatal("a host name was accepted as a CIDR")
	}
}

// welcome dials and returns the client and its welcome data.
func (e *env) welcome(query, sub string) (*wsClient, WelcomeData) {
	e.t.Helper()
	c, resp, err := e.dial("token="+url.QueryEscape(e.token(sub))+"&"+query, dialOpts{})
	if err != nil {
		e.t.Fatalf("dial: %v (%v)", err, resp)
	}
	f := c.next(5 * time.Second)
	var w WelcomeData
	if f.Type != TypeWelcome || json.Unmarshal(f.Data, &w) != nil {
		e.t.Fatalf("first frame %+v, want welcome", f)
	}
	return c, w
}

func (c *wsClient) resync() ResyncData {
	c.t.Helper()
	f := c.next(5 * time.Second)
	var d ResyncData
	if f.Type != TypeResyncRequired || json.Unmarshal(f.Data, &d) != nil {
		c.t.Fatalf("frame %+v, want resync_required", f)
	}
	return d
}

func TestResumeChecksTheEpoch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	epoch := ""
	if err := e.db.Pool.QueryRow(t.Context(), `SELECT outbox.epoch()`).Scan(&epoch); err != nil {
		t.Fatal(err)
	}
	e.emit(ev("task_event", 1, nil, nil), ev("task_event", 2, nil, nil), ev("task_event", 3, nil, nil))
	waitFor(t, 10*time.Second, "head 3", func() bool { return e.hub.Head() == 3 })

	// Same epoch: exactly the missed events.
	cl, w := e.welcome("since=1&epoch="+epoch, "same")
	if w.Epoch != epoch || len(epoch) < 16 {
		t.Fatalf("welcome epoch %q, database epoch %q", w.Epoch, epoch)
	}
	if fs := cl.events(2, 5*time.Second); fs[0].Seq != 2 || fs[1].Seq != 3 {
		t.Fatalf("replayed %d, %d", fs[0].Seq, fs[1].Seq)
	}
	// Another history's epoch: resync_required, nothing replayed.
	foreign, _ := e.welcome("since=1&epoch=0123456789abcdef", "foreign")
	if d := foreign.resync(); d.Reason != ResyncEpoch || d.OldestSeq != 1 {
		t.Fatalf("resync %+v, want reason epoch", d)
	}
	// since ahead of the head, epoch unknown to the client.
	ahead, _ := e.welcome("since=99", "ahead")
	if d := ahead.resync(); d.Reason != ResyncAhead {
		t.Fatalf("resync %+v, want reason ahead", d)
	}
	// Live delivery continues for all; the foreign one got nothing replayed.
	e.emit(ev("system_event", 4, nil, nil))
	for _, c := range []*wsClient{cl, foreign, ahead} {
		if f := c.events(1, 5*time.Second)[0]; f.Seq != 4 {
			t.Fatalf("next event seq %d, want 4 (live)", f.Seq)
		}
	}
	for _, bad := range []string{"epoch=a%20b", "epoch=" + strings.Repeat("a", 65)} {
		_, resp, err := e.dial("token="+url.QueryEscape(e.token("u"))+"&since=1&"+bad, dialOpts{})
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%s: %v %v", bad, err, resp)
		}
	}
}

// The database is recreated or restored under a running hub: the tailer
// finds another epoch, the hub closes every session with 1012, and a
// session resuming with the old epoch is told to resync.
func TestRebaseWhenTheHistoryChanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.emit(ev("task_event", 1, nil, nil), ev("task_event", 2, nil, nil))
	waitFor(t, 10*time.Second, "head 2", func() bool { return e.hub.Head() == 2 })
	cl, w := e.welcome("since=2", "u1")
	// A restore to an earlier point: the head goes back, same epoch.
	e.db.Exec(t, `DELETE FROM outbox.events; UPDATE outbox.relay_state SET last_seq = 1`)
	if code, err := cl.closed(10 * time.Second); code != CloseHistoryChanged.Code {
		t.Fatalf("closed %d (%v), want %d", code, err, CloseHistoryChanged.Code)
	}
	var epoch string
	if err := e.db.Pool.QueryRow(t.Context(), `SELECT outbox.epoch()`).Scan(&epoch); err != nil {
		t.Fatal(err)
	}
	if epoch == w.Epoch || e.hub.Epoch() != epoch || e.hub.Head() != 1 {
		t.Fatalf("epoch %q → %q (hub %q), hub head %d: want a new epoch and head 1", w.Epoch, epoch, e.hub.Epoch(), e.hub.Head())
	}
	again, w2 := e.welcome("since=2&epoch="+w.Epoch, "u1")
	if w2.Epoch != epoch || w2.HeadSeq != 1 {
		t.Fatalf("welcome %+v", w2)
	}
	if d := again.resync(); d.Reason != ResyncEpoch {
		t.Fatalf("resync %+v, want epoch", d)
	}
	// Seq 2 of the new history is delivered live.
	e.emit(ev("task_event", 3, nil, nil))
	if f := again.events(1, 5*time.Second)[0]; f.Seq != 2 {
		t.Fatalf("live seq %d, want 2", f.Seq)
	}
}

func TestHandshakesInFlightAreBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{Limits: Limits{MaxHandshakes: 2}}})
	e.hub.handshakes.Add(2) // two handshakes under way
	_, resp, err := e.dial("token="+url.QueryEscape(e.token("u")), dialOpts{})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("over the bound: %v %v", err, resp)
	}
	var body httpError
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if body.Error != "busy" {
		t.Fatalf("body %+v", body)
	}
	e.hub.handshakes.Add(-1)
	e.connect("", "u")
	// The handler lets go of its handshake when it returns, once the
	// connection is upgraded — which the client may see (its welcome)
	// first.
	waitFor(t, 10*time.Second, "the upgraded handshake to be let go (1 left in flight)", func() bool { return e.hub.handshakes.Load() == 1 })
}
