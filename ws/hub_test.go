package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/internal/testsignal"
	"github.com/grupogad/outboxd/outbox"
)

func TestRoutingMatrix(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	clients := map[string]*wsClient{
		"a": e.connect("", "a", "r1"),
		"b": e.connect("", "b", "r2"),
		"c": e.connect("", "c", "r1", "r2"),
		"d": e.connect("", "d"),
	}
	a2 := e.connect("", "a") // a second session of user a, without roles
	type target struct {
		users, roles []string
		want         []string // recipients ("a2" is user a's second session)
	}
	targets := []target{
		{users: []string{"a"}, want: []string{"a", "a2"}},
		{roles: []string{"r2"}, want: []string{"b", "c"}},
		{users: []string{"a"}, roles: []string{"r1"}, want: []string{"a", "a2", "c"}}, // a matches both: once
		{users: []string{"d", "c"}, roles: []string{"r1", "r2"}, want: []string{"a", "b", "c", "d"}},
		{users: []string{"nobody"}, want: nil},
		{roles: []string{"R1"}, want: nil},         // roles are case-sensitive
		{want: []string{"a", "a2", "b", "c", "d"}}, // broadcast
	}
	var evs []outbox.Event
	for i, tg := range targets {
		evs = append(evs, ev("task_event", i, tg.users, tg.roles))
	}
	evs = append(evs, ev("system_event", 99, nil, nil)) // end marker, to everyone
	e.emit(evs...)

	got := map[string][]int{}
	all := map[string]*wsClient{"a2": a2}
	for k, v := range clients {
		all[k] = v
	}
	for name, cl := range all {
		for {
			f := cl.events(1, 10*time.Second)[0]
			var d struct{ N int }
			if err := json.Unmarshal(f.Data, &d); err != nil {
				t.Fatal(err)
			}
			if d.N == 99 {
				break
			}
			got[name] = append(got[name], d.N)
		}
	}
	for i, tg := range targets {
		var recv []string
		for name, ns := range got {
			for _, n := range ns {
				if n == i {
					recv = append(recv, name)
				}
			}
		}
		sort.Strings(recv)
		if !slices.Equal(recv, tg.want) {
			t.Errorf("event %d (users %v roles %v) reached %v, want %v", i, tg.users, tg.roles, recv, tg.want)
		}
	}
}

func TestManyEventsManyClientsInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	const nClients, nEvents = 20, 5000
	var cls []*wsClient
	for i := range nClients {
		cls = append(cls, e.connect("", fmt.Sprintf("u%d", i), "LEVEL_1"))
	}
	go func() {
		for i := 0; i < nEvents; i += 100 {
			batch := make([]outbox.Event, 100)
			for j := range batch {
				batch[j] = ev("task_event", i+j, nil, []string{"LEVEL_1"})
			}
			if _, err := outbox.EmitBatch(context.Background(), e.db.Pool, batch); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i, cl := range cls {
		fs := cl.events(nEvents, 60*time.Second)
		for k := 1; k < len(fs); k++ {
			if fs[k].Seq != fs[k-1].Seq+1 {
				t.Fatalf("client %d: seq %d after %d", i, fs[k].Seq, fs[k-1].Seq)
			}
		}
		if fs[0].Seq != 1 || fs[nEvents-1].Seq != nEvents {
			t.Fatalf("client %d: seqs %d..%d", i, fs[0].Seq, fs[nEvents-1].Seq)
		}
		cl.quiet(50 * time.Millisecond)
	}
}

func TestEnvelopeShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	cl := e.connect("", "u1", "LEVEL_1")
	ids := e.emit(outbox.Event{Topic: "efectivo_event", Data: map[string]any{"efectivo_id": 3, "disponible": true}, Users: []string{"u1"}})
	f := cl.events(1, 5*time.Second)[0]
	if f.Type != "efectivo_event" || f.Seq != 1 || f.ID != ids[0] {
		t.Fatalf("frame %+v", f)
	}
	if _, err := time.Parse(time.RFC3339Nano, f.Timestamp); err != nil || !strings.HasSuffix(f.Timestamp, "Z") || len(f.Timestamp) != len("2026-11-27T05:01:02.123456Z") {
		t.Fatalf("timestamp %q", f.Timestamp)
	}
	var d map[string]any
	if err := json.Unmarshal(f.Data, &d); err != nil || d["efectivo_id"] != 3.0 || d["disponible"] != true {
		t.Fatalf("data %s", f.Data)
	}
}

