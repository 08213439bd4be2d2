package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/grupogad/outboxd/outbox"
)

func (c *wsClient) refreshWith(tok string) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]any{"type": "refresh", "data": map[string]string{"token": tok}})
	c.send(string(b))
}

// nextControlOf reads up to the next control frame of typ (or error),
// returning the events read on the way.
func (c *wsClient) nextControlOf(typ string) (frame, []frame) {
	c.t.Helper()
	var evs []frame
	for {
		f := c.next(10 * time.Second)
		if f.Seq > 0 {
			evs = append(evs, f)
			continue
		}
		if f.Type == typ || f.Type == TypeError {
			return f, evs
		}
	}
}

// A refresh switches the roles exactly at the answered seq: events up to
// it by the old roles, after it by the new; the answer carries the new
// roles and exp.
func TestRefreshSwitchesRolesAtTheSplit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	c := e.connect("", "op1", "LEVEL_1")
	e.emit(ev("task_event", 1, nil, []string{"LEVEL_1"}), ev("task_event", 2, nil, []string{"LEVEL_2"}))
	if got := c.events(1, 5*time.Second); got[0].Seq != 1 {
		t.Fatalf("before: %+v", got)
	}
	exp := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	c.refreshWith(mintClaims(t, jwt.MapClaims{"sub": "op1", "role": "LEVEL_2", "iat": time.Now().Unix(), "exp": exp.Unix()}))
	f, evs := c.nextControlOf(TypeRefreshed)
	var d RefreshedData
	if f.Type != TypeRefreshed || json.Unmarshal(f.Data, &d) != nil {
		t.Fatalf("answer %+v %s", f, f.Data)
	}
	if len(evs) != 0 || d.Seq != 2 || strings.Join(d.Roles, ",") != "LEVEL_2" || d.Exp != exp.Unix() {
		t.Fatalf("refreshed %+v after %d events, want seq 2, roles LEVEL_2, exp %d", d, len(evs), exp.Unix())
	}
	e.emit(ev("task_event", 3, nil, []string{"LEVEL_1"}), ev("task_event", 4, nil, []string{"LEVEL_2"}))
	if got := c.events(1, 5*time.Second); got[0].Seq != 4 {
		t.Fatalf("after: %+v", got)
	}
	c.quiet(100 * time.Millisecond)
}

// A session refreshed before its old exp is not cut at it; a refresh with
// another user's token, a bad token or a revoked one is refused with an
// error and the session keeps its token.
func TestRefreshKeepsTheSessionAndRefusesBadTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	short := mintClaims(t, jwt.MapClaims{"sub": "op1", "role": "LEVEL_1", "iat": time.Now().Unix(), "exp": time.Now().Add(2 * time.Second).Unix()})
	c, _, _ := e.connectWith(short, "")
	for _, bad := range []struct{ tok, code string }{
		{mintClaims(t, jwt.MapClaims{"sub": "op2", "role": "LEVEL_1", "exp": time.Now().Add(time.Hour).Unix()}), ErrCodeSubMismatch},
		{"not-a-token", ErrCodeInvalidToken},
		{mintClaims(t, jwt.MapClaims{"sub": "op1", "exp": time.Now().Add(-time.Minute).Unix()}), ErrCodeInvalidToken},
		{"", ErrCodeInvalidToken},
	} {
		c.refreshWith(bad.tok)
		f, _ := c.nextControlOf(TypeRefreshed)
		var d ErrorData
		if f.Type != TypeError || json.Unmarshal(f.Data, &d) != nil || d.Code != bad.code {
			t.Fatalf("refresh with %.20q: %+v %s, want error %s", bad.tok, f, f.Data, bad.code)
		}
	}
	c.refreshWith(e.token("op1", "LEVEL_1"))
	if f, _ := c.nextControlOf(TypeRefreshed); f.Type != TypeRefreshed {
		t.Fatalf("good refresh: %+v %s", f, f.Data)
	}
	// Past the old exp and a sweep: still connected, still served.
	deadline := time.Now().Add(3500 * time.Millisecond)
	for time.Now().Before(deadline) {
		select {
		case f := <-c.frames:
			t.Fatalf("unexpected frame %+v", f)
		case <-c.done:
			t.Fatalf("closed at the old exp: %v", c.readErr())
		case <-time.After(time.Until(deadline)):
		}
	}
	e.emit(ev("task_event", 1, nil, []string{"LEVEL_1"}))
	if got := c.events(1, 5*time.Second); got[0].Seq != 1 {
		t.Fatalf("after the old exp: %+v", got)
	}
	if d, _, _ := e.hub.Counts(); d["token_expired"] != 0 {
		t.Fatalf("token_expired drops: %v", d)
	}
}

