package outbox_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The producer library is what apps import: its module graph is pgx's and
// nothing of the sidecar's (OTel SDK, gRPC, melody, goose, chromedp…).
func TestModuleGraphIsPgxOnly(t *testing.T) {
	out, err := exec.Command("go", "mod", "graph").Output()
	if err != nil {
		t.Fatalf("go mod graph: %v", err)
	}
	allowed := []string{"github.com/grupogad/outboxd/outbox", "github.com/jackc/", "golang.org/x/", "go@", "toolchain@",
		// pgx's own test dependencies, listed by the graph:
		"github.com/stretchr/testify@", "github.com/davecgh/go-spew@", "github.com/pmezard/go-difflib@",
		"gopkg.in/yaml.v3@", "gopkg.in/check.v1@", "github.com/kr/", "github.com/rogpeppe/", "github.com/stretchr/objx@",
		"github.com/creack/pty@"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		for _, node := range strings.Fields(line) {
			ok := false
			for _, a := range allowed {
				if strings.HasPrefix(node, a) {
					ok = true
					break
				}
			}
			if !ok {
				t.Errorf("the producer module's graph holds %s (%s)", node, line)
			}
		}
	}
}
