package jsclient

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// npm runs an npm command in dir, or fails the test with its output.
func npm(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("npm", append(args, "--no-audit", "--no-fund")...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPackage builds the npm package as a user gets it: npm ci, the unit
// tests (node's test runner, a fake WebSocket and fetch), the type check,
// npm pack; then it installs the tarball into an empty project and uses it
// there through the ES module, through require (CommonJS) and from
// TypeScript against the published types — which must reject a misuse, or
// they would be `any` everywhere. The package is copied first, so that the
// test neither needs nor touches a node_modules in the tree. Node and npm
// are required (scripts/ensure-node.sh installs Debian's).
func TestPackage(t *testing.T) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required for the npm package's tests (scripts/ensure-node.sh): %v", tool, err)
		}
	}
	pkg := t.TempDir()
	for _, name := range []string{"package.json", "package-lock.json", "tsconfig.json", "README.md", "src/index.js", "test/client.test.js"} {
		body, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(pkg, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	npm(t, pkg, "ci")
	if out := npm(t, pkg, "test"); !strings.Contains(out, "# fail 0") || strings.Contains(out, "# pass 0") {
		t.Fatalf("npm test:\n%s", out)
	}
	npm(t, pkg, "run", "typecheck")
	packed := strings.TrimSpace(npm(t, pkg, "pack", "--silent"))
	tarball := filepath.Join(pkg, packed[strings.LastIndexByte(packed, '\n')+1:])
	if _, err := os.Stat(tarball); err != nil {
		t.Fatalf("npm pack printed %q: %v", packed, err)
	}
	listing, err := exec.Command("tar", "-tzf", tarball).CombinedOutput()
	if err != nil {
		t.Fatalf("tar: %v\n%s", err, listing)
	}
	for _, want := range []string{"package/src/index.js", "package/dist/index.cjs", "package/dist/index.d.ts", "package/README.md", "package/package.json"} {
		if !strings.Contains(string(listing), want+"\n") {
			t.Errorf("the tarball lacks %s:\n%s", want, listing)
		}
	}
	if strings.Contains(string(listing), "test/") || strings.Contains(string(listing), "node_modules") {
		t.Errorf("the tarball carries what a user does not need:\n%s", listing)
	}

	app := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(app, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("package.json", `{"name":"app","version":"1.0.0","private":true}`)
	npm(t, app, "install", tarball)
	lock, err := os.ReadFile(filepath.Join(app, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(lock), `"node_modules/`) != 1 {
		t.Errorf("installing the package brought dependencies with it:\n%s", lock)
	}
	write("esm.mjs", `import Default, { OutboxdClient, tokenExp } from "outboxd-client";
const c = new OutboxdClient({ url: "ws://127.0.0.1:1/ws/connect", getToken: () => "t" });
if (Default !== OutboxdClient || typeof c.on !== "function" || tokenExp("x") !== 0) process.exit(1);
console.log("esm ok", c.state);
`)
	write("cjs.cjs", `const { OutboxdClient, tokenExp } = require("outboxd-client");
const c = new OutboxdClient({ url: "ws://127.0.0.1:1/ws/connect", getToken: () => "t" });
const exp = Math.floor(Date.now() / 1000) + 60;
const tok = "x." + Buffer.from(JSON.stringify({ exp })).toString("base64url") + ".y";
if (typeof c.onState !== "function" || tokenExp(tok) !== exp) process.exit(1);
console.log("cjs ok", c.state);
`)
	for _, script := range []string{"esm.mjs", "cjs.cjs"} {
		out, err := exec.Command("node", filepath.Join(app, script)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok closed") {
			t.Fatalf("node %s: %v\n%s", script, err, out)
		}
	}

	tsc := filepath.Join(pkg, "node_modules", ".bin", "tsc")
	write("tsconfig.json", `{"compilerOptions":{"strict":true,"noEmit":true,"module":"nodenext","moduleResolution":"nodenext","target":"es2022","lib":["es2022","dom"]},"files":["app.ts"]}`)
	good := `import { OutboxdClient, type OutboxdEvent, type ConnectionState } from "outboxd-client";
type Task = { id: number; title: string };
const client = new OutboxdClient({ getToken: async () => "t", since: 0, epoch: "e", topics: ["task_event"] });
const off: () => void = client.on<Task>("task_event", (ev: OutboxdEvent<Task>) => {
  const n: number = ev.seq;
  const title: string = ev.data.title;
  void n; void title;
});
client.onState((state: ConnectionState, info) => { void state; void info.since; });
client.onResync((oldest: number, reason) => { if (reason === "epoch") void oldest; });
client.connect(); client.reconnectNow(); off(); client.close();
`
	write("app.ts", good)
	if out, err := exec.Command(tsc, "-p", app).CombinedOutput(); err != nil {
		t.Fatalf("tsc against the published types: %v\n%s", err, out)
	}
	write("app.ts", good+"client.on<Task>(\"task_event\", (ev) => ev.seq.toUpperCase());\n")
	out, err := exec.Command(tsc, "-p", app).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "toUpperCase") {
		t.Fatalf("tsc accepted a string method on a seq: the types are too loose: %v\n%s", err, out)
	}
}