// Clients that keep refreshing between two roles while events flow get
// exactly the split each answer states — live, batch=1 and catching up
// from the table (a backlog before they connect) alike.
func TestRefreshChurnLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	roles := []string{"LEVEL_1", "LEVEL_2"}
	var backlog []outbox.Event
	for i := range 600 {
		backlog = append(backlog, ev("task_event", i, nil, []string{roles[i%2]}))
	}
	e.emit(backlog...)
	waitFor(t, 10*time.Second, "the backlog sequenced", func() bool { return e.hub.Head() == 600 })
	e.hub.recent.reset() // the catch-up reads the table
	type split struct {
		seq  int64
		role string
	}
	type churner struct {
		c      *wsClient
		got    []int64
		splits []split
	}
	var cs []*churner
	for i := range 6 {
		q := "since=0"
		if i%2 == 1 {
			q += "&batch=1"
		}
		cs = append(cs, &churner{c: e.connect(q, fmt.Sprintf("u%d", i), "LEVEL_1"), splits: []split{{0, "LEVEL_1"}}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for i, ch := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 1; k <= 30 && ctx.Err() == nil; k++ {
				role := roles[(i+k)%2]
				ch.c.refreshWith(mintClaims(t, jwt.MapClaims{"sub": fmt.Sprintf("u%d", i), "role": role, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}))
				for {
					f := ch.c.next(10 * time.Second)
					if f.Seq > 0 {
						ch.got = append(ch.got, f.Seq)
						continue
					}
					if f.Type == TypeRefreshed {
						var d RefreshedData
						_ = json.Unmarshal(f.Data, &d)
						ch.splits = append(ch.splits, split{d.Seq, d.Roles[0]})
						break
					}
				}
			}
		}()
	}
	for i := 600; i < 1200 && ctx.Err() == nil; i += 20 {
		var evs []outbox.Event
		for k := range 20 {
			evs = append(evs, ev("task_event", i+k, nil, []string{roles[(i+k)%2]}))
		}
		e.emit(evs...)
	}
	wg.Wait()
	e.emit(ev("dashboard_event", -1, nil, nil)) // a broadcast marks the end
	for _, ch := range cs {
		for {
			f := ch.c.next(30 * time.Second)
			if f.Type == "dashboard_event" {
				break
			}
			if f.Seq > 0 {
				ch.got = append(ch.got, f.Seq)
			}
		}
	}
	rows, err := e.db.Pool.Query(ctx, `SELECT seq, target_roles[1] FROM outbox.events WHERE topic = 'task_event' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		seq  int64
		role string
	}
	var all []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.seq, &r.role); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	for i, ch := range cs {
		var want []int64
		for _, r := range all {
			role := ch.splits[0].role
			for _, sp := range ch.splits {
				if sp.seq < r.seq {
					role = sp.role
				}
			}
			if r.role == role {
				want = append(want, r.seq)
			}
		}
		if !slices.Equal(ch.got, want) {
			t.Errorf("client %d (%d refreshes): got %d events, want %d; %s", i, len(ch.splits)-1, len(ch.got), len(want), firstDiff(ch.got, want))
		}
	}
}