func TestResumeWithSince(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	cl := e.connect("", "u1", "LEVEL_1")
	e.emit(ev("task_event", 0, nil, nil), ev("task_event", 1, []string{"u1"}, nil))
	got := cl.events(2, 5*time.Second)
	last := got[1].Seq
	_ = cl.conn.Close()

	// 500 events while away: 1 in 5 for someone else.
	var evs []outbox.Event
	var want []int
	for i := range 500 {
		switch i % 5 {
		case 0:
			evs = append(evs, ev("task_event", i, []string{"u2"}, nil))
		case 1:
			evs = append(evs, ev("task_event", i, nil, []string{"LEVEL_1"}))
			want = append(want, i)
		case 2:
			evs = append(evs, ev("task_event", i, []string{"u1"}, nil))
			want = append(want, i)
		default:
			evs = append(evs, ev("dashboard_event", i, nil, nil))
			want = append(want, i)
		}
	}
	e.emit(evs...)
	waitFor(t, 10*time.Second, "the relay to sequence the backlog", func() bool { return e.hub.Head() >= last+500 })

	cl2 := e.connect(fmt.Sprintf("since=%d", last), "u1", "LEVEL_1")
	fs := cl2.events(len(want), 10*time.Second)
	for i, f := range fs {
		var d struct{ N int }
		_ = json.Unmarshal(f.Data, &d)
		if d.N != want[i] || f.Seq <= last || (i > 0 && f.Seq <= fs[i-1].Seq) {
			t.Fatalf("replayed event %d: n=%d seq=%d; want n=%d in increasing seq after %d", i, d.N, f.Seq, want[i], last)
		}
	}
	// The missed events were still in the hub's recent frames: no table read.
	if m, tb := e.hub.metrics.pagesMemory.Load(), e.hub.metrics.pagesTable.Load(); m == 0 || tb != 0 {
		t.Fatalf("catch-up pages: %d from memory, %d from the table; want memory only", m, tb)
	}
	// Then live, no gap, no duplicate.
	e.emit(ev("task_event", 1000, []string{"u1"}, nil))
	live := cl2.events(1, 5*time.Second)[0]
	if live.Seq != last+501 {
		t.Fatalf("live event seq %d, want %d", live.Seq, last+501)
	}
	cl2.quiet(100 * time.Millisecond)
}

// A client resuming while events keep committing gets every one exactly once.
func TestResumeRacingLiveEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.emit(ev("task_event", 0, nil, nil))
	waitFor(t, 5*time.Second, "first event", func() bool { return e.hub.Head() == 1 })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i < 2001; i += 50 {
			batch := make([]outbox.Event, 50)
			for j := range batch {
				batch[j] = ev("task_event", i+j, nil, nil)
			}
			if _, err := outbox.EmitBatch(context.Background(), e.db.Pool, batch); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var cls []*wsClient
	for i := range 5 {
		cls = append(cls, e.connect("since=0", fmt.Sprintf("u%d", i)))
		time.Sleep(20 * time.Millisecond)
	}
	<-done
	for i, cl := range cls {
		fs := cl.events(2001, 30*time.Second)
		for k, f := range fs {
			if f.Seq != int64(k+1) {
				t.Fatalf("client %d: event %d has seq %d", i, k, f.Seq)
			}
		}
		cl.quiet(50 * time.Millisecond)
	}
}

