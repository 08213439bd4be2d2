// Package proctest runs real outboxd processes for tests: build the binary,
// start replicas on chosen addresses, kill and restart them, cut their
// database connection with a TCP proxy, and follow their event stream with a
// client that resumes across replicas with since=, as a browser would.
package proctest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// SecretKey signs the tokens of processes started here.
const SecretKey = "proctest-secret-0123456789abcdef"

// Build compiles cmd/outboxd into dir and returns the binary's path.
func Build(dir string) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	bin := filepath.Join(dir, "outboxd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/outboxd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build outboxd: %w\n%s", err, out)
	}
	return bin, nil
}

// RunWithBinary is a TestMain body: it builds outboxd into a temporary
// directory (or takes OUTBOXD_TEST_BINARY), stores its path in *binary, runs the tests, checks for leaked
// goroutines, and returns the exit code.
func RunWithBinary(m *testing.M, binary *string) int {
	dir, err := os.MkdirTemp("", "outboxd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if b := os.Getenv("OUTBOXD_TEST_BINARY"); b != "" {
		*binary = b // a prebuilt outboxd, e.g. an older one to compare
	} else if *binary, err = Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return code
}

// FreeAddr returns a 127.0.0.1 address nobody listens on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// SyncBuffer is a bytes.Buffer safe for a child's output copier and the test.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Process is one running outboxd.
type Process struct {
	Cmd    *exec.Cmd
	Addr   string
	Stderr *SyncBuffer
	done   chan struct{}
	err    error
}

// Start runs binary with env (plus LISTEN_ADDR=addr, SECRET_KEY and a debug
// log unless env sets them) and waits until /readyz answers 200.
func Start(t testing.TB, binary, addr string, env ...string) *Process {
	t.Helper()
	p := &Process{Addr: addr, Stderr: &SyncBuffer{}, done: make(chan struct{})}
	base := []string{"PATH=" + os.Getenv("PATH"), "LISTEN_ADDR=" + addr, "SECRET_KEY=" + SecretKey, "LOG_LEVEL=debug"}
	p.Cmd = exec.Command(binary)
	p.Cmd.Env = append(base, env...)
	p.Cmd.Stderr = p.Stderr
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.Kill() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("outboxd exited at start: %v\n%s", p.err, p.Stderr)
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("outboxd not ready on %s: %v\n%s", addr, err, p.Stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Wait waits for the process to exit and returns its exit error.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL and waits.
func (p *Process) Kill() {
	if !p.Exited() {
		_ = p.Cmd.Process.Kill()
	}
	<-p.done
}

// RSSPeakKiB reads the process's peak resident set (VmHWM) from /proc.
func (p *Process) RSSPeakKiB() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			_, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb)
			return kb, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", p.Cmd.Process.Pid)
}
