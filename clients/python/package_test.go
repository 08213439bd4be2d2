// Package pythonclient holds the Go side of the Python package's tests:
// it installs clients/python into a virtualenv on Debian's python3 and
// drives it against the real PostgreSQL and a real outboxd.
package pythonclient

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/internal/pyvenv"
	"github.com/grupogad/outboxd/ws"
)

var binary string

func TestMain(m *testing.M) { os.Exit(proctest.RunWithBinary(m, &binary)) }

// TestInstallsFromPyproject installs the package as a user does — pip,
// --no-build-isolation (Debian's setuptools builds it), nothing from PyPI —
// into a fresh virtualenv, and checks what the wheel carries: the typed
// marker and the module entry point.
func TestInstallsFromPyproject(t *testing.T) {
	t.Parallel()
	venv := filepath.Join(t.TempDir(), "venv")
	src := t.TempDir()
	if out, err := exec.Command("cp", "-r", "pyproject.toml", "README.md", "src", src).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"/usr/bin/python3", "-m", "venv", "--system-site-packages", venv},
		{filepath.Join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-build-isolation", "--no-index", "--no-deps", src},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	py := filepath.Join(venv, "bin", "python")
	out, err := exec.Command(py, "-c", `import os, outboxd, outboxd.orm, outboxd.consumer, outboxd.fastapi, outboxd.tokens
d = os.path.dirname(outboxd.__file__)
print(outboxd.__version__, os.path.exists(os.path.join(d, "py.typed")), d)`).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "0.2.0 True "+venv) {
		t.Fatalf("import from the venv: %v\n%s", err, out)
	}
	help, err := exec.Command(py, "-m", "outboxd", "tail", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(help), "--token-command") {
		t.Fatalf("python -m outboxd tail --help: %v\n%s", err, help)
	}
	if out, err := exec.Command(py, "-m", "outboxd", "tail", "--count", "-1").CombinedOutput(); err == nil || !strings.Contains(string(out), "must not be negative") {
		t.Fatalf("a negative --count: %v\n%s", err, out)
	}
}

// TestPytest runs the package's pytest suite (clients/python/tests)
// against a migrated database and a running outboxd.
func TestPytest(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := proctest.Start(t, binary, proctest.FreeAddr(t), "DATABASE_URL="+db.URL)
	cmd := exec.Command(pyvenv.Python(t), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+db.URL, "OUTBOXD_URL=ws://"+p.Addr+"/ws/connect",
		"SECRET_KEY="+proctest.SecretKey, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), " passed") || strings.Contains(string(out), "skipped") {
		t.Fatalf("pytest: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// tail runs python -m outboxd tail with args; its stdout lines arrive on
// the channel (closed at exit).
func tail(t *testing.T, args ...string) (*exec.Cmd, <-chan string, *proctest.SyncBuffer) {
	t.Helper()
	cmd := exec.Command(pyvenv.Python(t), append([]string{"-m", "outboxd", "tail"}, args...)...)
	stderr := &proctest.SyncBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines, stderr
}

func next(t *testing.T, lines <-chan string, stderr *proctest.SyncBuffer) map[string]any {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("tail exited\n%s", stderr)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("tail printed %q: %v", l, err)
		}
		return m
	case <-time.After(20 * time.Second):
		t.Fatalf("no event from tail in 20 s\n%s", stderr)
	}
	return nil
}

// TestTailResumesAcrossARestart: python -m outboxd tail follows the stream
// across a restart of outboxd with events committed while it is down —
// every event once, in order — then exits 0 at --count; a static token cut
// by outbox.disconnect makes it exit 1, saying so.
func TestTailResumesAcrossARestart(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := proctest.Start(t, binary, proctest.FreeAddr(t), "DATABASE_URL="+db.URL)
	tok, err := ws.MintHS256(proctest.SecretKey, "py-tail", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	url := "ws://" + p.Addr + "/ws/connect"
	cmd, lines, stderr := tail(t, "--url", url, "--token", tok, "--since", "0", "--count", "6")
	emit := func(from, to int) {
		for i := from; i < to; i++ {
			db.Exec(t, `SELECT outbox.emit('task_event', jsonb_build_object('n', $1::int), NULL, ARRAY['LEVEL_1'])`, i)
		}
	}
	emit(0, 3)
	var seqs []float64
	for range 3 {
		seqs = append(seqs, next(t, lines, stderr)["seq"].(float64))
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = p.Wait()
	emit(3, 6)
	proctest.Start(t, binary, p.Addr, "DATABASE_URL="+db.URL)
	for range 3 {
		seqs = append(seqs, next(t, lines, stderr)["seq"].(float64))
	}
	for i, s := range seqs {
		if s != float64(i+1) {
			t.Fatalf("seqs %v, want 1..6 once each\n%s", seqs, stderr)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tail at --count: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr.String(), "reconnecting") || !strings.Contains(stderr.String(), "since=3") {
		t.Errorf("stderr does not tell the reconnect:\n%s", stderr)
	}

	cmd, lines, stderr = tail(t, "--url", url, "--token", tok)
	testWelcome := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "connected as py-tail") {
		if time.Now().After(testWelcome) {
			t.Fatalf("tail did not connect\n%s", stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	db.Exec(t, `SELECT outbox.disconnect(ARRAY['py-tail'], 'role changed')`)
	for range lines {
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "revoked") {
		t.Fatalf("tail after outbox.disconnect with a static token: %v, want exit 1 saying revoked\n%s", err, stderr)
	}
}