func TestResyncRequired(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{ReplayMax: 100}})
	var evs []outbox.Event
	for i := range 300 {
		evs = append(evs, ev("task_event", i, nil, nil))
	}
	e.emit(evs...)
	waitFor(t, 10*time.Second, "backlog", func() bool { return e.hub.Head() == 300 })
	resync := func(cl *wsClient) ResyncData {
		t.Helper()
		f := cl.next(5 * time.Second)
		var d ResyncData
		if f.Type != TypeResyncRequired || json.Unmarshal(f.Data, &d) != nil {
			t.Fatalf("frame %+v, want resync_required", f)
		}
		return d
	}
	// More than REPLAY_MAX to replay.
	cl := e.connect("since=50", "u1")
	if d := resync(cl); d.OldestSeq != 1 || d.Reason != ResyncTooFar {
		t.Fatalf("resync %+v, want oldest_seq 1, too_far", d)
	}
	// Within REPLAY_MAX: replayed.
	cl2 := e.connect("since=250", "u2")
	if fs := cl2.events(50, 5*time.Second); fs[0].Seq != 251 || fs[49].Seq != 300 {
		t.Fatalf("replay %d..%d", fs[0].Seq, fs[49].Seq)
	}
	// Past retention.
	e.db.Exec(t, `DELETE FROM outbox.events WHERE seq <= 260`)
	cl3 := e.connect("since=255", "u3")
	if d := resync(cl3); d.OldestSeq != 261 || d.Reason != ResyncRetention {
		t.Fatalf("resync %+v, want oldest_seq 261, retention", d)
	}
	// since beyond the head (another database's cursor).
	cl4 := e.connect("since=100000", "u4")
	if d := resync(cl4); d.Reason != ResyncAhead {
		t.Fatalf("resync %+v, want ahead", d)
	}
	// Live delivery continues for all of them.
	e.emit(ev("system_event", 1, nil, nil))
	for _, c := range []*wsClient{cl, cl2, cl3, cl4} {
		if f := c.events(1, 5*time.Second)[0]; f.Seq != 301 {
			t.Fatalf("live seq %d", f.Seq)
		}
	}
}

func TestBadSince(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	for _, s := range []string{"-1", "abc", "1.5", "99999999999999999999", "0x10", " 1"} {
		_, resp, err := e.dial("since="+url.QueryEscape(s)+"&token="+e.token("u"), dialOpts{})
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("since=%q: %v %v; want 400", s, err, resp)
		}
		var body httpError
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if body.Error != "invalid_since" {
			t.Fatalf("since=%q: body %+v", s, body)
		}
	}
}

// 20,000 events committed in one transaction reach a reading client whole
// and in order, without a disconnect, although its queue holds 16.
func TestBurstInOneTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	cl := e.connect("", "u1")
	const n = 20000
	evs := make([]outbox.Event, n)
	for i := range evs {
		evs[i] = ev("task_event", i, nil, nil)
	}
	e.emit(evs...)
	fs := cl.events(n, 120*time.Second)
	for i, f := range fs {
		if f.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, f.Seq)
		}
	}
	if e.hub.metrics.catchUps.Load() == 0 {
		t.Fatal("the burst never overflowed the live queue: the test does not exercise catch-up")
	}
	if drops, _, _ := e.hub.Counts(); len(drops) != 0 {
		t.Fatalf("clients closed: %v", drops)
	}
	cl.quiet(50 * time.Millisecond)
}

// The same after a restart: a backlog built while no sequencer ran drains
// to a live client.
func TestBacklogAfterRestart(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	const n = 20000
	evs := make([]outbox.Event, n)
	for i := range evs {
		evs[i] = ev("task_event", i, nil, nil)
	}
	if _, err := outbox.EmitBatch(context.Background(), db.Pool, evs); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{db: db, noSequencer: true})
	cl := e.connect("", "u1")
	resumer := e.connect("since=0", "u2")
	e.startSequencer()
	for _, c := range []*wsClient{cl, resumer} {
		fs := c.events(n, 120*time.Second)
		for i, f := range fs {
			if f.Seq != int64(i+1) {
				t.Fatalf("event %d has seq %d", i, f.Seq)
			}
		}
	}
}

