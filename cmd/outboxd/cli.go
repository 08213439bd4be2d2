package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

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
	// The flag package's own messages are silenced: parseFlags reports an
	// error once, and prints the usage only when asked (--help).
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: outboxd %s [flags]\n\n%s\n\nFlags:\n", name, usage)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parseFlags parses args: --help prints the usage (flag.ErrHelp, exit 0);
// a bad flag or an argument that is not a flag is one error that names it.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return err
		}
		return fmt.Errorf("%v (see outboxd %s --help)", err, fs.Name())
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: every option is a flag (see outboxd %s --help)", fs.Arg(0), fs.Name())
	}
	return nil
}

// readData is --data: a JSON object given inline, from a file (@path) or
// from standard input (-), checked as JSON with the parser's position.
func readData(arg string, stdin io.Reader) (json.RawMessage, error) {
	var b []byte
	var err error
	switch {
	case arg == "-":
		b, err = io.ReadAll(io.LimitReader(stdin, 2*outbox.MaxPayloadBytes))
	case strings.HasPrefix(arg, "@"):
		b, err = os.ReadFile(arg[1:])
	default:
		b = []byte(arg)
	}
	if err != nil {
		return nil, fmt.Errorf("--data: %w", err)
	}
	if !json.Valid(b) {
		var v any
		err := json.Unmarshal(b, &v)
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("--data is not valid JSON: %v at byte %d", se, se.Offset)
		}
		return nil, fmt.Errorf("--data is not valid JSON: %v", err)
	}
	return b, nil
}

// cmdToken mints a development token signed with SECRET_KEY.
func cmdToken(cfg Config, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token", "Mint an HS256 token signed with SECRET_KEY (the development key when unset).", stderr)
	sub := fs.String("sub", "dev-user", "user id (JWT sub)")
	roles := fs.String("roles", "", "comma list of roles (JWT role / roles)")
	ttl := fs.Duration("ttl", time.Hour, "validity")
	if err := parseFlags(fs, args); err != nil {
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
func cmdEmit(ctx context.Context, cfg Config, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("emit", "Insert one event into outbox.events (as outbox.Emit would, in its own transaction).", stderr)
	topic := fs.String("topic", "", "event type, e.g. task_event (required)")
	data := fs.String("data", "{}", "payload: a JSON object, @file to read it from a file, or - for standard input")
	users := fs.String("users", "", "comma list of target user ids (a union with --roles)")
	roles := fs.String("roles", "", "comma list of target roles (a union with --users)")
	broadcast := fs.Bool("broadcast", false, "send to every client (instead of --users/--roles)")
	wait := fs.Duration("wait", 0, "wait up to this long for the relay to sequence the event, and print its seq (e.g. 10s; 0: do not wait)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *wait < 0 {
		return errors.New("--wait must not be negative")
	}
	if *topic == "" {
		return errors.New("--topic is required (the event type, e.g. task_event)")
	}
	payload, err := readData(*data, stdin)
	if err != nil {
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
		Topic: *topic, Data: payload, Users: targets(given["users"], ul), Roles: targets(given["roles"], rl),
		Broadcast: *broadcast,
	})
	if err != nil {
		return err
	}
	if *wait == 0 {
		fmt.Fprintf(stdout, "emitted id %d (its seq is assigned by the relay when it sequences the row; --wait prints it)\n", id)
		return nil
	}
	seq, err := waitForSeq(ctx, pool, id, *wait)
	if err != nil {
		return fmt.Errorf("emitted id %d, but %w", id, err)
	}
	fmt.Fprintf(stdout, "emitted id %d at seq %d\n", id, seq)
	return nil
}

// waitForSeq polls the row until the relay has given it a seq, for at most d.
func waitForSeq(ctx context.Context, pool *pgxpool.Pool, id int64, d time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var seq *int64
		if err := pool.QueryRow(ctx, `SELECT seq FROM outbox.events WHERE id = $1`, id).Scan(&seq); err != nil && ctx.Err() == nil {
			return 0, err
		}
		if seq != nil {
			return *seq, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no seq after %s: is outboxd running on this database? (the relay assigns it)", d)
		case <-tick.C:
		}
	}
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
	if err := parseFlags(fs, args); err != nil {
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
	var lastErr error
	r.Backoff = func(attempt int, err error) time.Duration {
		lastErr = err
		wait := min(250*time.Millisecond<<min(attempt, 5), 5*time.Second)
		fmt.Fprintf(stderr, "tail: %v; reconnecting in %s with since=%d epoch=%s\n", err, wait, r.Last(), r.LastEpoch())
		return wait
	}
	err := r.Run(ctx)
	if !r.Connected() && (err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		return fmt.Errorf("never connected to %s: %v", *addr, lastErr)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// cmdHealth asks a running outboxd's /readyz (or /healthz) and exits 0 on
// 200: a container health check for images without a shell or curl.
func cmdHealth(ctx context.Context, cfg Config, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("health", "Exit 0 when a running outboxd answers 200 on /readyz (a container health check; distroless has no curl).", stderr)
	def := "http://" + localAddr(cfg.ListenAddr) + "/readyz"
	if cfg.AdminAddr != "" {
		def = "http://" + localAddr(cfg.AdminAddr) + "/readyz" // with the checks named
	}
	target := fs.String("url", def, "the readiness URL (/healthz for liveness)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *timeout <= 0 {
		return errors.New("--timeout must be positive")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *target, nil)
	if err != nil {
		return fmt.Errorf("--url: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %d: %s", *target, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(stdout, "%s: %s\n", *target, strings.TrimSpace(string(body)))
	return nil
}

// localAddr turns a listen address (":8002", "0.0.0.0:8002") into one to dial.
func localAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
