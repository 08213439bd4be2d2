package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"
)

// 14. Resume: 1,000 clients follow the channel, go away while 50,000
// events commit, then all come back at once — outboxd's with since=, the
// stream broker's recovering their server-side subscription from its
// history (offset and epoch; Centrifugo's recovery_max_publication_limit
// and the channel's history raised to 200,000, or it could not recover at
// all). The time from the reconnect until every client holds every event,
// and loss, duplicates and order across the whole resume. The two systems
// alternate run to run.
func resumeVs(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	order := []string{"outboxd", "stream"}
	if resumeRun.Add(1)%2 == 0 {
		order = []string{"stream", "outboxd"}
	}
	got := map[string]float64{}
	for _, sys := range order {
		res, err := e.resumeOn(ctx, sys, e.n(1000), e.n(50000))
		if err != nil {
			return r, fmt.Errorf("%s: %w", sys, err)
		}
		for _, m := range res.Metrics {
			r.add(sys+"."+m.Name, m.Value, m.Unit)
		}
		got[sys] = metricValue(res, "caught_up_s")
		fmt.Fprintf(os.Stderr, "resume: %s caught up in %.2f s\n", sys, got[sys])
	}
	if a, b := got["outboxd"], got["stream"]; a > 0 && b > 0 {
		r.add("ratio_caught_up_s", a/b, "outboxd / stream broker")
	}
	return r, nil
}

var resumeRun atomic.Int64

func (e *benchEnv) resumeOn(ctx context.Context, sys string, n, events int) (result, error) {
	var r result
	pool, err := e.freshDB(ctx)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	var sv server
	var stream *centrifugoStream
	switch sys {
	case "outboxd":
		sc, err := e.startSidecar(ctx)
		if err != nil {
			return r, err
		}
		defer sc.stop()
		sv = sc
	default:
		if stream, err = e.startCentrifugoStream(ctx, pool); err != nil {
			return r, err
		}
		defer stream.stop()
		sv = stream
		// The channel's history exists once something is published: its
		// epoch is what the clients recover against.
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return streamPublish(ctx, tx, time.Now().UnixNano(), 0, "") }); err != nil {
			return r, err
		}
	}
	// Everyone follows, then leaves at the same position.
	var epoch string
	dial := sv.dial
	if stream != nil {
		dial = func(ctx context.Context, i int) (*client, error) {
			c, ep, err := stream.dialRecover(ctx, i, -1, "")
			if err == nil && i == 0 {
				epoch = ep
			}
			return c, err
		}
	}
	cs, err := connectClients(ctx, dial, n, nil)
	if err != nil {
		return r, err
	}
	first, err := sv.position(ctx, pool)
	if err != nil {
		closeClients(cs)
		return r, err
	}
	closeClients(cs)
	for _, c := range cs {
		<-c.done
	}
	// Away: events commit, 500 per transaction.
	for done := 0; done < events; done += 500 {
		if err := commitEvents(ctx, pool, sv.inserter(), min(500, events-done)); err != nil {
			return r, fmt.Errorf("commit while away: %w", err)
		}
	}
	last, err := waitPosition(ctx, pool, sv.position, first+int64(events))
	if err != nil {
		return r, err
	}
	// Back, all at once.
	back := time.Now()
	var resumed []*client
	if stream != nil {
		resumed, err = connectClients(ctx, func(ctx context.Context, i int) (*client, error) {
			c, _, err := stream.dialRecover(ctx, i, first, epoch)
			return c, err
		}, n, nil)
	} else {
		resumed, err = connectClients(ctx, sv.(*sidecar).dialSince(first), n, nil)
	}
	if err != nil {
		return r, fmt.Errorf("resume: %w", err)
	}
	defer closeClients(resumed)
	waitDelivered(resumed, last, 10*time.Second, 5*time.Minute)
	caught := lastReceipt(resumed).Sub(back)
	var stats result
	deliveryStats(&stats, resumed, first+1, last)
	r.add("clients", float64(n), "clients")
	r.add("events_away", float64(last-first), "events")
	r.add("caught_up_s", caught.Seconds(), "s (reconnect → every client at the head)")
	for _, m := range stats.Metrics {
		switch m.Name {
		case "lost", "duplicated", "out_of_order":
			r.Metrics = append(r.Metrics, m)
		}
	}
	return r, nil
}

// dialRecover connects client i to the stream broker; with since ≥ 0 it
// recovers the channel from its history after since in epoch, and the
// publications the connect reply carries are recorded like live ones. It
// returns the channel's epoch.
func (c *centrifugoStream) dialRecover(ctx context.Context, i int, since int64, epoch string) (*client, string, error) {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": fmt.Sprintf("bench-%d", i), "exp": time.Now().Add(6 * time.Hour).Unix(),
		"channels": []string{streamChannel},
	}).SignedString([]byte(benchSecret))
	if err != nil {
		return nil, "", err
	}
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 64 << 10}
	conn, _, err := d.DialContext(ctx, "ws://"+c.addr+"/connection/websocket", nil)
	if err != nil {
		return nil, "", fmt.Errorf("dial centrifugo: %w", err)
	}
	req := map[string]any{"token": tok}
	if since >= 0 {
		req["subs"] = map[string]any{streamChannel: map[string]any{"recover": true, "offset": since, "epoch": epoch}}
	}
	b, _ := json.Marshal(map[string]any{"id": 1, "connect": req})
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		conn.Close()
		return nil, "", err
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	_, b, err = conn.ReadMessage()
	now := time.Now()
	var reply struct {
		Connect *struct {
			Subs map[string]struct {
				Epoch        string `json:"epoch"`
				Recovered    bool   `json:"recovered"`
				Publications []struct {
					Offset json.Number `json:"offset"`
				} `json:"publications"`
			} `json:"subs"`
		} `json:"connect"`
	}
	if err == nil {
		err = json.Unmarshal(b, &reply)
	}
	if err != nil || reply.Connect == nil {
		conn.Close()
		return nil, "", fmt.Errorf("centrifugo connect reply: %v %.300q", err, b)
	}
	sub, ok := reply.Connect.Subs[streamChannel]
	if !ok {
		conn.Close()
		return nil, "", fmt.Errorf("centrifugo connect reply without the channel: %.300q", b)
	}
	if since >= 0 && !sub.Recovered {
		conn.Close()
		return nil, "", fmt.Errorf("centrifugo did not recover the channel from offset %d: %.300q", since, b)
	}
	_ = conn.SetReadDeadline(time.Time{})
	cl := &client{conn: conn, lat: newHist(), done: make(chan struct{}), first: -1, pong: true, seqKey: offsetKey}
	for _, p := range sub.Publications {
		if off, err := strconv.ParseInt(string(p.Offset), 10, 64); err == nil {
			cl.record(off, now)
		}
	}
	go cl.read()
	return cl, sub.Epoch, nil
}
