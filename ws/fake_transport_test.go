package ws

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/memstore"
	"github.com/grupogad/outboxd/stream"
)

// fakeTransport is a Transport with no network, as centrifuge's hub tests
// use: a bounded queue that a writer goroutine drains, reporting each frame
// written (onSent) as melody's write pump does; what it "wrote" is decoded
// into frames. pause holds the writer (a client that stopped reading).
type fakeTransport struct {
	t      *testing.T
	h      *Hub
	c      *client
	queue  chan []byte
	frames chan frame
	closed chan CloseError
	gate   chan chan struct{}
}

var errQueueFull = errors.New("fake transport: queue full")

func (f *fakeTransport) Write(b []byte) error {
	select {
	case f.queue <- b:
		return nil
	default:
		return errQueueFull
	}
}

func (f *fakeTransport) Close(ce CloseError, _ <-chan struct{}) {
	f.closed <- ce
	f.h.detach(f.c) // the connection ended: as melody's disconnect handler
}

func (f *fakeTransport) run() {
	hold := make(chan struct{})
	close(hold)
	for {
		select {
		case h := <-f.gate:
			hold = h
			continue
		case b := <-f.queue:
			select {
			case <-hold:
			case <-f.c.done:
				return
			}
			for _, line := range bytes.Split(b, []byte{'\n'}) {
				var fr frame
				if err := json.Unmarshal(line, &fr); err != nil {
					f.t.Errorf("bad frame %q: %v", b, err)
				}
				f.frames <- fr
			}
			f.c.onSent(b)
		case <-f.c.done:
			return
		}
	}
}

// pause holds the writer until the returned func is called.
func (f *fakeTransport) pause() (resume func()) {
	h := make(chan struct{})
	f.gate <- h
	return func() { close(h) }
}

func (f *fakeTransport) next(d time.Duration) frame {
	f.t.Helper()
	select {
	case fr := <-f.frames:
		return fr
	case <-time.After(d):
		f.t.Fatalf("no frame within %s", d)
	}
	return frame{}
}

// events reads n events, skipping control frames.
func (f *fakeTransport) events(n int) []int64 {
	f.t.Helper()
	var seqs []int64
	for len(seqs) < n {
		if fr := f.next(5 * time.Second); fr.Seq > 0 {
			seqs = append(seqs, fr.Seq)
		}
	}
	return seqs
}

// fakeHub is a hub over the in-memory store whose sessions use fake
// transports: the hub's logic, without PostgreSQL or sockets.
type fakeHub struct {
	t     *testing.T
	h     *Hub
	store *memstore.Store
}

func newFakeHub(t *testing.T, cfg Config) *fakeHub {
	t.Helper()
	store := memstore.New("e1")
	h, _ := newMemHub(t, store, cfg) // the test server stays unused: the sessions are fake
	return &fakeHub{t: t, h: h, store: store}
}

// open attaches a session for user/roles over a fake transport and reads
// its welcome.
func (f *fakeHub) open(user string, roles []string, p sessionParams) *fakeTransport {
	f.t.Helper()
	c := f.h.newClient(Claims{UserID: user, Roles: roles, Issued: time.Now()}, "fake", p)
	tr := &fakeTransport{t: f.t, h: f.h, c: c, queue: make(chan []byte, f.h.cfg.SendBuffer),
		frames: make(chan frame, 100000), closed: make(chan CloseError, 1), gate: make(chan chan struct{})}
	go tr.run()
	f.h.attach(c, tr)
	if fr := tr.next(5 * time.Second); fr.Type != TypeWelcome {
		f.t.Fatalf("first frame %+v, want welcome", fr)
	}
	return tr
}

// publish sequences evs in the store and dispatches them, as the relay does.
func (f *fakeHub) publish(evs ...stream.Event) {
	f.t.Helper()
	for i := range evs {
		if evs[i].Payload == nil {
			evs[i].Payload = json.RawMessage(`{}`)
		}
		evs[i].CreatedAt = time.Now()
	}
	if err := f.h.Dispatch(context.Background(), f.store.Append(evs...)); err != nil {
		f.t.Fatal(err)
	}
}

// toRoles and toUsers target an event; none given is an empty set (nobody).
func toRoles(topic string, roles ...string) stream.Event {
	return stream.Event{Topic: topic, Roles: append([]string{}, roles...)}
}

func toUsers(topic string, users ...string) stream.Event {
	return stream.Event{Topic: topic, Users: append([]string{}, users...)}
}

