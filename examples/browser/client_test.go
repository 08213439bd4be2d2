package browser

import (
	"os/exec"
	"strings"
	"testing"
)

// The client's own unit tests (outboxd-client.test.js, node's test
// runner, a fake WebSocket): the in-band refresh. Node is required
// (scripts/ensure-node.sh installs Debian's).
func TestClientUnitTests(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is required for the browser client's unit tests (scripts/ensure-node.sh): %v", err)
	}
	out, err := exec.Command(node, "--test", "outboxd-client.test.js").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "# fail 0") {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
}
