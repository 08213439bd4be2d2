package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
)

func runCLI(t *testing.T, db *dbtest.DB, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = []string{"DATABASE_URL=" + db.URL, "SECRET_KEY=" + testSecret}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("outboxd %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// outboxd tail receives what outboxd emit inserts, filtered by --topics,
// and resumes with since across a restart of the sidecar.
func TestTailReceivesEmitAcrossRestart(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := startOutboxd(t, db)

	tail := exec.Command(binary, "tail", "--url", "ws://"+p.Addr+"/ws/connect", "--sub", "u1", "--roles", "LEVEL_1",
		"--topics", "task_event,system_event", "--count", "2", "--duration", "60s")
	tail.Env = []string{"SECRET_KEY=" + testSecret}
	stdout, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var tailErr proctest.SyncBuffer
	tail.Stderr = &tailErr
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tail.Process.Kill(); _ = tail.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() map[string]any {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("tail ended early; stderr:\n%s", tailErr.String())
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("tail printed %q", l)
			}
			return m
		case <-time.After(20 * time.Second):
			t.Fatalf("tail printed nothing; stderr:\n%s", tailErr.String())
		}
		return nil
	}
	if m := next(); m["type"] != "welcome" {
		t.Fatalf("first line %v", m)
	}
	// --wait prints the seq the relay gave the event.
	if out := runCLI(t, db, "emit", "--topic", "task_event", "--data", `{"n":1}`, "--users", "u1", "--wait", "20s"); !strings.HasPrefix(out, "emitted id ") || !strings.Contains(out, " at seq 1\n") {
		t.Fatalf("emit --wait: %s", out)
	}
	if m := next(); m["type"] != "task_event" || m["seq"] != 1.0 {
		t.Fatalf("line %v", m)
	}
	// Stop the sidecar; an event commits while it is down; start another.
	_ = p.Signal(syscall.SIGTERM)
	_ = p.Wait()
	runCLI(t, db, "emit", "--topic", "efectivo_event", "--data", `{"n":2}`, "--roles", "LEVEL_1")
	runCLI(t, db, "emit", "--topic", "task_event", "--data", `{"n":0}`, "--users", "someone-else")
	p2 := startOutboxdAt(t, db, p.Addr)
	runCLI(t, db, "emit", "--topic", "system_event", "--data", `{"n":3}`, "--broadcast")
	_ = p2
	for _, want := range []struct {
		typ string
		seq float64
	}{{"system_event", 4}} { // efectivo_event #2 is outside the filter
		m := next()
		for m["type"] == "welcome" {
			m = next()
		}
		if m["type"] != want.typ || m["seq"] != want.seq {
			t.Fatalf("line %v, want %s seq %v", m, want.typ, want.seq)
		}
	}
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail exit: %v\n%s", err, tailErr.String())
	}
	if !strings.Contains(tailErr.String(), "reconnecting") {
		t.Fatalf("tail did not say it reconnected:\n%s", tailErr.String())
	}
}

func TestCLIHelpAndErrors(t *testing.T) {
	t.Parallel()
	for _, sub := range []string{"token", "emit", "tail"} {
		out, err := exec.Command(binary, sub, "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Usage: outboxd "+sub) {
			t.Fatalf("%s --help: %v\n%s", sub, err, out)
		}
	}
	out, err := exec.Command(binary, "emit", "--topic", "Bad Topic", "--broadcast").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "invalid event") {
		t.Fatalf("emit with a bad topic: %v %s", err, out)
	}
	out, err = exec.Command(binary, "tail", "--url", "ws://127.0.0.1:1/ws/connect", "--token", "x", "--duration", "1s").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "reconnecting") || !strings.Contains(string(out), "never connected to ws://127.0.0.1:1/ws/connect") {
		t.Fatalf("tail to nowhere: %v %s", err, out)
	}
	out, _ = exec.Command(binary, "nonsense").CombinedOutput()
	if !strings.Contains(string(out), `unknown command "nonsense"`) {
		t.Fatalf("unknown command: %s", out)
	}
}