// A client that never reads is closed with 4008 once it is REPLAY_MAX
// behind; a fast client meanwhile gets everything, and memory stays bounded.
//
// Not parallel: the heap bound is measured process-wide.
func TestSlowClientCutFastClientServed(t *testing.T) {
	var logs proctest.SyncBuffer
	e := newEnv(t, envOpts{cfg: Config{ReplayMax: 1000, LagWindow: 500 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))}})
	fast := e.connect("", "fast")
	slow, _, err := e.dial("token="+e.token("slow"), dialOpts{rcvBuf: 4096, noReader: true})
	if err != nil {
		t.Fatal(err)
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	pad := strings.Repeat("x", 2000)
	const n = 6000
	go func() {
		for i := 0; i < n; i += 200 {
			batch := make([]outbox.Event, 200)
			for j := range batch {
				batch[j] = outbox.Event{Topic: "task_event", Data: map[string]any{"n": i + j, "pad": pad}, Broadcast: true}
			}
			if _, err := outbox.EmitBatch(context.Background(), e.db.Pool, batch); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	fs := fast.events(n, 120*time.Second)
	for i, f := range fs {
		if f.Seq != int64(i+1) {
			t.Fatalf("fast client: event %d has seq %d", i, f.Seq)
		}
	}
	waitFor(t, 30*time.Second, "the slow client to be cut", func() bool {
		drops, _, _ := e.hub.Counts()
		return drops["too_far_behind"] == 1
	})
	waitFor(t, 10*time.Second, "the slow session to go", func() bool { return e.connections() == 1 })
	// The operator is told why (the client may only see a cut connection).
	if got := logs.String(); !strings.Contains(got, `msg="client dropped" reason=too_far_behind user=slow`) {
		t.Fatalf("no drop logged for the slow client; log:\n%s", got)
	}

	// What the slow client had received is a gap-free prefix, ending with
	// the 4008 close frame if it fit in the socket, or a cut connection.
	slow.drainInto(t, n)

	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
		t.Fatalf("heap grew by %d MiB", grew>>20)
	} else {
		t.Logf("heap grew by %d KiB", grew>>10)
	}
}

// drainInto reads a client that had no reader until the stream ends.
func (c *wsClient) drainInto(t *testing.T, max int) {
	var last int64
	for range max + 1 {
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			// 4008 if the close frame fit in the socket; 1006 (cut) if the
			// never-read socket was still full.
			if ce, ok := err.(*websocket.CloseError); ok && ce.Code != 4008 && ce.Code != websocket.CloseAbnormalClosure {
				t.Errorf("slow client closed with %d, want 4008 or a cut connection", ce.Code)
			}
			return
		}
		var f frame
		if json.Unmarshal(b, &f) == nil && f.Seq > 0 {
			if f.Seq != last+1 {
				t.Errorf("slow client: seq %d after %d", f.Seq, last)
				return
			}
			last = f.Seq
		}
	}
}

