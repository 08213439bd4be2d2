package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/outbox"
)

// benchTopic marks the benchmark's events.
const benchTopic = "bench_event"

// arrivals counts every event and notification frame any client receives,
// so that waiting for a broadcast to reach all clients costs one atomic
// load per poll instead of a pass over 10,000 clients.
var arrivals atomic.Int64

// waitArrivals waits until k frames arrived after base, or limit passes.
func waitArrivals(base, k int64, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for arrivals.Load()-base < k && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// client is one WebSocket connection recording what it receives.
type client struct {
	conn *websocket.Conn
	lat  *hist

	mu       sync.Mutex
	last     int64
	distinct int64
	dups     int64
	gaps     int64        // times a seq skipped ahead (an event missed)
	notes    int64        // notification frames (test broadcasts)
	frames   atomic.Int64 // WebSocket messages received (one may carry several events)
	lastAt   time.Time
	closeErr error
	done     chan struct{}
	first    int64
	// seen marks the seqs received (a bitset), so that an event arriving
	// after a higher seq (out of order) is told from a duplicate.
	seen       []uint64
	inversions int64
	// pong: the peer's protocol — several messages per frame, separated by
	// newlines, and an empty-object ping the client answers.
	pong bool
	// seqKey, if set, names the field that numbers events (the stream
	// broker's publication offset); else "seq".
	seqKey []byte
	// split: outboxd's batch=1 — several envelopes per frame, one per line.
	split bool
}

// batchFrames makes outboxd's clients connect with batch=1 (-frames batch,
// the default; what the browser client and outboxd tail do).
var batchFrames = true

// mark records seq and reports whether it is new.
func (c *client) mark(seq int64) bool {
	if seq < 0 {
		return true
	}
	w := int(seq / 64)
	for len(c.seen) <= w {
		c.seen = append(c.seen, 0)
	}
	bit := uint64(1) << (seq % 64)
	if c.seen[w]&bit != 0 {
		return false
	}
	c.seen[w] |= bit
	return true
}

var (
	seqKey = []byte(`"seq":`)
	tKey   = []byte(`"t":`)
)

// parseInt reads the integer after key in b (the frames are ours: no need
// to decode the whole JSON per message on a loaded 2-core machine).
func parseInt(b, key []byte) (int64, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	b = bytes.TrimLeft(b[i+len(key):], " ") // jsonb prints "key": value
	j := 0
	for j < len(b) && (b[j] == '-' || (b[j] >= '0' && b[j] <= '9')) {
		j++
	}
	n, err := strconv.ParseInt(string(b[:j]), 10, 64)
	return n, err == nil
}

func dialClient(ctx context.Context, wsURL, token string, since int64) (*client, error) {
	u := wsURL + "?token=" + url.QueryEscape(token)
	if since >= 0 {
		u += "&since=" + strconv.FormatInt(since, 10)
	}
	if batchFrames {
		u += "&batch=1"
	}
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 16 << 10}
	conn, resp, err := d.DialContext(ctx, u, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial: %w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	c := &client{conn: conn, lat: newHist(), done: make(chan struct{}), first: -1, split: batchFrames}
	// The welcome frame comes first.
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, b, err := conn.ReadMessage()
	if err != nil || !bytes.Contains(b, []byte(`"welcome"`)) {
		conn.Close()
		return nil, fmt.Errorf("no welcome frame: %v %q", err, b)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go c.read()
	return c, nil
}

func (c *client) read() {
	defer close(c.done)
	for {
		_, b, err := c.conn.ReadMessage()
		now := time.Now()
		c.frames.Add(1)
		if err != nil {
			c.mu.Lock()
			c.closeErr = err
			c.mu.Unlock()
			return
		}
		if !c.pong && !c.split {
			c.frame(b, now)
			continue
		}
		for _, m := range bytes.Split(b, []byte("\n")) {
			if c.pong && bytes.Equal(bytes.TrimSpace(m), []byte("{}")) { // the peer's ping
				_ = c.conn.WriteMessage(websocket.TextMessage, []byte("{}"))
				continue
			}
			c.frame(m, now)
		}
	}
}

// frame records one message received at now.
func (c *client) frame(b []byte, now time.Time) {
	key := seqKey
	if c.seqKey != nil {
		key = c.seqKey
	}
	seq, ok := parseInt(b, key)
	if !ok {
		if bytes.Contains(b, []byte(`"notification"`)) {
			arrivals.Add(1)
			c.mu.Lock()
			c.notes++
			c.lastAt = now
			c.mu.Unlock()
		}
		return
	}
	if t, ok := parseInt(b, tKey); ok {
		c.lat.record(now.Sub(time.Unix(0, t)))
	}
	c.record(seq, now)
}

// record counts event seq received at now: new, duplicate, gap or out of
// order.
func (c *client) record(seq int64, now time.Time) {
	arrivals.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	fresh := c.mark(seq)
	switch {
	case !fresh:
		c.dups++
	case c.first < 0:
		c.first, c.last, c.distinct = seq, seq, 1
	case seq < c.last:
		c.inversions++ // a new event after a higher seq: out of order
		c.distinct++
	default:
		if seq != c.last+1 {
			c.gaps++
		}
		c.last = seq
		c.distinct++
	}
	c.lastAt = now
}

func (c *client) snapshot() (last, distinct, dups, gaps, notes int64, lastAt time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.distinct, c.dups, c.gaps, c.notes, c.lastAt
}

func (c *client) outOfOrder() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inversions
}

// connectClients opens n clients with dial in parallel (bounded).
func connectClients(ctx context.Context, dial func(ctx context.Context, i int) (*client, error), n int, progress func(int)) ([]*client, error) {
	out := make([]*client, n)
	var next atomic.Int64
	var done atomic.Int64
	var firstErr error
	var emu sync.Mutex
	var wg sync.WaitGroup
	for range min(n, 64) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				var err error
				if out[i], err = dial(ctx, i); err != nil {
					emu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("client %d: %w", i, err)
					}
					emu.Unlock()
					return
				}
				if progress != nil {
					progress(int(done.Add(1)))
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		closeClients(out)
		return nil, firstErr
	}
	return out, nil
}