// Empty targets never broadcast from the shell: --users "" --roles ""
// (an unset variable, typically) is refused and inserts nothing; no
// targets at all needs --broadcast; --broadcast with targets is refused.
func TestEmitEmptyTargetsNeverBroadcast(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	runCLI(t, db, "migrate", "up")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--users", "", "--roles", ""}, "would reach nobody"},
		{[]string{"--users", " , "}, "would reach nobody"},
		{[]string{"--roles", ""}, "would reach nobody"},
		{nil, "no targets"},
		{[]string{"--broadcast", "--users", "u1"}, "without --users and --roles"},
	} {
		cmd := exec.Command(binary, append([]string{"emit", "--topic", "task_event"}, c.args...)...)
		cmd.Env = []string{"DATABASE_URL=" + db.URL}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("emit %q: %v %s, want an error saying %q", c.args, err, out, c.want)
		}
	}
	if n := db.Int64(t, `SELECT count(*) FROM outbox.events`); n != 0 {
		t.Fatalf("%d rows inserted by refused emits", n)
	}
	// No relay runs on this database: --wait says so once its time is up,
	// and the event it inserted stays (accepted is never lost).
	cmd := exec.Command(binary, "emit", "--topic", "task_event", "--users", "u9", "--wait", "300ms")
	cmd.Env = []string{"DATABASE_URL=" + db.URL}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no seq after 300ms: is outboxd running") {
		t.Errorf("emit --wait without a relay: %v %s", err, out)
	}
	db.Exec(t, `DELETE FROM outbox.events`)
	runCLI(t, db, "emit", "--topic", "task_event", "--users", "u1", "--roles", "")
	runCLI(t, db, "emit", "--topic", "task_event", "--broadcast")
	var users, roles []string
	if err := db.Pool.QueryRow(t.Context(), `SELECT target_users, target_roles FROM outbox.events ORDER BY id LIMIT 1`).Scan(&users, &roles); err != nil {
		t.Fatal(err)
	}
	if len(users) != 1 || roles == nil || len(roles) != 0 {
		t.Fatalf("--users u1 --roles \"\": stored users %v roles %#v, want [u1] and an empty set", users, roles)
	}
	if n := db.Int64(t, `SELECT count(*) FROM outbox.events WHERE target_users IS NULL AND target_roles IS NULL`); n != 1 {
		t.Fatalf("%d broadcasts, want the one --broadcast", n)
	}
}

// outboxd tail with --token-command refreshes its token in band before it
// expires and is never cut; with a static --token it exits non-zero at
// 4001, which it cannot recover from.
func TestTailRefreshesInBand(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := startOutboxd(t, db)
	tokenCmd := binary + " token --sub op1 --roles LEVEL_1 --ttl 3s"
	tail := exec.Command(binary, "tail", "--url", "ws://"+p.Addr+"/ws/connect", "--token-command", tokenCmd, "--count", "1", "--duration", "30s")
	tail.Env = []string{"SECRET_KEY=" + testSecret, "PATH=/usr/bin:/bin"}
	var out, errOut proctest.SyncBuffer
	tail.Stdout, tail.Stderr = &out, &errOut
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tail.Process.Kill(); _ = tail.Wait() })
	// Three refreshes take the session past its first token's exp.
	eventually(t, 20*time.Second, func() bool { return strings.Count(out.String(), `"type":"refreshed"`) >= 3 },
		func() string { return "three refreshes: stdout " + out.String() + " stderr " + errOut.String() })
	runCLI(t, db, "emit", "--topic", "task_event", "--data", `{"n":1}`, "--roles", "LEVEL_1")
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail: %v\n%s", err, errOut.String())
	}
	if strings.Contains(errOut.String(), "reconnecting") || !strings.Contains(out.String(), `"type":"task_event"`) {
		t.Fatalf("tail reconnected or missed the event:\nstdout %s\nstderr %s", out.String(), errOut.String())
	}

	mintCmd := exec.Command(binary, "token", "--sub", "op1", "--ttl", "2s")
	mintCmd.Env = []string{"SECRET_KEY=" + testSecret}
	short, err := mintCmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	static := exec.Command(binary, "tail", "--url", "ws://"+p.Addr+"/ws/connect", "--token", strings.TrimSpace(string(short)), "--duration", "30s")
	static.Env = []string{"SECRET_KEY=" + testSecret}
	b, err := static.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "static token cannot recover") {
		t.Fatalf("tail with a static token at its exp: %v\n%s", err, b)
	}
}

