package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/grupogad/outboxd/outbox"
)

// Filtered clients that keep re-sending subscribe while events flow get
// exactly the split each answer states: every event ≤ N by the filter
// before it, every event > N by the filter after it — none dropped, none
// outside the filter. The events are written by concurrent producers in
// small commits, so subscribes meet Dispatch at every point of a batch's
// fan-out; plain and batch=1 sessions both.
func TestSubscribeChurnLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	filters := [][]string{{"task_event"}, {"task_event", "efectivo_event"}, {"efectivo_event", "system_event"}}
	topics := []string{"task_event", "efectivo_event", "system_event"}
	const clients, producers, perProducer = 12, 4, 300

	type split struct {
		seq    int64
		topics []string
	}
	type churner struct {
		c      *wsClient
		got    []frame
		splits []split
		// subscribes counts answered subscribes; each client waits for
		// its answer before the next, so the flow never outruns the rate.
		subscribes int
	}
	cs := make([]*churner, clients)
	for i := range cs {
		q := "topics=task_event"
		if i%2 == 1 {
			q += "&batch=1"
		}
		cs[i] = &churner{c: e.connect(q, fmt.Sprintf("u%d", i), "LEVEL_1"), splits: []split{{0, filters[0]}}}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stopChurn := make(chan struct{})
	var wg sync.WaitGroup
	for i, ch := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := i
			for {
				select {
				case <-stopChurn:
					return
				case <-ctx.Done():
					return
				default:
				}
				k++
				f := filters[k%len(filters)]
				b, _ := json.Marshal(map[string]any{"type": "subscribe", "data": map[string]any{"topics": f}})
				if err := ch.c.conn.WriteMessage(1, b); err != nil {
					return
				}
				// Read up to the answer, keeping the events on the way.
				for {
					select {
					case fr := <-ch.c.frames:
						if fr.Type == TypeSubscribed {
							var d SubscribedData
							_ = json.Unmarshal(fr.Data, &d)
							ch.splits = append(ch.splits, split{d.Seq, d.Topics})
							ch.subscribes++
							goto next
						}
						if fr.Seq > 0 {
							ch.got = append(ch.got, fr)
						}
					case <-ctx.Done():
						return
					}
				}
			next:
			}
		}()
	}

	var pw sync.WaitGroup
	for p := range producers {
		pw.Add(1)
		go func() {
			defer pw.Done()
			for j := 0; j < perProducer && ctx.Err() == nil; j += 3 {
				var evs []outbox.Event
				for k := range 3 {
					evs = append(evs, ev(topics[(p+j+k)%3], p*perProducer+j+k, nil, nil))
				}
				if _, err := outbox.EmitBatch(ctx, e.db.Pool, evs); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	pw.Wait()
	close(stopChurn)
	wg.Wait()
	if t.Failed() {
		return
	}
	// Every client ends on every topic; a last broadcast marks the end.
	for _, ch := range cs {
		ch.c.send(`{"type":"subscribe","data":{"topics":null}}`)
	}
	for _, ch := range cs {
		for {
			fr := ch.c.next(30 * time.Second)
			if fr.Type == TypeSubscribed {
				var d SubscribedData
				_ = json.Unmarshal(fr.Data, &d)
				ch.splits = append(ch.splits, split{d.Seq, nil})
				break
			}
			if fr.Seq > 0 {
				ch.got = append(ch.got, fr)
			}
		}
	}
	e.emit(ev("dashboard_event", -1, nil, nil))
	for _, ch := range cs {
		for {
			fr := ch.c.next(30 * time.Second)
			if fr.Seq == 0 {
				continue
			}
			if fr.Type == "dashboard_event" {
				break
			}
			ch.got = append(ch.got, fr)
		}
	}
	rows, err := e.db.Pool.Query(ctx, `SELECT seq, topic FROM outbox.events WHERE seq IS NOT NULL ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		seq   int64
		topic string
	}
	var all []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.seq, &r.topic); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	churned := 0
	for i, ch := range cs {
		churned += ch.subscribes
		// The filter in force for seq s is the one of the last split below s.
		var want []int64
		for _, r := range all {
			if r.topic == "dashboard_event" {
				continue
			}
			f := ch.splits[0].topics
			for _, sp := range ch.splits {
				if sp.seq < r.seq {
					f = sp.topics
				}
			}
			if f == nil || slices.Contains(f, r.topic) {
				want = append(want, r.seq)
			}
		}
		var got []int64
		for _, fr := range ch.got {
			got = append(got, fr.Seq)
		}
		if !slices.Equal(got, want) {
			t.Errorf("client %d (%d subscribes): got %d events, want %d; first difference %s; last splits %v", i, ch.subscribes, len(got), len(want), firstDiff(got, want), ch.splits[len(ch.splits)-2:])
		}
	}
	if churned < clients*10 {
		t.Fatalf("only %d subscribes answered while events flowed: the test did not churn", churned)
	}
}

func firstDiff(got, want []int64) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("at %d: got seq %d, want %d", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("after %d common events (got %v, want %v)", min(len(got), len(want)), got[min(len(got), len(want)):], want[min(len(got), len(want)):])
}