func equalSeqs(a, b []int64) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// Routing over fake transports: users and roles are a union, an empty set
// reaches nobody, a broadcast everyone, topic filters apply.
func TestFakeTransportRouting(t *testing.T) {
	t.Parallel()
	f := newFakeHub(t, Config{})
	op := f.open("op1", []string{"LEVEL_1"}, sessionParams{})
	sup := f.open("sup1", []string{"LEVEL_2"}, sessionParams{})
	tasks := f.open("op2", []string{"LEVEL_1"}, sessionParams{topics: []string{"task_event"}})
	f.publish(toRoles("task_event", "LEVEL_1"), toUsers("notification", "sup1"), stream.Event{Topic: "system_event"},
		toUsers("task_event"), toRoles("efectivo_event", "LEVEL_1", "LEVEL_2"), stream.Event{Topic: "task_event", Users: []string{"op2"}, Roles: []string{"LEVEL_2"}})
	if got := op.events(3); !equalSeqs(got, []int64{1, 3, 5}) {
		t.Errorf("op1: %v", got)
	}
	if got := sup.events(4); !equalSeqs(got, []int64{2, 3, 5, 6}) {
		t.Errorf("sup1: %v", got)
	}
	if got := tasks.events(2); !equalSeqs(got, []int64{1, 6}) {
		t.Errorf("op2 (task_event only): %v", got)
	}
}

// A client that stops reading falls out of live delivery, catches up from
// the store at its pace once it reads again, and rejoins live with nothing
// lost or repeated; batch=1 gets the backlog in joined frames.
func TestFakeTransportCatchUpHandOver(t *testing.T) {
	t.Parallel()
	f := newFakeHub(t, Config{SendBuffer: 8})
	for _, batch := range []bool{false, true} {
		slow := f.open(fmt.Sprintf("slow-%v", batch), []string{"R"}, sessionParams{batch: batch})
		resume := slow.pause()
		head := f.h.Head()
		for range 40 {
			f.publish(toRoles("task_event", "R"))
		}
		resume()
		var want []int64
		for s := head + 1; s <= head+40; s++ {
			want = append(want, s)
		}
		if got := slow.events(40); !equalSeqs(got, want) {
			t.Fatalf("batch=%v: %v", batch, got)
		}
		f.publish(toRoles("task_event", "R"))
		if got := slow.events(1); got[0] != head+41 {
			t.Fatalf("batch=%v: live after the catch-up: %v", batch, got)
		}
		if f.h.metrics.catchUps.Load() == 0 {
			t.Fatal("no catch-up: the queue never filled")
		}
	}
}

// A disconnect row closes the user's sessions with 4003 after every
// earlier event, and gives them nothing after it; other users go on.
func TestFakeTransportDisconnectOrder(t *testing.T) {
	t.Parallel()
	f := newFakeHub(t, Config{})
	a := f.open("alice", []string{"R"}, sessionParams{})
	b := f.open("bob", []string{"R"}, sessionParams{})
	f.publish(toRoles("task_event", "R"), toRoles("task_event", "R"),
		stream.Event{Topic: TopicDisconnect, Users: []string{"alice"}, Roles: []string{}, Payload: json.RawMessage(`{"reason":"role changed"}`)},
		toRoles("task_event", "R"))
	if got := a.events(2); !equalSeqs(got, []int64{1, 2}) {
		t.Fatalf("alice: %v", got)
	}
	select {
	case ce := <-a.closed:
		if ce.Code != CloseRevoked.Code || ce.Reason != "role changed" {
			t.Fatalf("alice closed with %+v", ce)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("alice not closed")
	}
	if got := b.events(3); !equalSeqs(got, []int64{1, 2, 4}) {
		t.Fatalf("bob: %v", got)
	}
}

// subscribe answers the split and routes by the new filter after it.
func TestFakeTransportSubscribe(t *testing.T) {
	t.Parallel()
	f := newFakeHub(t, Config{})
	c := f.open("op1", []string{"R"}, sessionParams{topics: []string{"task_event"}})
	f.publish(toRoles("task_event", "R"), toRoles("system_event", "R"))
	if got := c.events(1); got[0] != 1 {
		t.Fatalf("before: %v", got)
	}
	f.h.receive(c.c, []byte(`{"type":"subscribe","data":{"topics":["system_event"]}}`))
	var fr frame
	for fr = c.next(5 * time.Second); fr.Type != TypeSubscribed; fr = c.next(5 * time.Second) {
	}
	var d SubscribedData
	if err := json.Unmarshal(fr.Data, &d); err != nil || d.Seq != 2 {
		t.Fatalf("subscribed %s", fr.Data)
	}
	f.publish(toRoles("task_event", "R"), toRoles("system_event", "R"))
	if got := c.events(1); got[0] != 4 {
		t.Fatalf("after: %v", got)
	}
}