func TestHeartbeatTimeoutAndTokenExpiry(t *testing.T) {
	t.Parallel()
	// 2 s: a pong is due within half an interval of each ping (pong wait
	// 1.5 × interval), which must hold on a loaded CI machine too.
	e := newEnv(t, envOpts{cfg: Config{HeartbeatInterval: 2 * time.Second}})
	pings := make(chan struct{}, 100)
	healthy, _, err := e.dial("token="+e.token("healthy"), dialOpts{pings: pings})
	if err != nil {
		t.Fatal(err)
	}
	if f := healthy.next(5 * time.Second); f.Type != TypeWelcome {
		t.Fatal(f)
	}
	// A half-open client: connected, never reads, so never answers pings.
	_, _, err = e.dial("token="+e.token("mute"), dialOpts{noReader: true})
	if err != nil {
		t.Fatal(err)
	}
	short, err := MintHS256(testSecret, "short", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	expiring, _, err := e.dial("token="+short, dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if f := expiring.next(5 * time.Second); f.Type != TypeWelcome {
		t.Fatal(f)
	}
	code, err := expiring.closed(10 * time.Second)
	if code != 4001 {
		t.Fatalf("expiring token closed with %d (%v), want 4001", code, err)
	}
	waitFor(t, 10*time.Second, "the mute client to be dropped", func() bool { return e.userConnections("mute") == 0 })
	if n := e.userConnections("healthy"); n != 1 {
		t.Fatalf("healthy client: %d connections, want 1", n)
	}
	// The healthy client, answering pings, is still there 3 pings later.
	for range len(pings) {
		<-pings
	}
	for i := range 3 {
		select {
		case <-pings:
		case <-time.After(10 * time.Second):
			t.Fatalf("ping %d of 3 not received", i+1)
		}
	}
	if e.connections() != 1 {
		t.Fatalf("%d connections, want only the healthy one", e.connections())
	}
	e.emit(ev("system_event", 1, nil, nil))
	healthy.events(1, 5*time.Second)
}

func TestClientFrames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{MaxMessageSize: 256}})
	cl := e.connect("", "u1")
	send := func(s string) {
		if err := cl.conn.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	expectError := func(code string) {
		t.Helper()
		f := cl.next(5 * time.Second)
		var d ErrorData
		if f.Type != TypeError || json.Unmarshal(f.Data, &d) != nil || d.Code != code || d.Message == "" {
			t.Fatalf("frame %+v, want error %s", f, code)
		}
	}
	send(`{"type":"ping"}`)
	if f := cl.next(5 * time.Second); f.Type != TypePong || f.Timestamp == "" {
		t.Fatalf("frame %+v, want pong", f)
	}
	send(`not json`)
	expectError(ErrCodeBadJSON)
	send(`[1,2]`)
	expectError(ErrCodeBadJSON)
	send(`{"type":"unsubscribe"}`)
	expectError(ErrCodeUnknownType)
	send(`{"type":"subscribe","data":{"topics":["Not A Topic"]}}`)
	expectError(ErrCodeInvalidTopics)
	send(`{}`)
	expectError(ErrCodeUnknownType)
	if err := cl.conn.WriteMessage(websocket.BinaryMessage, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	expectError(ErrCodeBadJSON)
	send(`{"type":"ping"}`) // still open
	if f := cl.next(5 * time.Second); f.Type != TypePong {
		t.Fatalf("frame %+v", f)
	}
	send(`{"type":"ping","pad":"` + strings.Repeat("x", 300) + `"}`)
	if code, err := cl.closed(5 * time.Second); code != websocket.CloseMessageTooBig {
		t.Fatalf("oversized frame: close %d (%v), want 1009", code, err)
	}
	// The service keeps serving others.
	other := e.connect("", "u2")
	e.emit(ev("system_event", 1, nil, nil))
	other.events(1, 5*time.Second)
}

func TestStatsShapeAndTestBroadcast(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c1 := e.connect("", "u1", "LEVEL_1")
	c2 := e.connect("", "u2", "LEVEL_1", "admin")
	c3 := e.connect("", "u2")
	e.emit(ev("task_event", 1, nil, nil))
	for _, c := range []*wsClient{c1, c2, c3} {
		c.events(1, 5*time.Second)
	}
	// Dispatch counts an event's frames once it has queued them all: a
	// client may read its frame before that.
	waitFor(t, 5*time.Second, "the event counted", func() bool { return e.hub.metrics.messagesSent.Load() == 3 })

	resp, err := http.Post(e.srv.URL+"/ws/_test/broadcast", "application/json",
		strings.NewReader(`{"title":"Hola","content":"Prueba","level":"warning"}`))
	if err != nil {
		t.Fatal(err)
	}
	var br struct {
		Status  string
		Sent    int
		Metrics MetricsSnapshot
	}
	_ = json.NewDecoder(resp.Body).Decode(&br)
	resp.Body.Close()
	if resp.StatusCode != 200 || br.Status != "ok" || br.Sent != 3 || br.Metrics.TotalBroadcasts != 1 ||
		br.Metrics.TotalMessagesSent != 6 || br.Metrics.LastBroadcastAt == nil {
		t.Fatalf("broadcast response %d %+v", resp.StatusCode, br)
	}
	for _, c := range []*wsClient{c1, c2, c3} {
		f := c.next(5 * time.Second)
		var d NotificationData
		if f.Type != TypeNotification || json.Unmarshal(f.Data, &d) != nil || d != (NotificationData{"Hola", "Prueba", "warning"}) {
			t.Fatalf("notification %+v", f)
		}
	}
	// An empty body takes the defaults.
	resp, err = http.Post(e.srv.URL+"/ws/_test/broadcast", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("empty body: %v %v", err, resp)
	}
	resp.Body.Close()
	resp, _ = http.Post(e.srv.URL+"/ws/_test/broadcast", "", strings.NewReader(`{"title":`))
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad body: %d", resp.StatusCode)
	}
	resp.Body.Close()

	m := e.stats()
	keys := func(v any) []string {
		var ks []string
		for k := range v.(map[string]any) {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	}
	if got := keys(m); !slices.Equal(got, []string{"stats", "status", "timestamp"}) {
		t.Fatalf("top-level keys %v", got)
	}
	st := m["stats"].(map[string]any)
	if got := keys(st); !slices.Equal(got, []string{"connections_by_role", "heartbeat_active", "heartbeat_interval",
		"metrics", "relay", "total_connections", "unique_users"}) {
		t.Fatalf("stats keys %v", got)
	}
	if got := keys(st["metrics"]); !slices.Equal(got, []string{"last_broadcast_at", "total_broadcasts", "total_messages_sent", "total_send_errors"}) {
		t.Fatalf("metrics keys %v", got)
	}
	for _, k := range []string{"head_seq", "pending", "lag"} {
		if _, ok := st["relay"].(map[string]any)[k]; !ok {
			t.Fatalf("relay lacks %s: %v", k, st["relay"])
		}
	}
	want := map[string]any{
		"total_connections": 3.0, "unique_users": 2.0, "heartbeat_active": true, "heartbeat_interval": 30.0,
		"connections_by_role": map[string]any{"LEVEL_1": 2.0, "admin": 1.0},
	}
	for k, v := range want {
		if !reflect.DeepEqual(st[k], v) {
			t.Errorf("stats.%s = %v, want %v", k, st[k], v)
		}
	}
	if m["status"] != "ok" || st["relay"].(map[string]any)["head_seq"] != 1.0 {
		t.Fatalf("stats %v", m)
	}
	if st["metrics"].(map[string]any)["total_broadcasts"] != 2.0 {
		t.Fatalf("metrics %v", st["metrics"])
	}
}

func TestProductionForbidsTestEndpoints(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{Production: true}})
	for _, p := range []string{"/ws/_test/broadcast", "/ws/_test/token"} {
		resp, err := http.Post(e.srv.URL+p, "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !reflect.DeepEqual(body, map[string]any{"status": "forbidden"}) {
			t.Fatalf("%s: %d %v", p, resp.StatusCode, body)
		}
	}
}

func TestTestTokenEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{TestTokens: true}})
	resp, err := http.Post(e.srv.URL+"/ws/_test/token", "application/json", strings.NewReader(`{"sub":"op7","role":"LEVEL_2","ttl":60}`))
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Token string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	cl, _, err := e.dial("token="+body.Token, dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	var d WelcomeData
	_ = json.Unmarshal(cl.next(5*time.Second).Data, &d)
	if d.UserID != "op7" || !slices.Equal(d.Roles, []string{"LEVEL_2"}) {
		t.Fatalf("welcome %+v", d)
	}
	for _, bad := range []string{`{"sub":""}`, `{"ttl":-1}`, `{"ttl":999999}`, `{"sub":1}`, `{"nope":1}`} {
		resp, _ := http.Post(e.srv.URL+"/ws/_test/token", "application/json", strings.NewReader(bad))
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%s: %d", bad, resp.StatusCode)
		}
		resp.Body.Close()
	}
}

func TestShutdownClosesWith1001AndRefuses(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	cl := e.connect("", "u1")
	resp, _ := http.Get(e.srv.URL + "/readyz")
	if resp.StatusCode != 200 {
		t.Fatalf("readyz %d", resp.StatusCode)
	}
	resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.hub.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if code, err := cl.closed(5 * time.Second); code != websocket.CloseGoingAway {
		t.Fatalf("close %d (%v), want 1001", code, err)
	}
	_, resp, err := e.dial("token="+e.token("u2"), dialOpts{})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("connect after shutdown: %v %v", err, resp)
	}
	resp, _ = http.Get(e.srv.URL + "/readyz")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz after shutdown %d", resp.StatusCode)
	}
	resp.Body.Close()
}

