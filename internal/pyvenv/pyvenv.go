// Package pyvenv gives tests the Python the examples run on: .venv at the
// repository's root, Debian's python3 with its packages and the outboxd
// package from clients/python installed (scripts/python-venv.sh makes or
// refreshes it, under a lock, when the package's sources change).
package pyvenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	once   sync.Once
	python string
	failed string
)

// Root is the repository's root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Python returns the interpreter's path: OUTBOXD_PYTHON when set (it must
// have the outboxd package), else .venv/bin/python, made first if needed.
func Python(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("OUTBOXD_PYTHON"); p != "" {
		return p
	}
	once.Do(func() {
		cmd := exec.Command(filepath.Join(Root(), "scripts", "python-venv.sh"))
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			failed = "scripts/python-venv.sh: " + err.Error() + "\n" + stderr
			return
		}
		python = strings.TrimSpace(string(out))
	})
	if failed != "" {
		t.Fatal(failed)
	}
	return python
}
