package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/testsignal"
	"github.com/grupogad/outboxd/ws"
)

// artifactsDir is where the browser test leaves its screenshots.
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("OUTBOXD_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func chromiumPath() string {
	if p := os.Getenv("CHROMIUM_PATH"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// The demo page, in headless Chromium: get a development token, connect,
// see a row committed by SQL appear; restart outboxd and see the page
// reconnect by itself and show an event committed while it was down.
func TestBrowserPageLiveAndResume(t *testing.T) {
	t.Parallel()
	ctx, waitText := newBrowser(t)
	db := dbtest.New(t)
	p := startOutboxd(t, db, "TEST_TOKENS=true")
	base := "http://" + p.Addr

	shot := func(name string) {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(artifactsDir(t), name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible("#dev-token"),
		chromedp.SetValue("#sub", "op7"),
		chromedp.Click("#dev-token"),
	); err != nil {
		t.Fatal(err)
	}
	waitText("#token-hint", "Development token for op7")
	if err := chromedp.Do(ctx, chromedp.Click("#connect")); err != nil {
		t.Fatal(err)
	}
	waitText("#state", "open")
	waitText("#status-line", "connected over WebSocket as op7 [LEVEL_1]")
	// The client carries its token as a subprotocol, not in the URL.
	proto, err := chromedp.Run(ctx, chromedp.Evaluate[string](`outboxdClient._ws.protocol + " " + outboxdClient._ws.url`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(proto, "outboxd.v1 ") || strings.Contains(proto, "token=") {
		t.Fatalf("protocol and URL: %q", proto)
	}

	db.Exec(t, `SELECT outbox.emit('task_event', '{"task_id": 101, "titulo": "Patrulla norte"}', NULL, ARRAY['LEVEL_1'])`)
	waitText("#log", "Patrulla norte")
	db.Exec(t, `SELECT outbox.emit('efectivo_event', '{"efectivo_id": 7, "disponible": false}')`)
	waitText("#log", `"efectivo_id":7`)
	waitText("#status-line", "— at seq 2") // the position follows the stream
	waitText("#stats", "head seq")

	// Restart the sidecar; an event commits while it is down. The client's
	// backoff is made an hour long: only the page, seeing its stats poll
	// answered again, can bring it back in time (reconnectNow).
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`outboxdClient.minDelay = outboxdClient.maxDelay = 3600000; true`)); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = p.Wait()
	waitText("#state", "reconnecting")
	waitText("#status-line", "since=2")
	db.Exec(t, `SELECT outbox.emit('system_event', '{"alerta": "committed while outboxd was down"}')`)
	p = startOutboxdAt(t, db, p.Addr, "TEST_TOKENS=true")
	waitText("#state", "open")
	waitText("#log", "committed while outboxd was down")
	waitText("#log", "reconnected; resumed after seq 2")

	// The test broadcast form.
	if err := chromedp.Do(ctx, chromedp.Click("#broadcast")); err != nil {
		t.Fatal(err)
	}
	waitText("#bc-result", "sent to 1 connection(s)")
	waitText("#log", "BroadcastTest: Mensaje de prueba [info]")
	waitText("#stats", "connections1")
	waitText("#stats", "head seq3")
	shot("browser-e2e.png")

	// Every event arrived once, in seq order.
	seqs, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`Array.from(document.querySelectorAll('#log .ev[data-seq]')).map(e => e.dataset.seq).reverse()`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(seqs, ",") != "1,2,3" {
		t.Fatalf("page shows events with seqs %v, want 1,2,3", seqs)
	}

	// The database is recreated (a new history, numbered from 1 again)
	// while the page waits to reconnect with since=3: it must be told to
	// resync, never be replayed the new history's seqs 1 and 2.
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = p.Wait()
	waitText("#state", "reconnecting")
	db.Exec(t, `DROP SCHEMA outbox CASCADE; DROP TABLE public.outboxd_schema_version`)
	migrate := exec.Command(binary, "migrate", "up")
	migrate.Env = []string{"DATABASE_URL=" + db.URL}
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	db.Exec(t, `SELECT outbox.emit('task_event', '{"titulo": "NEWHIST-1"}')`)
	db.Exec(t, `SELECT outbox.emit('task_event', '{"titulo": "NEWHIST-2"}')`)
	startOutboxdAt(t, db, p.Addr)
	waitText("#log", "resync required (epoch)")
	db.Exec(t, `SELECT outbox.emit('task_event', '{"titulo": "after the resync"}')`)
	waitText("#log", "after the resync")
	log, err := chromedp.Run(ctx, chromedp.TextContent("#log"))
	if err != nil {
		t.Fatal(err)
	}
	// The log is newest first. After the resync notice the page starts
	// over in the new history and may be sent its rows (when the new
	// sequencer numbers them after the page reconnected); before it,
	// never.
	if before := log[strings.Index(log, "resync required (epoch)"):]; strings.Contains(before, "NEWHIST") {
		t.Fatalf("the page was replayed events of another history before the resync:\n%s", log)
	}
	shot("browser-e2e-resync.png")

	// The topic selector: only the checked topics arrive, from the seq the
	// server answers with.
	if err := chromedp.Do(ctx,
		chromedp.Click(`#topics input[value="efectivo_event"]`),
		chromedp.Click("#apply-topics"),
	); err != nil {
		t.Fatal(err)
	}
	waitText("#log", "subscribed to dashboard_event, system_event, task_event from seq")
	db.Exec(t, `SELECT outbox.emit('efectivo_event', '{"efectivo_id": 99, "filtered": "FILTERED-OUT"}')`)
	db.Exec(t, `SELECT outbox.emit('task_event', '{"titulo": "after the filter"}')`)
	waitText("#log", "after the filter")
	if log, err := chromedp.Run(ctx, chromedp.TextContent("#log")); err != nil || strings.Contains(log, "FILTERED-OUT") {
		t.Fatalf("an event outside the filter reached the page (%v):\n%s", err, log)
	}

	// The app revokes the user (outbox.disconnect) and has no new token for
	// it: the page stops instead of reconnecting.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("token").value = ""`)); err != nil {
		t.Fatal(err)
	}
	db.Exec(t, `SELECT outbox.disconnect(ARRAY['op7'], 'permissions changed')`)
	waitText("#state", "closed")
	waitText("#status-line", "closed (4003: revoked; no new token)")
	waitText("#log", "connection closed (4003: permissions changed)")
	shot("browser-e2e-revoked.png")
}

// Behind a proxy that breaks WebSocket upgrades (403), the demo page's
// client falls back to Server-Sent Events by itself, shows it, receives a
// committed row, and resumes over SSE by itself across a sidecar restart.
func TestBrowserFallsBackToSSE(t *testing.T) {
	t.Parallel()
	ctx, waitText := newBrowser(t)
	db := dbtest.New(t)
	p := startOutboxd(t, db, "TEST_TOKENS=true")
	target, _ := url.Parse("http://" + p.Addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1 // stream SSE as it comes
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "WebSocket upgrades are not allowed here", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)

	if err := chromedp.Do(ctx,
		chromedp.Navigate(proxy.URL+"/"),
		chromedp.WaitVisible("#dev-token"),
		chromedp.SetValue("#sub", "op8"),
		chromedp.Click("#dev-token"),
	); err != nil {
		t.Fatal(err)
	}
	waitText("#token-hint", "Development token for op8")
	if err := chromedp.Do(ctx, chromedp.Click("#connect")); err != nil {
		t.Fatal(err)
	}
	waitText("#status-line", "connected over SSE as op8")
	db.Exec(t, `SELECT outbox.emit('task_event', '{"titulo": "over SSE"}', NULL, ARRAY['LEVEL_1'])`)
	waitText("#log", "over SSE")

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = p.Wait()
	waitText("#state", "reconnecting")
	db.Exec(t, `SELECT outbox.emit('system_event', '{"alerta": "committed while down, resumed over SSE"}')`)
	startOutboxdAt(t, db, p.Addr, "TEST_TOKENS=true")
	waitText("#log", "committed while down, resumed over SSE")
	waitText("#status-line", "connected over SSE")
	seqs, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`Array.from(document.querySelectorAll('#log .ev[data-seq]')).map(e => e.dataset.seq).reverse()`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(seqs, ",") != "1,2" {
		t.Fatalf("page shows events with seqs %v, want 1,2", seqs)
	}
}

// A plain EventSource in Chromium, on outboxd's own page origin: it gets
// the named events, and when the sidecar restarts it reconnects by itself
// with Last-Event-ID and receives what was committed meanwhile — exactly
// once, in order.
func TestEventSourceResumesByItself(t *testing.T) {
	t.Parallel()
	ctx, _ := newBrowser(t)
	db := dbtest.New(t)
	p := startOutboxd(t, db)
	tok, err := ws.MintHS256(testSecret, "op9", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`window.got = []; window.opens = 0;
		const es = new EventSource("/ws/sse?token=%s");
		es.onopen = () => window.opens++;
		for (const type of ["task_event", "system_event"]) es.addEventListener(type, (e) => window.got.push(e.lastEventId + ":" + type));
		"ok"`, url.QueryEscape(tok))
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+p.Addr+"/healthz")); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[string](script)); err != nil {
		t.Fatal(err)
	}
	got := func() string {
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`window.got.join(",") + "|" + window.opens`))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	eventually(t, 20*time.Second, func() bool { return strings.HasSuffix(got(), "|1") }, got)
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": 1}', NULL, ARRAY['LEVEL_1'])`)
	eventually(t, 20*time.Second, func() bool { return strings.HasPrefix(got(), "1:task_event|") }, got)
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = p.Wait()
	db.Exec(t, `SELECT outbox.emit('system_event', '{"n": 2}')`)
	startOutboxdAt(t, db, p.Addr)
	db.Exec(t, `SELECT outbox.emit('task_event', '{"n": 3}', NULL, ARRAY['LEVEL_1'])`)
	eventually(t, 30*time.Second, func() bool { return strings.HasPrefix(got(), "1:task_event,2:system_event,3:task_event|") }, got)
	if s := got(); !strings.HasSuffix(s, "|2") {
		t.Fatalf("EventSource opens: %s, want 2 (the first and one reconnect)", s)
	}
}

// newBrowser starts a headless Chromium for t and returns its context and
// a waitText that waits until the element sel shows want.
func newBrowser(t *testing.T) (context.Context, func(sel, want string)) {
	t.Helper()
	if _, err := os.Stat(chromiumPath()); err != nil {
		t.Fatalf("chromium is required for this test (scripts/ensure-chromium.sh installs it): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath()),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancelT)
	waitText := func(sel, want string) {
		t.Helper()
		var got string
		testsignal.Eventually(t, 30*time.Second, func() bool {
			var err error
			if got, err = chromedp.Run(ctx, chromedp.TextContent(sel)); err != nil {
				t.Fatal(err)
			}
			return strings.Contains(got, want)
		}, func() string { return fmt.Sprintf("%s never showed %q; it shows %q", sel, want, got) })
	}
	return ctx, waitText
}
