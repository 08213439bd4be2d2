// Package wsclient follows an outboxd event stream the way a well-behaved
// client does: connect, read frames, and after any disconnect reconnect
// (optionally to another replica) with since=<last seq>, deduplicating by
// seq. The CLI's `outboxd tail` and the chaos tests' followers use it.
package wsclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// Frame is what Resumer hands to OnFrame: one envelope (Resumer connects
// with batch=1 and splits batched frames).
type Frame struct {
	Type string
	Seq  int64 // 0 for control frames
	Raw  []byte
	// Duplicate is true for an event at or below the last seq seen (it is
	// still passed on, for callers that count duplicates).
	Duplicate bool
}

// ErrStop, returned by OnFrame, ends Run without error.
var ErrStop = errors.New("wsclient: stop")

// ErrRefused is returned when outboxd refuses the connection with an HTTP
// 4xx (bad token, bad since, …): reconnecting would not help.
var ErrRefused = errors.New("connection refused by outboxd")

// Resumer follows the stream. Set the fields, then call Run.
type Resumer struct {
	// URLs of /ws/connect; each reconnect moves to the next one.
	URLs  []string
	Token string
	// TokenFunc, if set, gives the token for every connection instead of
	// Token, and a new one before the current expires, handed over in band
	// ({"type":"refresh"}) RefreshBefore its exp (default 30 s): the
	// session goes on. Without it a 4001 (token expired) ends Run, as a
	// static token cannot recover.
	TokenFunc     func(ctx context.Context) (string, error)
	RefreshBefore time.Duration
	// Since is the seq to resume after; negative means live only for the
	// first connection (later ones always resume).
	Since int64
	// OnFrame receives every frame; return ErrStop to end.
	OnFrame func(Frame) error
	// Backoff returns how long to wait before reconnect number attempt
	// after err; the default is 250 ms doubling to 5 s.
	Backoff func(attempt int, err error) time.Duration
	// HandshakeTimeout bounds each dial (default 5 s).
	HandshakeTimeout time.Duration
	// Epoch is the history Since belongs to (welcome.epoch, or
	// outbox.epoch() read with outbox.head()); "" skips the check on the
	// first connection. Later connections send the epoch of the last
	// welcome, so a restored or recreated database answers resync_required
	// instead of replaying other events under the same seqs.
	Epoch string
	// Topics is the topic filter (nil: every topic), sent on every
	// connection.
	Topics []string

	last    int64
	started bool
	// refreshed carries each refreshed frame's exp to refresh.
	refreshed chan int64
}

// refresh hands the server a new token RefreshBefore each exp, until ctx
// ends (the connection's).
func (r *Resumer) refresh(ctx context.Context, conn *websocket.Conn, exp int64) {
	before := r.RefreshBefore
	if before <= 0 {
		before = 30 * time.Second
	}
	for exp > 0 {
		wait := max(time.Until(time.Unix(exp, 0).Add(-before)), time.Second)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		tok, err := r.TokenFunc(ctx)
		if err != nil {
			return // the server closes at exp (4001): the reconnect asks again
		}
		msg, _ := json.Marshal(map[string]any{"type": "refresh", "data": map[string]string{"token": tok}})
		if err := conn.WriteMessage(websocket.TextMessage, msg); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case exp = <-r.refreshed:
		case <-time.After(30 * time.Second):
			return // no answer: the close at exp says what happened
		}
	}
}

