package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/ws"
)

// splitList parses a comma list; empty means none.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: outboxd %s [flags]\n\n%s\n\nFlags:\n", name, usage)
		fs.PrintDefaults()
	}
	return fs
}

// cmdToken mints a development token signed with SECRET_KEY.
func cmdToken(cfg Config, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token", "Mint an HS256 token signed with SECRET_KEY (the development key when unset).", stderr)
	sub := fs.String("sub", "dev-user", "user id (JWT sub)")
	roles := fs.String("roles", "", "comma list of roles (JWT role / roles)")
	ttl := fs.Duration("ttl", time.Hour, "validity")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sub == "" || *ttl <= 0 {
		return errors.New("--sub must be non-empty and --ttl positive")
	}
	secret := cfg.SecretKey
	if secret == "" {
		if cfg.Production() {
			return errors.New("SECRET_KEY is not set")
		}
		secret = DevSecretKey
	}
	tok, err := ws.MintHS256(secret, *sub, splitList(*roles), *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// cmdEmit inserts one event from the shell.
func cmdEmit(ctx context.Context, cfg Config, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("emit", "Insert one event into outbox.events (as outbox.Emit would, in its own transaction).", stderr)
	topic := fs.String("topic", "", "event type, e.g. task_event (required)")
	data := fs.String("data", "{}", "payload: a JSON object")
	users := fs.String("users", "", "comma list of target user ids")
	roles := fs.String("roles", "", "comma list of target roles (users and roles empty: everyone)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pool, err := newPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	id, err := outbox.Emit(ctx, pool, outbox.Event{
		Topic: *topic, Data: json.RawMessage(*data), Users: splitList(*users), Roles: splitList(*roles),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "emitted id %d\n", id)
	return nil
}

// cmdTail connects to an outboxd and prints every frame as a JSON line,
// reconnecting with since= after a disconnect.
func cmdTail(ctx context.Context, cfg Config, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", "Connect to outboxd, print every frame as a JSON line; reconnects with since= after a disconnect.", stderr)
	addr := fs.String("url", "ws://127.0.0.1:8002/ws/connect", "WebSocket URL of /ws/connect")
	token := fs.String("token", "", "JWT (default: mint one from SECRET_KEY for --sub/--roles)")
	sub := fs.String("sub", "cli", "user id for a minted token")
	roles := fs.String("roles", "", "comma list of roles for a minted token")
	since := fs.Int64("since", -1, "resume after this seq (-1: live only)")
	count := fs.Int("count", 0, "exit after this many events (0: no limit)")
	duration := fs.Duration("duration", 0, "exit after this long (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token == "" {
		secret := cfg.SecretKey
		if secret == "" {
			secret = DevSecretKey
		}
		t, err := ws.MintHS256(secret, *sub, splitList(*roles), 24*time.Hour)
		if err != nil {
			return err
		}
		*token = t
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	t := &tailer{url: *addr, token: *token, since: *since, count: *count, out: stdout, log: stderr}
	err := t.run(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

type tailer struct {
	url, token string
	since      int64
	count      int
	seen       int
	out, log   io.Writer
}

var errDone = errors.New("done")

func (t *tailer) run(ctx context.Context) error {
	wait := 250 * time.Millisecond
	for {
		err := t.once(ctx)
		if errors.Is(err, errDone) {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) && ce.Code == 4001 {
			return fmt.Errorf("token expired: %w", err)
		}
		if errors.Is(err, errRefused) {
			return err
		}
		fmt.Fprintf(t.log, "tail: %v; reconnecting in %s with since=%d\n", err, wait, t.since)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

var errRefused = errors.New("connection refused by outboxd")

func (t *tailer) once(ctx context.Context) error {
	u, err := url.Parse(t.url)
	if err != nil {
		return fmt.Errorf("--url: %w", err)
	}
	q := u.Query()
	if t.since >= 0 {
		q.Set("since", strconv.FormatInt(t.since, 10))
	}
	u.RawQuery = q.Encode()
	h := http.Header{"Authorization": {"Bearer " + t.token}}
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, u.String(), h)
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 && resp.StatusCode < 500 {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			return fmt.Errorf("%w: HTTP %d %s", errRefused, resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		var f struct {
			Type string `json:"type"`
			Seq  int64  `json:"seq"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			return fmt.Errorf("bad frame: %w", err)
		}
		if f.Seq > 0 {
			if f.Seq <= t.since {
				continue // dedupe by seq
			}
			t.since = f.Seq
		} else if f.Type == ws.TypeWelcome && t.since < 0 {
			var w struct {
				Data ws.WelcomeData `json:"data"`
			}
			if json.Unmarshal(b, &w) == nil {
				t.since = w.Data.HeadSeq
			}
		}
		if _, err := fmt.Fprintf(t.out, "%s\n", b); err != nil {
			return err
		}
		if f.Seq > 0 {
			t.seen++
			if t.count > 0 && t.seen >= t.count {
				return errDone
			}
		}
	}
}