func closeClients(cs []*client) {
	for _, c := range cs {
		if c != nil {
			_ = c.conn.Close()
		}
	}
}

// loadSpec is what the producers do.
type loadSpec struct {
	producers int
	rate      float64 // events/s in total; 0: as fast as possible
	batch     int     // events per transaction
	duration  time.Duration
	padBytes  int
	// insert writes one event in tx for a peer (nil: outbox.Emit).
	insert insertFunc
}

// produce runs the producers until the duration ends and returns how many
// events and transactions committed.
func produce(ctx context.Context, pool *pgxpool.Pool, spec loadSpec, committed *atomic.Int64) (txs int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, spec.duration)
	defer cancel()
	pad := strings.Repeat("x", spec.padBytes)
	var txCount atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, spec.producers)
	for p := range spec.producers {
		wg.Go(func() {
			var interval time.Duration
			if spec.rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(spec.batch) * float64(spec.producers) / spec.rate)
			}
			start := time.Now().Add(pacingOffset(p, spec.producers, interval))
			for k := 0; ; k++ {
				if interval > 0 {
					wait := time.Until(start.Add(time.Duration(k) * interval))
					if wait > 0 {
						select {
						case <-ctx.Done():
							return
						case <-time.After(wait):
						}
					}
				}
				if ctx.Err() != nil {
					return
				}
				n, err := produceOne(ctx, pool, spec, p, pad)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					errs <- err
					return
				}
				txCount.Add(1)
				committed.Add(int64(n))
			}
		})
	}
	wg.Wait()
	close(errs)
	return txCount.Load(), <-errs
}

// lockstepPacing starts every paced producer at the same instant (-pacing
// lockstep, as the earliest figures were taken): their transactions then arrive
// together, one per producer every interval. By default (staggered) producer
// p starts p/producers of an interval later, so the same rate arrives
// evenly, as an app's independent requests would.
var lockstepPacing = false

// pacingOffset is when producer p of n, paced at one transaction per
// interval, starts.
func pacingOffset(p, n int, interval time.Duration) time.Duration {
	if lockstepPacing || n < 1 {
		return 0
	}
	return interval * time.Duration(p) / time.Duration(n)
}

// produceOne commits one producer transaction and returns how many events
// it held: spec.batch with outbox.Emit/EmitBatch, or one through a peer's
// insert.
func produceOne(ctx context.Context, pool *pgxpool.Pool, spec loadSpec, p int, pad string) (int, error) {
	if spec.insert != nil { // a peer: its own outbox, one event per transaction
		return 1, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return spec.insert(ctx, tx, p, time.Now().UnixNano(), pad)
		})
	}
	return spec.batch, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// The insert time is taken inside the transaction, as for a peer:
		// the same latency definition for both.
		evs := make([]outbox.Event, spec.batch)
		for i := range evs {
			evs[i] = outbox.Event{Topic: benchTopic, Data: json.RawMessage(fmt.Sprintf(
				`{"t":%d,"p":%d,"pad":%q}`, time.Now().UnixNano(), p, pad)), Broadcast: true}
		}
		if len(evs) == 1 {
			_, err := outbox.Emit(ctx, tx, evs[0])
			return err
		}
		_, err := outbox.EmitBatch(ctx, tx, evs)
		return err
	})
}

// waitDelivered waits until every client's last seq reaches head, or
// nothing arrives for quiet.
func waitDelivered(cs []*client, head int64, quiet, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		all, newest := true, time.Time{}
		for _, c := range cs {
			last, _, _, _, _, at := c.snapshot()
			if last < head {
				all = false
			}
			if at.After(newest) {
				newest = at
			}
		}
		if all || (!newest.IsZero() && time.Since(newest) > quiet) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