// A replica started after the events has none of them in memory: a client
// resuming there is replayed from the table.
func TestResumeFromTableOnAnotherReplica(t *testing.T) {
	t.Parallel()
	first := newEnv(t, envOpts{})
	var evs []outbox.Event
	for i := range 300 {
		evs = append(evs, ev("task_event", i, nil, []string{"LEVEL_1"}))
	}
	first.emit(evs...)
	waitFor(t, 10*time.Second, "the events to be sequenced", func() bool { return first.hub.Head() == 300 })
	second := newEnv(t, envOpts{db: first.db, noSequencer: true})
	cl := second.connect("since=0", "u1", "LEVEL_1")
	fs := cl.events(300, 10*time.Second)
	for i, f := range fs {
		if f.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, f.Seq)
		}
	}
	if m, tb := second.hub.metrics.pagesMemory.Load(), second.hub.metrics.pagesTable.Load(); m != 0 || tb == 0 {
		t.Fatalf("catch-up pages: %d from memory, %d from the table; want the table only", m, tb)
	}
}

// A session outlives the HTTP handler that upgraded it (net/http's goroutine
// and buffers are released), and the small per-connection buffers still
// carry frames larger than themselves both ways.
func TestSessionOutlivesHandlerAndBuffers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	returned := make(chan struct{}, 1)
	inner := e.srv.Config.Handler
	e.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.ServeHTTP(w, r)
		if r.URL.Path == "/ws/connect" {
			returned <- struct{}{}
		}
	})
	cl := e.connect("", "u1")
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("the connect handler did not return after the upgrade")
	}
	// A client frame 4 × the read buffer is read whole.
	big := `{"type":"ping","pad":"` + strings.Repeat("x", 4*clientReadBuffer) + `"}`
	if err := cl.conn.WriteMessage(websocket.TextMessage, []byte(big)); err != nil {
		t.Fatal(err)
	}
	if f := cl.next(5 * time.Second); f.Type != TypePong {
		t.Fatalf("frame %+v, want pong", f)
	}
	// An event 3 × the write buffer arrives as one message, intact.
	pad := strings.Repeat("y", 3*clientWriteBuffer)
	e.emit(outbox.Event{Topic: "task_event", Data: map[string]any{"pad": pad}, Broadcast: true})
	f := cl.events(1, 5*time.Second)[0]
	var d struct{ Pad string }
	if err := json.Unmarshal(f.Data, &d); err != nil || d.Pad != pad {
		t.Fatalf("large event: %v (len %d)", err, len(d.Pad))
	}
}

