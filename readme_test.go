// Package readme tests the README: every shell command it shows runs as
// written, from the repository's root, against the real PostgreSQL.
package readme

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
)

// block is one fenced shell block of the README.
type block struct {
	line  int    // where it starts
	skip  string // the reason of a "<!-- readme-test: skip … -->" marker before it
	lines []string
}

var skipMarker = regexp.MustCompile(`^<!-- readme-test: skip — (.+) -->$`)

func readBlocks(t *testing.T, path string) []block {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks []block
		cur    *block
		skip   string
		n      int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		l := sc.Text()
		switch {
		case cur == nil && (l == "```sh" || l == "```bash" || l == "```shell"):
			cur = &block{line: n, skip: skip}
			skip = ""
		case cur != nil && l == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.lines = append(cur.lines, l)
		case strings.HasPrefix(l, "<!-- readme-test:"):
			m := skipMarker.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("%s:%d: a readme-test marker must read <!-- readme-test: skip — <reason> -->", path, n)
			}
			skip = m[1]
		case strings.TrimSpace(l) != "":
			skip = "" // a marker belongs to the block right after it
		}
	}
	return blocks
}

// command strips a line's trailing comment (outside quotes) and spaces.
func command(l string) string {
	var quote rune
	for i, r := range l {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote == 0 && (r == '\'' || r == '"'):
			quote = r
		case quote == 0 && r == '#' && (i == 0 || l[i-1] == ' '):
			return strings.TrimSpace(l[:i])
		}
	}
	return strings.TrimSpace(l)
}

// How the commands that do not end by themselves are run: a server in the
// background until every later block has run, a follower for a few
// seconds (it must have connected by then). The suite itself is not run
// from inside itself.
var (
	background = map[string]string{"make run": "http://127.0.0.1:8002/readyz"}
	followers  = map[string]string{
		"go run ./cmd/outboxd tail --sub op1 --roles LEVEL_1": `"type":"welcome"`,
		".venv/bin/python -m outboxd tail --roles LEVEL_1":    "tail: connected as cli",
	}
	itself = map[string]string{"make test": "it is the suite that runs this test"}
)

// TestReadmeCommands runs every command of README.md's shell blocks, in
// order, from the repository's root: each must exit 0 (a follower must
// connect). Blocks marked skip say why. The commands see DATABASE_URL and
// PGDATABASE of a fresh database, so that they change nothing else, and
// the sidecar they start listens on :8002 as the README says.
func TestReadmeCommands(t *testing.T) {
	blocks := readBlocks(t, "README.md")
	if len(blocks) < 3 {
		t.Fatalf("README.md has %d shell blocks: the parser is lost", len(blocks))
	}
	if ln, err := net.Listen("tcp", "127.0.0.1:8002"); err != nil {
		t.Fatalf("the README's sidecar listens on :8002, which is taken: %v", err)
	} else {
		ln.Close()
	}
	db := dbtest.NewEmpty(t) // make run migrates it, as on a fresh machine
	// A fresh machine's environment: none of outboxd's settings but the database.
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "SECRET_KEY" && k != "ENVIRONMENT" && k != "LISTEN_ADDR" && !strings.HasPrefix(k, "PG") {
			env = append(env, kv)
		}
	}
	env = append(env, "DATABASE_URL="+db.URL, "PGDATABASE="+db.Name)
	seen := map[string]bool{}
	for _, b := range blocks {
		if b.skip != "" {
			t.Logf("README.md:%d skipped: %s", b.line, b.skip)
			continue
		}
		for i, l := range b.lines {
			cmd := command(l)
			if cmd == "" {
				continue
			}
			seen[cmd] = true
			where := fmt.Sprintf("README.md:%d %q", b.line+1+i, cmd)
			switch {
			case itself[cmd] != "":
				t.Logf("%s not run: %s", where, itself[cmd])
			case background[cmd] != "":
				startBackground(t, where, cmd, background[cmd], env) // runs on, as in its own terminal, to the end
			case followers[cmd] != "":
				runFollower(t, where, cmd, followers[cmd], env)
			default:
				run(t, where, cmd, env)
			}
		}
	}
	for _, table := range []map[string]string{background, followers, itself} {
		for cmd := range table {
			if !seen[cmd] {
				t.Errorf("%q is handled here but no longer in README.md: update the table", cmd)
			}
		}
	}
}

func shell(ctx context.Context, cmd string, env []string) *exec.Cmd {
	c := exec.CommandContext(ctx, "bash", "-c", cmd)
	c.Env = env
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // go run's child goes with it
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	return c
}

func run(t *testing.T, where, cmd string, env []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := shell(ctx, cmd, env).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", where, err, out)
	}
}

func startBackground(t *testing.T, where, cmd, ready string, env []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var log proctest.SyncBuffer
	c := shell(ctx, cmd, env)
	c.Stdout, c.Stderr = &log, &log
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cancel()
				<-exited
			}
			cancel()
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(3 * time.Minute) // go run may compile first
	for {
		select {
		case err := <-exited:
			exited <- err // for stop
			t.Fatalf("%s exited: %v\n%s", where, err, &log)
		default:
		}
		if resp, err := http.Get(ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready at %s\n%s", where, ready, &log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runFollower runs cmd until its output shows want (it connected), then
// stops it; it must not have exited before.
func runFollower(t *testing.T, where, cmd, want string, env []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out proctest.SyncBuffer
	c := shell(ctx, cmd, env)
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	deadline := time.After(3 * time.Minute)
	for !strings.Contains(out.String(), want) {
		select {
		case err := <-exited:
			t.Fatalf("%s exited before it showed %q: %v\n%s", where, want, err, &out)
		case <-deadline:
			t.Fatalf("%s never showed %q\n%s", where, want, &out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	<-exited
}
