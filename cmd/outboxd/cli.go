package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/grupogad/outboxd/internal/wsclient"
	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/server"
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
	secret, _ := cfg.SigningKey()
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
	users := fs.String("users", "", "comma list of target user ids (a union with --roles)")
	roles := fs.String("roles", "", "comma list of target roles (a union with --users)")
	broadcast := fs.Bool("broadcast", false, "send to every client (instead of --users/--roles)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	targeted := given["users"] || given["roles"]
	ul, rl := splitList(*users), splitList(*roles)
	switch {
	case *broadcast && targeted:
		return errors.New("--broadcast sends to everyone: give it without --users and --roles")
	case !*broadcast && !targeted:
		return errors.New("no targets: give --users and/or --roles, or --broadcast to send to every client")
	case targeted && len(ul) == 0 && len(rl) == 0:
		// The libraries' rule: an empty list reaches nobody. From the
		// shell that is a mistake (an unset variable), never a broadcast.
		return errors.New("--users and --roles are empty: the event would reach nobody; name targets, or pass --broadcast to send to every client")
	}
	pool, err := server.NewPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	id, err := outbox.Emit(ctx, pool, outbox.Event{
		Topic: *topic, Data: json.RawMessage(*data), Users: targets(given["users"], ul), Roles: targets(given["roles"], rl),
		Broadcast: *broadcast,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "emitted id %d\n", id)
	return nil
}

// targets is a flag's list as the producer library takes it: nil (SQL
// NULL, no such target) when the flag was not given, else the list, empty
// or not (an empty array reaches nobody).
func targets(given bool, list []string) []string {
	if !given {
		return nil
	}
	if list == nil {
		return []string{}
	}
	return list
}

// cmdTail connects to an outboxd and prints every frame as a JSON line,
// reconnecting with since= after a disconnect.
func cmdTail(ctx context.Context, cfg Config, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", "Connect to outboxd, print every frame as a JSON line; reconnects with since= after a disconnect.", stderr)
	addr := fs.String("url", "ws://127.0.0.1:8002/ws/connect", "WebSocket URL of /ws/connect")
	token := fs.String("token", "", "JWT (default: mint one from SECRET_KEY for --sub/--roles)")
	tokenCmd := fs.String("token-command", "", "shell command that prints a fresh JWT: run for every connection and before each token expires (refreshed in band)")
	sub := fs.String("sub", "cli", "user id for a minted token")
	roles := fs.String("roles", "", "comma list of roles for a minted token")
	since := fs.Int64("since", -1, "resume after this seq (-1: live only)")
	epoch := fs.String("epoch", "", "the history --since belongs to (welcome.epoch or outbox.epoch()); another one gets resync_required")
	topics := fs.String("topics", "", "comma list of topics to receive (default: every topic)")
	count := fs.Int("count", 0, "exit after this many events (0: no limit)")
	duration := fs.Duration("duration", 0, "exit after this long (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token != "" && *tokenCmd != "" {
		return errors.New("give --token or --token-command, not both")
	}
	var mint func(context.Context) (string, error)
	if *token == "" && *tokenCmd == "" {
		// No token given: mint one from SECRET_KEY for every connection,
		// and a new one before each expires (refreshed in band).
		secret, _ := cfg.SigningKey()
		if _, err := ws.MintHS256(secret, *sub, splitList(*roles), time.Hour); err != nil {
			return err
		}
		mint = func(context.Context) (string, error) { return ws.MintHS256(secret, *sub, splitList(*roles), time.Hour) }
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	seen := 0
	r := &wsclient.Resumer{URLs: []string{*addr}, Token: *token, Since: *since, Epoch: *epoch, Topics: splitList(*topics)}
	r.TokenFunc = mint
	if *tokenCmd != "" {
		r.TokenFunc = func(ctx context.Context) (string, error) {
			out, err := exec.CommandContext(ctx, "sh", "-c", *tokenCmd).Output()
			if err != nil {
				return "", fmt.Errorf("--token-command: %w", err)
			}
			return strings.TrimSpace(string(out)), nil
		}
	}
	r.OnFrame = func(f wsclient.Frame) error {
		if f.Duplicate {
			return nil // dedupe by seq
		}
		if _, err := fmt.Fprintf(stdout, "%s\n", f.Raw); err != nil {
			return err
		}
		if f.Seq > 0 {
			seen++
			if *count > 0 && seen >= *count {
				return wsclient.ErrStop
			}
		}
		return nil
	}
	r.Backoff = func(attempt int, err error) time.Duration {
		wait := min(250*time.Millisecond<<min(attempt, 5), 5*time.Second)
		fmt.Fprintf(stderr, "tail: %v; reconnecting in %s with since=%d epoch=%s\n", err, wait, r.Last(), r.LastEpoch())
		return wait
	}
	err := r.Run(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
