// Package deploy holds what operators install beside outboxd — the
// Prometheus rules, the Grafana dashboard (and the chart and compose file)
// — and their tests: the rules through promtool, every metric they and
// docs/observability.md name against a real binary's /metrics.
package deploy

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/ws"
)

var binary string

func TestMain(m *testing.M) { os.Exit(proctest.RunWithBinary(m, &binary)) }

// tool returns .tools/bin/<name>, which scripts/ensure-<name>.sh builds
// (make test-deps runs it).
func tool(t *testing.T, name string) string {
	t.Helper()
	p, _ := filepath.Abs(filepath.Join("..", ".tools", "bin", name))
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is required: scripts/ensure-%s.sh builds it into .tools/bin (make test-deps): %v", name, name, err)
	}
	return p
}

// The rules load (promtool check rules) and each alert fires on the
// series that should raise it, with its labels and text, and not before
// its `for` (promtool test rules).
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "promtool")
	for _, args := range [][]string{{"check", "rules", "outboxd-rules.yaml"}, {"test", "rules", "outboxd-rules.test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// scrape returns the metric families of a running outboxd after it has
// served a session, an event and a refused connect.
func scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	db := dbtest.New(t)
	p := proctest.Start(t, binary, proctest.FreeAddr(t), "DATABASE_URL="+db.URL, "PRESENCE=true",
		// The database as its own "standby": the standby's metrics exist.
		"READ_DATABASE_URL="+db.URL)
	tok, err := ws.MintHS256(proctest.SecretKey, "ops1", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+p.Addr+"/ws/connect?token="+url.QueryEscape(tok), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	var welcome map[string]any
	if err := conn.ReadJSON(&welcome); err != nil || welcome["type"] != "welcome" {
		t.Fatalf("welcome: %v %v", welcome, err)
	}
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": 1}', NULL, ARRAY['LEVEL_1'])`)
	var ev map[string]any
	if err := conn.ReadJSON(&ev); err != nil || ev["type"] != "task_event" {
		t.Fatalf("event: %v %v", ev, err)
	}
	if resp, err := http.Get("http://" + p.Addr + "/ws/connect?token=bad"); err == nil {
		resp.Body.Close()
	}
	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + p.Addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err = parser.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		// The latency is recorded after the write, the batch after COMMIT.
		if fams["outboxd_e2e_latency_seconds"] != nil && fams["outboxd_relay_batch_rows"] != nil {
			return fams
		}
		if time.Now().After(deadline) {
			t.Fatalf("no latency or batch histogram after an event was delivered: %v", names(fams))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func names(fams map[string]*dto.MetricFamily) []string {
	var out []string
	for n := range fams {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// family maps a name used in PromQL to the family it belongs to.
func family(fams map[string]*dto.MetricFamily, name string) (string, bool) {
	if fams[name] != nil {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && fams[base] != nil && fams[base].GetType() == dto.MetricType_HISTOGRAM {
			return base, true
		}
	}
	return "", false
}

var metricName = regexp.MustCompile(`\b(?:outboxd|http_server|process|go)_[a-z0-9_]+\b`)

// Every metric the dashboard and the rules query, and every metric
// docs/observability.md lists, is in a real binary's output — and every
// outboxd_* metric in the output is in the docs, with the label values
// documented for the counters that start at zero.
func TestMetricNamesAgainstRealOutput(t *testing.T) {
	t.Parallel()
	fams := scrape(t)
	for _, f := range []string{"grafana/outboxd.json", "prometheus/outboxd-rules.yaml", "prometheus/outboxd-rules.test.yaml"} {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".json") {
			var v any
			if err := json.Unmarshal(body, &v); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
		used := metricName.FindAllString(string(body), -1)
		if len(used) < 5 {
			t.Fatalf("%s names %d metrics: the pattern is lost", f, len(used))
		}
		for _, n := range used {
			if _, ok := family(fams, n); !ok {
				t.Errorf("%s uses %s, which outboxd does not export", f, n)
			}
		}
	}

	doc, err := os.ReadFile(filepath.Join("..", "docs", "observability.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z0-9_]+)` \\|[^|]+\\|([^|]*)\\|")
	documented := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = m[2]
	}
	if len(documented) < 20 {
		t.Fatalf("docs/observability.md: %d metric rows found: the pattern is lost", len(documented))
	}
	for n := range documented {
		if fams[n] == nil {
			t.Errorf("docs/observability.md lists %s, which outboxd does not export", n)
		}
	}
	for n, f := range fams {
		if strings.HasPrefix(n, "outboxd_") {
			if _, ok := documented[n]; !ok {
				t.Errorf("outboxd exports %s (%s), which docs/observability.md does not list", n, f.GetHelp())
			}
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.HasPrefix(l.GetName(), "otel_scope") {
					t.Errorf("%s carries %s", n, l.GetName())
				}
			}
		}
	}
	if h := fams["http_server_request_duration_seconds"]; h != nil {
		for _, m := range h.GetMetric() {
			var keys []string
			for _, l := range m.GetLabel() {
				keys = append(keys, l.GetName())
			}
			if !slices.Equal(keys, []string{"http_request_method", "http_response_status_code", "http_route"}) {
				t.Errorf("http_server_request_duration_seconds labels %v", keys)
			}
		}
	}
	// The counters that start at zero: their label values are exactly the
	// documented ones.
	value := regexp.MustCompile("`([a-z_]+)`")
	for _, c := range []struct{ name, label string }{
		{"outboxd_ws_drops_total", "reason"}, {"outboxd_ws_rejections_total", "reason"},
		{"outboxd_ws_send_errors_total", "reason"}, {"outboxd_ws_refreshes_total", "outcome"},
		{"outboxd_presence_events_total", "state"}, {"outboxd_presence_errors_total", "op"},
	} {
		cell := documented[c.name]
		_, after, ok := strings.Cut(cell, "`"+c.label+"`:")
		if !ok {
			t.Errorf("docs/observability.md: %s does not list its %s values", c.name, c.label)
			continue
		}
		var want []string
		for _, m := range value.FindAllStringSubmatch(after, -1) {
			want = append(want, m[1])
		}
		var got []string
		for _, m := range fams[c.name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == c.label {
					got = append(got, l.GetValue())
				}
			}
		}
		sort.Strings(want)
		sort.Strings(got)
		if !slices.Equal(want, got) {
			t.Errorf("%s{%s}: the output has %v, the docs %v", c.name, c.label, got, want)
		}
	}
}

// The chart lints, and renders — as its own Deployment, as a sidecar in
// the app's Pod, with the ServiceMonitor, without the migration Job —
// objects that decode strictly into their Kubernetes types; values it
// must refuse are refused with a message naming them.
func TestHelmChart(t *testing.T) {
	t.Parallel()
	helm, check := tool(t, "helm"), tool(t, "deploycheck")
	base := []string{"--set", "secrets.DATABASE_URL=postgres://outboxd@db:5432/app", "--set", "secrets.SECRET_KEY=0123456789abcdef0123",
		"--set", "config.ALLOWED_ORIGINS=https://tablero.example"}
	if out, err := exec.Command(helm, append([]string{"lint", "--strict", "helm/outboxd"}, base...)...).CombinedOutput(); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	for _, c := range []struct {
		name string
		set  []string
		want []string // objects the render must hold
	}{
		{"deployment", nil, []string{"Deployment outboxd", "Service outboxd", "Service outboxd-admin", "Secret outboxd", "PodDisruptionBudget outboxd", "Job outboxd-migrate"}},
		{"sidecar", []string{"--set", "mode=sidecar", "--set", "app.image=registry.example/tablero:1.4"}, []string{"Deployment outboxd"}},
		{"monitored", []string{"--set", "serviceMonitor.enabled=true", "--set", "secrets.ADMIN_TOKEN=t0ken"}, []string{"ServiceMonitor outboxd"}},
		{"no-job", []string{"--set", "migrations.job=false", "--set", "secrets.create=false", "--set", "secrets.existingSecret=outboxd-secrets"}, nil},
	} {
		args := append(append([]string{"template", "outboxd", "helm/outboxd"}, base...), c.set...)
		rendered, err := exec.Command(helm, args...).Output()
		if err != nil {
			t.Fatalf("%s: helm template: %v\n%s", c.name, err, stderrOf(err))
		}
		cmd := exec.Command(check, "k8s")
		cmd.Stdin = strings.NewReader(string(rendered))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: the rendered objects do not decode strictly: %v\n%s\n%s", c.name, err, out, rendered)
		}
		for _, w := range c.want {
			if !strings.Contains(string(out), w+"\n") {
				t.Errorf("%s: no %s in the render:\n%s", c.name, w, out)
			}
		}
		r := string(rendered)
		switch c.name {
		case "deployment":
			for _, w := range []string{"terminationGracePeriodSeconds: 20", "path: /readyz", "path: /healthz", "name: AUTO_MIGRATE\n              value: \"false\"", "sleep:", "readOnlyRootFilesystem: true"} {
				if !strings.Contains(r, w) {
					t.Errorf("deployment: the render lacks %q", w)
				}
			}
		case "sidecar":
			if !strings.Contains(r, "image: registry.example/tablero:1.4") || !strings.Contains(r, "ws://127.0.0.1:8002/ws/connect") {
				t.Errorf("sidecar: the app's container is not beside outboxd:\n%s", r)
			}
		case "no-job":
			if strings.Contains(r, "kind: Job") || strings.Contains(r, "kind: Secret") || !strings.Contains(r, "name: outboxd-secrets") ||
				!strings.Contains(r, "name: AUTO_MIGRATE\n              value: \"true\"") {
				t.Errorf("no-job: the render is wrong:\n%s", r)
			}
		}
	}
	for _, bad := range []struct {
		set  []string
		want string
	}{
		{[]string{"--set", "config.ALLOWED_ORIGINS="}, "ALLOWED_ORIGINS is required in production"},
		{[]string{"--set", "secrets.DATABASE_URL="}, "secrets.DATABASE_URL is required"},
		{[]string{"--set", "mode=sidecar"}, "app.image is required in sidecar mode"},
		{[]string{"--set", "mode=daemon"}, "mode must be deployment or sidecar"},
	} {
		args := append(append([]string{"template", "outboxd", "helm/outboxd"}, base...), bad.set...)
		out, err := exec.Command(helm, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), bad.want) {
			t.Errorf("helm template %v: %v, want an error saying %q\n%s", bad.set, err, bad.want, out)
		}
	}
	// Every value the chart has is described in its README.
	values, err := os.ReadFile("helm/outboxd/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("helm/outboxd/README.md")
	if err != nil {
		t.Fatal(err)
	}
	top := regexp.MustCompile(`(?m)^([a-zA-Z]+):`)
	for _, m := range top.FindAllStringSubmatch(string(values), -1) {
		if !strings.Contains(string(readme), "`"+m[1]) {
			t.Errorf("helm/outboxd/README.md does not describe the value %s", m[1])
		}
	}
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// The compose file loads and validates against the Compose Specification
// (compose-go, what `docker compose config` runs; no Docker here), with
// the example env files in place of the real ones.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	check := tool(t, "deploycheck")
	dir := t.TempDir()
	for src, dst := range map[string]string{"compose.yaml": "compose.yaml", "outboxd.env.example": "outboxd.env", "postgres.env.example": "postgres.env"} {
		body, err := os.ReadFile(filepath.Join("compose", src))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(check, "compose", filepath.Join(dir, "compose.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("compose: %v\n%s", err, out)
	}
	for _, s := range []string{"migrate", "outboxd", "postgres"} {
		if !strings.Contains(string(out), "ok service "+s+"\n") {
			t.Errorf("compose: no service %s:\n%s", s, out)
		}
	}
	body, _ := os.ReadFile("compose/compose.yaml")
	if regexp.MustCompile(`(?m)^version:`).Match(body) {
		t.Error("compose.yaml carries the obsolete version: key")
	}
	// The repository's own docker-compose.yml too.
	root, _ := filepath.Abs(filepath.Join("..", "docker-compose.yml"))
	if out, err := exec.Command(check, "compose", root).CombinedOutput(); err != nil {
		t.Fatalf("docker-compose.yml: %v\n%s", err, out)
	}
}