// TokenExp reads a JWT's exp (unix seconds; 0 if none or unreadable),
// without verifying it: the server does that.
func TokenExp(token string) int64 {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return 0
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return 0
	}
	var c struct {
		Exp float64 `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil {
		return 0
	}
	return int64(c.Exp)
}

// Connected reports whether a connection was ever established.
func (r *Resumer) Connected() bool { return r.started }

// Last is the last seq received.
func (r *Resumer) Last() int64 { return r.last }

// LastEpoch is the epoch the last seq belongs to.
func (r *Resumer) LastEpoch() string { return r.Epoch }

// Run follows the stream until ctx ends (returning ctx.Err()), OnFrame
// returns ErrStop (nil) or an error, or outboxd refuses the connection.
func (r *Resumer) Run(ctx context.Context) error {
	if len(r.URLs) == 0 {
		return errors.New("wsclient: no URL")
	}
	r.last = r.Since
	for attempt := 0; ; attempt++ {
		err := r.once(ctx, r.URLs[attempt%len(r.URLs)])
		switch {
		case errors.Is(err, ErrStop):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrRefused), errors.Is(err, errCallback):
			return err
		}
		wait := r.backoff(attempt, err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

var errCallback = errors.New("wsclient: OnFrame failed")

// HandshakeError is an HTTP answer instead of an upgrade. A 4xx other than
// 429 is final (it matches ErrRefused); 429 and 5xx are worth a retry.
type HandshakeError struct {
	Status int
	Body   string
}

func (e *HandshakeError) Error() string { return fmt.Sprintf("HTTP %d %s", e.Status, e.Body) }

// Is makes a final refusal match ErrRefused.
func (e *HandshakeError) Is(target error) bool {
	return target == ErrRefused && e.Status >= 400 && e.Status < 500 && e.Status != http.StatusTooManyRequests
}

func (r *Resumer) backoff(attempt int, err error) time.Duration {
	if r.Backoff != nil {
		return r.Backoff(attempt, err)
	}
	return min(250*time.Millisecond<<min(attempt, 5), 5*time.Second)
}

func (r *Resumer) once(ctx context.Context, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: URL %q: %v", ErrRefused, raw, err)
	}
	q := u.Query()
	if r.last >= 0 && (r.started || r.Since >= 0) {
		q.Set("since", strconv.FormatInt(r.last, 10))
		if r.Epoch != "" {
			q.Set("epoch", r.Epoch)
		}
	}
	if r.Topics != nil {
		q.Set("topics", strings.Join(r.Topics, ","))
	}
	q.Set("batch", "1") // several events per frame, one per line

	u.RawQuery = q.Encode()
	token := r.Token
	if r.TokenFunc != nil {
		if token, err = r.TokenFunc(ctx); err != nil {
			return fmt.Errorf("token: %w", err)
		}
	}
	d := websocket.Dialer{HandshakeTimeout: r.HandshakeTimeout}
	if d.HandshakeTimeout == 0 {
		d.HandshakeTimeout = 5 * time.Second
	}
	conn, resp, err := d.DialContext(ctx, u.String(), http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			return &HandshakeError{Status: resp.StatusCode, Body: strings.TrimSpace(string(body))}
		}
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	r.started = true
	if r.TokenFunc != nil {
		r.refreshed = make(chan int64, 1)
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go r.refresh(rctx, conn, TokenExp(token))
	}
	for {
		_, b, err := conn.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) && ce.Code == 4001 && r.TokenFunc == nil {
			return fmt.Errorf("%w: token expired (4001): a static token cannot recover; give a token command", ErrRefused)
		}
		if err != nil {
			return err
		}
		for len(b) > 0 {
			line := b
			if i := bytes.IndexByte(b, '\n'); i >= 0 {
				line, b = b[:i], b[i+1:]
			} else {
				b = nil
			}
			if err := r.frame(line); err != nil {
				return err
			}
		}
	}
}

// frame handles one envelope.
func (r *Resumer) frame(b []byte) error {
	var f struct {
		Type string `json:"type"`
		Seq  int64  `json:"seq"`
		Data struct {
			HeadSeq int64  `json:"head_seq"`
			Epoch   string `json:"epoch"`
			Exp     int64  `json:"exp"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("bad frame %q: %w", b, err)
	}
	fr := Frame{Type: f.Type, Seq: f.Seq, Raw: b}
	switch {
	case f.Seq > 0 && f.Seq <= r.last:
		fr.Duplicate = true
	case f.Seq > 0:
		r.last = f.Seq
	case f.Type == "welcome":
		if r.last < 0 || (r.Epoch != "" && f.Data.Epoch != r.Epoch) {
			// Live from here; resume from here after a cut. In another
			// history the old seq means nothing (resync_required follows).
			r.last = f.Data.HeadSeq
		}
		r.Epoch = f.Data.Epoch
	case f.Type == "refreshed" && r.refreshed != nil:
		select {
		case r.refreshed <- f.Data.Exp:
		default:
		}
	}
	if r.OnFrame != nil {
		if err := r.OnFrame(fr); err != nil {
			if errors.Is(err, ErrStop) {
				return err
			}
			return fmt.Errorf("%w: %v", errCallback, err)
		}
	}
	return nil
}