// The CLI's paper cuts: --data from a file or stdin, malformed JSON with
// its position, a missing --topic named, extra arguments refused, an
// error said once, migrate --help.
func TestCLIInputErrors(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	run := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(binary, args...)
		cmd.Env = []string{"DATABASE_URL=" + db.URL}
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"emit", "--data", "{bad json", "--broadcast", "--topic", "x"}, "not valid JSON"},
		{[]string{"emit", "--data", `{"a":1`, "--broadcast", "--topic", "x"}, "at byte"},
		{[]string{"emit", "--broadcast"}, "--topic is required"},
		{[]string{"emit", "--topic", "x", "--broadcast", "extra"}, `unexpected argument "extra"`},
		{[]string{"emit", "--nope"}, "flag provided but not defined: -nope (see outboxd emit --help)"},
		{[]string{"migrate", "up", "extra"}, `unexpected argument "extra"`},
		{[]string{"migrate", "sideways"}, "unknown subcommand"},
	} {
		out, err := run("", c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%v: %v %q, want an error saying %q", c.args, err, out, c.want)
		}
		if strings.Count(out, c.want) > 1 {
			t.Errorf("%v: the error is said twice: %q", c.args, out)
		}
	}
	if out, err := run("", "migrate", "--help"); err != nil || !strings.Contains(out, "Usage: outboxd migrate") {
		t.Errorf("migrate --help: %v %s", err, out)
	}
	big := `{"note":"` + strings.Repeat("x", 200<<10) + `"}`
	file := t.TempDir() + "/payload.json"
	if err := os.WriteFile(file, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run("", "emit", "--topic", "task_event", "--data", "@"+file, "--users", "u1"); err != nil || !strings.Contains(out, "seq is assigned by the relay") {
		t.Fatalf("--data @file: %v %s", err, out)
	}
	if out, err := run(`{"from":"stdin"}`, "emit", "--topic", "task_event", "--data", "-", "--users", "u1"); err != nil {
		t.Fatalf("--data -: %v %s", err, out)
	}
	if n := db.Int64(t, `SELECT count(*) FROM outbox.events WHERE payload ? 'note' OR payload->>'from' = 'stdin'`); n != 2 {
		t.Fatalf("%d rows from @file and stdin, want 2", n)
	}
}

// outboxd health: 0 when the sidecar is ready, 1 with the reason when it
// does not answer 200 or does not answer at all.
func TestHealthSubcommand(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := startOutboxd(t, db)
	health := func(args ...string) (int, string) {
		cmd := exec.Command(binary, append([]string{"health"}, args...)...)
		cmd.Env = []string{"LISTEN_ADDR=" + p.Addr}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := health(); code != 0 || !strings.Contains(out, `"status":"ok"`) {
		t.Fatalf("health (from LISTEN_ADDR): %d %s", code, out)
	}
	if code, out := health("--url", "http://"+p.Addr+"/nothing-here"); code != 1 || !strings.Contains(out, "answered 404") {
		t.Fatalf("health on a 404: %d %s", code, out)
	}
	dead := proctest.FreeAddr(t)
	if code, out := health("--url", "http://"+dead+"/readyz"); code != 1 || !strings.Contains(out, "connection refused") {
		t.Fatalf("health against nothing: %d %s", code, out)
	}
	if code, out := health("--timeout", "0s"); code != 1 || !strings.Contains(out, "--timeout must be positive") {
		t.Fatalf("health --timeout 0s: %d %s", code, out)
	}
}