// A request with a valid token that is not a WebSocket handshake fails in
// the upgrade: a clear 400, counted, and the handler returns.
func TestUpgradeFailureAnswersAndReturns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(e.srv.URL + "/ws/connect?token=" + url.QueryEscape(e.token("u1")))
	if err != nil {
		t.Fatalf("plain GET with a valid token: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var he httpError
	if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(body, &he) != nil || he.Error != "upgrade_failed" ||
		!strings.Contains(strings.ToLower(he.Detail), "websocket") {
		t.Fatalf("status %d body %q, want 400 naming the missing WebSocket handshake", resp.StatusCode, body)
	}
	if _, rejections, _ := e.hub.Counts(); rejections["upgrade"] != 1 {
		t.Fatalf("rejections %v, want one upgrade", rejections)
	}
	// The service keeps serving.
	e.connect("", "u2")
}

// A burst that overflows a session's queue while the hub still keeps every
// event of it in memory is caught up from memory alone: the hub keeps a
// batch's frames before announcing its head, so a session that falls behind
// mid-delivery never finds an announced event missing and goes to the table.
func TestCatchUpWithinRecentFramesNeverReadsTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	clients := []*wsClient{e.connect("", "u1"), e.connect("", "u2")}
	const n = 3000 // three tailer pages, well inside the recent frames
	evs := make([]outbox.Event, n)
	for i := range evs {
		evs[i] = ev("task_event", i, nil, nil)
	}
	e.emit(evs...)
	for _, cl := range clients {
		for i, f := range cl.events(n, 60*time.Second) {
			if f.Seq != int64(i+1) {
				t.Fatalf("event %d has seq %d", i, f.Seq)
			}
		}
	}
	m := e.hub.metrics
	if m.catchUps.Load() == 0 {
		t.Fatal("the burst never overflowed a live queue: the test does not exercise catch-up")
	}
	if table := m.pagesTable.Load(); table != 0 {
		t.Fatalf("catch-up read the table %d times (memory %d) for events the hub held", table, m.pagesMemory.Load())
	}
}

// Unwritten (the sequencer's view of the fan-out's backlog) counts the
// frames queued to sessions and not yet written: a client that does not
// read holds some, one that reads everything none, and once the one that
// does not read is gone there are none.
func TestUnwrittenCountsQueuedFrames(t *testing.T) {
	e := newEnv(t, envOpts{})
	fast := e.connect("", "fast")
	slow, _, err := e.dial("token="+e.token("slow"), dialOpts{rcvBuf: 4096, noReader: true})
	if err != nil {
		t.Fatal(err)
	}
	// The welcomes are queued before dial returns and written just after.
	testsignal.Eventually(t, 10*time.Second, func() bool { return e.hub.Unwritten() == 0 },
		func() string { return fmt.Sprintf("Unwritten() = %d before any event, want 0", e.hub.Unwritten()) })
	const n = 200
	pad := strings.Repeat("x", 50_000)
	batch := make([]outbox.Event, n)
	for i := range batch {
		batch[i] = outbox.Event{Topic: "task_event", Data: map[string]any{"n": i, "pad": pad}, Broadcast: true}
	}
	if _, err := outbox.EmitBatch(context.Background(), e.db.Pool, batch); err != nil {
		t.Fatal(err)
	}
	fast.events(n, 60*time.Second)
	waitFor(t, 30*time.Second, "frames to back up behind the client that does not read", func() bool { return e.hub.Unwritten() > 0 })
	_ = slow.conn.Close()
	waitFor(t, 30*time.Second, "the backlog to go with its session", func() bool {
		return e.connections() == 1 && e.hub.Unwritten() == 0
	})
}

// Past unwrittenSample sessions Unwritten reads a sample and scales it:
// a fan-out to every session is seen whole, a quiet hub as quiet.
func TestUnwrittenSamplesManySessions(t *testing.T) {
	h := New(nil, nil, Config{})
	const sessions = 4 * unwrittenSample
	cs := make([]*client, sessions)
	for i := range cs {
		cs[i] = &client{hub: h, userID: fmt.Sprintf("u%d", i), heapIdx: -1, sent: make(chan struct{}, 1), done: make(chan struct{})}
		h.routes.add(cs[i])
	}
	if n := h.Unwritten(); n != 0 {
		t.Fatalf("Unwritten() = %d with nothing queued, want 0", n)
	}
	for _, c := range cs {
		c.inflight.Store(3)
	}
	if n := h.Unwritten(); n != 3*sessions {
		t.Fatalf("Unwritten() = %d with 3 frames queued to each of %d sessions, want %d", n, sessions, 3*sessions)
	}
}
