package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/wsclient"
	"github.com/grupogad/outboxd/ws"
)

// 9. Reconnect storm: a deploy behind a reverse proxy. n clients, all from
// 127.0.0.1 (as through a proxy), follow the stream; outboxd restarts with
// its SHIPPED defaults while events commit; every client reconnects the way
// outboxd-client.js does (at once after 1001, then jittered exponential
// backoff) with since and epoch. Reported: the time from the restart until
// every client has resumed and received the last event, refusals by HTTP
// status, and what was lost, repeated or reordered.
func reconnectStorm(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	n := e.n(5000)
	const missed = 100 // events committed while outboxd is down
	pool, err := e.freshDB(ctx)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	sc, err := e.startSidecar(ctx)
	if err != nil {
		return r, err
	}
	addr := sc.addr
	sc.stop() // the address is known; from here on outboxd runs as shipped
	if sc, err = e.startSidecarAt(ctx, addr, true); err != nil {
		return r, err
	}
	defer func() { sc.stop() }()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fs := make([]*stormClient, n)
	var wg sync.WaitGroup
	for i := range fs {
		tok, err := ws.MintHS256(benchSecret, fmt.Sprintf("storm-%d", i), []string{"bench"}, time.Hour)
		if err != nil {
			return r, err
		}
		fs[i] = newStormClient("ws://"+addr+"/ws/connect", tok)
		wg.Go(func() { fs[i].run(ctx) })
		if i%50 == 49 { // a steady ramp: connecting is not what is measured
			time.Sleep(5 * time.Millisecond)
		}
	}
	defer wg.Wait()
	defer cancel()
	stop := progress("connecting", 60*time.Second, func() string { return fmt.Sprintf("%d/%d", countAt(fs, 0), n) })
	if err := waitAll(ctx, fs, 0, 2*time.Minute); err != nil {
		stop()
		return r, fmt.Errorf("connecting: %w", err)
	}
	first, err := head(ctx, pool)
	if err != nil {
		stop()
		return r, err
	}
	if _, err := pool.Exec(ctx, `SELECT outbox.emit($1, '{}')`, benchTopic); err != nil {
		stop()
		return r, err
	}
	err = waitAll(ctx, fs, first+1, time.Minute)
	stop()
	if err != nil {
		return r, fmt.Errorf("first event: %w", err)
	}

	sc.stop()
	if _, err := pool.Exec(ctx, `SELECT outbox.emit($1, jsonb_build_object('n', g)) FROM generate_series(1, $2) g`, benchTopic, missed); err != nil {
		return r, err
	}
	for _, f := range fs {
		f.busy.Store(0)
		f.limited.Store(0)
	}
	restart := time.Now()
	if sc, err = e.startSidecarAt(ctx, addr, true); err != nil {
		return r, err
	}
	last := first + 1 + missed
	stop = progress("resuming", 30*time.Second, func() string { return fmt.Sprintf("%d/%d resumed", countAt(fs, last), n) })
	err = waitAll(ctx, fs, last, time.Minute)
	stop()
	if err != nil {
		return r, fmt.Errorf("resuming: %w", err)
	}
	var done time.Time
	var lost, dups, gaps, busy, limited int64
	for _, f := range fs {
		f.mu.Lock()
		if f.lastAt.After(done) {
			done = f.lastAt
		}
		lost += (last - first) - f.distinct
		dups += f.dups
		gaps += f.gaps
		f.mu.Unlock()
		busy += f.busy.Load()
		limited += f.limited.Load()
	}
	r.add("clients", float64(n), "connections from one address")
	r.add("events_missed", missed, "events committed while down")
	r.add("all_resumed", done.Sub(restart).Seconds(), "s (restart → every client has the last event)")
	r.add("refused_busy", float64(busy), "HTTP 503 (handshakes in flight)")
	r.add("refused_rate", float64(limited), "HTTP 429")
	r.add("lost", float64(lost), "events")
	r.add("duplicated", float64(dups), "events")
	r.add("out_of_order", float64(gaps), "gaps")
	r.Targets = []target{{Metric: "all_resumed", Op: "<=", Value: 10}, {Metric: "lost", Op: "<=", Value: 0}}
	return r, nil
}

// stormClient follows the stream like outboxd-client.js.
type stormClient struct {
	res *wsclient.Resumer

	mu       sync.Mutex
	last     int64 // last seq received
	distinct int64
	dups     int64
	gaps     int64
	lastAt   time.Time
	started  bool

	busy, limited atomic.Int64
}

func newStormClient(url, token string) *stormClient {
	c := &stormClient{}
	c.res = &wsclient.Resumer{URLs: []string{url}, Token: token, Since: -1, HandshakeTimeout: 30 * time.Second}
	c.res.Backoff = c.backoff
	c.res.OnFrame = c.onFrame
	return c
}

func (c *stormClient) run(ctx context.Context) { _ = c.res.Run(ctx) }

func (c *stormClient) backoff(attempt int, err error) time.Duration {
	var ce *websocket.CloseError
	if errors.As(err, &ce) && (ce.Code == 1001 || ce.Code == 4008 || ce.Code == 1012) {
		return 0
	}
	var he *wsclient.HandshakeError
	if errors.As(err, &he) {
		switch he.Status {
		case http.StatusServiceUnavailable:
			c.busy.Add(1)
		case http.StatusTooManyRequests:
			c.limited.Add(1)
		}
	}
	// The browser client: 500 ms doubling to 15 s, half of it jitter.
	ceiling := min(500*time.Millisecond<<min(attempt, 5), 15*time.Second)
	return ceiling/2 + rand.N(ceiling/2+1)
}

func (c *stormClient) onFrame(f wsclient.Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case f.Type == "welcome":
		if !c.started {
			var w struct {
				Data ws.WelcomeData `json:"data"`
			}
			if json.Unmarshal(f.Raw, &w) == nil {
				c.last, c.started = w.Data.HeadSeq, true
				c.lastAt = time.Now()
			}
		}
	case f.Seq == 0:
	case f.Duplicate:
		c.dups++
	default:
		if f.Seq != c.last+1 {
			c.gaps++
		}
		c.last = f.Seq
		c.distinct++
		c.lastAt = time.Now()
	}
	return nil
}

func (c *stormClient) at(seq int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started && c.last >= seq
}

func countAt(fs []*stormClient, seq int64) int {
	k := 0
	for _, f := range fs {
		if f.at(seq) {
			k++
		}
	}
	return k
}

func waitAll(ctx context.Context, fs []*stormClient, seq int64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for countAt(fs, seq) < len(fs) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d clients at seq %d after %s", countAt(fs, seq), len(fs), seq, limit)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
