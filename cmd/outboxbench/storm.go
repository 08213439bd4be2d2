package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/wsclient"
	"github.com/grupogad/outboxd/ws"
)

// 9. Reconnect storm: a deploy behind a reverse proxy. n clients, all from
// 127.0.0.1 (as through a proxy), follow the stream; outboxd restarts with
// its SHIPPED defaults while events commit; every client reconnects the way
// the browser client (clients/js) does (at once after 1001, then jittered exponential
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

	// With PRESENCE=true (-env), 1 % of the clients hold the role
	// presence events go to (PRESENCE_ROLES=despacho): they follow every
	// user's presence besides the stream.
	withPresence := strings.Contains(","+e.o.extraEnv+",", ",PRESENCE=true,")
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fs := make([]*stormClient, n)
	var wg sync.WaitGroup
	for i := range fs {
		roles := []string{"bench"}
		if withPresence && i%100 == 0 {
			roles = append(roles, "despacho")
		}
		tok, err := ws.MintHS256(benchSecret, fmt.Sprintf("storm-%d", i), roles, time.Hour)
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
	var firstID int64
	if err := pool.QueryRow(ctx, `SELECT outbox.emit($1, '{}')`, benchTopic).Scan(&firstID); err != nil {
		stop()
		return r, err
	}
	firstSeq, err := seqOf(ctx, pool, firstID)
	if err == nil {
		err = waitAll(ctx, fs, firstSeq, time.Minute)
	}
	stop()
	if err != nil {
		return r, fmt.Errorf("first event: %w", err)
	}
	var presenceEvents int64
	if withPresence {
		// Every client's online event has been written (and the writes
		// counted below start after them).
		if err := waitPresence(ctx, pool, n); err != nil {
			return r, err
		}
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox.events WHERE topic = 'presence'`).Scan(&presenceEvents); err != nil {
			return r, err
		}
	}
	writesBefore, err := presenceWrites(ctx, pool)
	if err != nil {
		return r, err
	}

	sc.stop()
	var lastID int64
	if err := pool.QueryRow(ctx, `SELECT max(outbox.emit($1, jsonb_build_object('n', g))) FROM generate_series(1, $2) g`, benchTopic, missed).Scan(&lastID); err != nil {
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
	last, err := seqOf(ctx, pool, lastID)
	if err != nil {
		return r, err
	}
	stop = progress("resuming", 30*time.Second, func() string { return fmt.Sprintf("%d/%d resumed", countAt(fs, last), n) })
	err = waitAll(ctx, fs, last, time.Minute)
	stop()
	if err != nil {
		return r, fmt.Errorf("resuming: %w", err)
	}
	resumedIn := time.Since(restart)
	var done time.Time
	var lost, dups, gaps, busy, limited int64
	for _, f := range fs {
		f.mu.Lock()
		if f.lastAt.After(done) {
			done = f.lastAt
		}
		lost += (1 + missed) - f.distinct
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
	if withPresence {
		// What presence wrote from the restart on (the new replica's
		// sessions; the old one's rows stay until swept), per second of it.
		writesAfter, err := presenceWrites(ctx, pool)
		if err != nil {
			return r, err
		}
		r.add("presence_events_at_connect", float64(presenceEvents), "online events for the first connections")
		r.add("presence_rows_written", float64(writesAfter-writesBefore), "rows inserted, updated or deleted in outbox.presence_* (restart → resumed)")
		r.add("presence_row_writes_per_s", float64(writesAfter-writesBefore)/resumedIn.Seconds(), "rows/s over the storm")
	}
	r.Targets = []target{{Metric: "all_resumed", Op: "<=", Value: 10}, {Metric: "lost", Op: "<=", Value: 0}}
	return r, nil
}

// seqOf waits for event id to be sequenced and returns its seq.
func seqOf(ctx context.Context, pool *pgxpool.Pool, id int64) (int64, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		var seq *int64
		if err := pool.QueryRow(ctx, `SELECT seq FROM outbox.events WHERE id = $1`, id).Scan(&seq); err != nil {
			return 0, err
		}
		if seq != nil {
			return *seq, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("event %d not sequenced after a minute (is a sidecar running?)", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitPresence waits until n users are online in outbox.online_users.
func waitPresence(ctx context.Context, pool *pgxpool.Pool, n int) error {
	deadline := time.Now().Add(time.Minute)
	for {
		var k int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox.online_users`).Scan(&k); err != nil {
			return err
		}
		if k >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d users online after a minute", k, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// presenceWrites is the rows inserted, updated and deleted in the presence
// tables so far, by the statistics collector (flushed by each backend at
// most once a second: read it after a pause).
func presenceWrites(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	time.Sleep(1500 * time.Millisecond)
	var n int64
	err := pool.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
FROM pg_stat_user_tables WHERE schemaname = 'outbox' AND relname LIKE 'presence%'`).Scan(&n)
	return n, err
}

// stormClient follows the stream like the browser client (clients/js).
type stormClient struct {
	res *wsclient.Resumer

	mu       sync.Mutex
	last     int64 // last seq received
	lastN    int64 // the last storm event's number (payload n)
	distinct int64 // storm events received, each once
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
	// The browser client (clients/js): 500 ms doubling to 5 s, half of it jitter.
	ceiling := min(500*time.Millisecond<<min(attempt, 4), 5*time.Second)
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
	case f.Type != benchTopic:
		c.last = f.Seq // presence events, for the 1 % that get them
	default:
		// The storm's events are numbered in their payload (the first has
		// none): each must follow the one before. (Seqs alone cannot say:
		// the clients that get presence events see them in between.)
		var ev struct {
			Data struct {
				N int64 `json:"n"`
			} `json:"data"`
		}
		_ = json.Unmarshal(f.Raw, &ev)
		if ev.Data.N != c.lastN+1 && !(c.distinct == 0 && ev.Data.N == 0) {
			c.gaps++
		}
		c.lastN = ev.Data.N
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
