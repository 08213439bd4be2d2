package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/proctest"
	"github.com/grupogad/outboxd/internal/pyvenv"
)

// appAPI is a logged-in client of the FastAPI example.
type appAPI struct {
	t    *testing.T
	base string
	c    *http.Client
}

func loginApp(t *testing.T, base, user string) *appAPI {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	a := &appAPI{t: t, base: base, c: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
	if code, body := a.do("POST", "/api/login", map[string]string{"user": user}); code != 200 {
		t.Fatalf("login %s: %d %s", user, code, body)
	}
	return a
}

func (a *appAPI) do(method, path string, body any) (int, string) {
	a.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, a.base+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.c.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	_, _ = out.ReadFrom(resp.Body)
	return resp.StatusCode, out.String()
}

func (a *appAPI) must(method, path string, body any) string {
	a.t.Helper()
	code, out := a.do(method, path, body)
	if code/100 != 2 {
		a.t.Fatalf("%s %s: %d %s", method, path, code, out)
	}
	return out
}

// page is one browser tab with its own cookies (its own host name: each
// *.localhost resolves to 127.0.0.1 in Chromium).
type page struct {
	t   *testing.T
	ctx context.Context
}

func (p *page) wait(sel, want string) time.Duration {
	p.t.Helper()
	start := time.Now()
	var got string
	eventually(p.t, 20*time.Second, func() bool {
		// Evaluate, not TextContent: the page re-renders under it, and a node
		// looked up by the latter may be gone by the time it is read.
		var err error
		if got, err = chromedp.Run(p.ctx, chromedp.Evaluate[string](fmt.Sprintf(
			`(document.querySelector(%q) || {textContent: ""}).textContent`, sel))); err != nil {
			p.t.Fatal(err)
		}
		return strings.Contains(got, want)
	}, func() string { return fmt.Sprintf("%s never showed %q; it shows %q", sel, want, got) })
	return time.Since(start)
}

func (p *page) eval(js string) string {
	p.t.Helper()
	out, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		p.t.Fatalf("%s: %v", js, err)
	}
	return out
}

func (p *page) count(text string) int {
	p.t.Helper()
	out, err := chromedp.Run(p.ctx, chromedp.Evaluate[int](fmt.Sprintf(
		`Array.from(document.querySelectorAll(".task")).filter((d) => d.textContent.includes(%q)).length`, text)))
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// The first user's app in miniature, end to end: the real outboxd binary,
// the FastAPI app on uvicorn, real PostgreSQL, and its page in Chromium.
func TestFastAPIAppInChromium(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(chromiumPath()); err != nil {
		t.Fatalf("chromium is required (scripts/ensure-chromium.sh): %v", err)
	}
	db := dbtest.New(t)
	// Presence for the supervisors and admins: which efectivos are online.
	presence := []string{"PRESENCE=true", "PRESENCE_ROLES=LEVEL_2,ADMIN", "PRESENCE_INTERVAL=250ms", "PRESENCE_TTL=5s"}
	ox := startOutboxd(t, db, presence...)

	root, _ := filepath.Abs(filepath.Join("..", ".."))
	appAddr := proctest.FreeAddr(t)
	port := appAddr[strings.LastIndexByte(appAddr, ':')+1:]
	app := exec.Command(pyvenv.Python(t), "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", port)
	app.Dir = filepath.Join(root, "examples", "fastapi-app")
	app.Env = append(os.Environ(), "DATABASE_URL="+db.URL, "SECRET_KEY="+testSecret,
		"OUTBOXD_WS_URL=ws://"+ox.Addr+"/ws/connect")
	var appLog proctest.SyncBuffer
	app.Stdout, app.Stderr = &appLog, &appLog
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Process.Kill(); _ = app.Wait() })
	eventually(t, 30*time.Second, func() bool {
		resp, err := http.Get("http://" + appAddr + "/api/login/users")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, func() string { return "the app did not start:\n" + appLog.String() })
	admin := loginApp(t, "http://"+appAddr, "admin")
	admin.must("POST", "/api/tasks", map[string]string{"title": "Antes de abrir", "assignee": "op2"})
	checkAppAuthorization(t, "http://"+appAddr, admin)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath()), chromedp.Flag("headless", true),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.Flag("disable-background-networking", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 800))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	if err := chromedp.Do(bctx); err != nil { // start the browser
		t.Fatal(err)
	}
	open := func(host, user, name, query string) *page {
		t.Helper()
		ctx, cancel := chromedp.NewContext(bctx)
		t.Cleanup(cancel)
		ctx, cancelT := context.WithTimeout(ctx, 2*time.Minute)
		t.Cleanup(cancelT)
		p := &page{t: t, ctx: ctx}
		base := "http://" + host + ".localhost:" + port + "/"
		if err := chromedp.Do(ctx, chromedp.Navigate(base), chromedp.WaitVisible(`[data-user="`+user+`"]`)); err != nil {
			t.Fatal(err)
		}
		// The login screen shows the login only: no board, no badge.
		if got := p.eval(`[getComputedStyle(document.getElementById("app")).display, getComputedStyle(document.getElementById("banner")).display].join(",")`); got != "none,none" {
			t.Fatalf("the login screen shows the board or the badge (display %s)", got)
		}
		if err := chromedp.Do(ctx, chromedp.Click(`[data-user="`+user+`"]`)); err != nil {
			t.Fatal(err)
		}
		p.wait("#who", name)
		if query != "" {
			if err := chromedp.Do(ctx, chromedp.Navigate(base+"?"+query)); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	operator := open("a", "op1", "Operador 1", "") // LEVEL_1
	operator.wait("#banner", "live")
	supervisor := open("b", "sup1", "Supervisora", "") // LEVEL_2
	supervisor.wait("#banner", "live")
	operator.wait("#board", "Antes de abrir")

	// A task changed through the API appears on the operator's page.
	admin.must("POST", "/api/tasks", map[string]string{"title": "Ronda norte", "assignee": "op2"})
	took := operator.wait(`.col[data-status="pending"]`, "Ronda norte")
	t.Logf("a new task reached the operator's page %s after its commit was acknowledged", took)
	admin.must("PATCH", "/api/tasks/2", map[string]string{"status": "in_progress"})
	operator.wait(`.col[data-status="in_progress"]`, "Ronda norte")
	operator.wait("#dashboard", "in_progress 1")
	// From the page itself: the operator creates a task for op2, moves it
	// and assigns it to op1; the supervisor toggles an efectivo.
	if err := chromedp.Do(operator.ctx, chromedp.SetValue("#new-title", "Desde la página"),
		chromedp.SetValue("#new-assignee", "op2"), chromedp.Click("#create")); err != nil {
		t.Fatal(err)
	}
	operator.wait(`.col[data-status="pending"]`, "Desde la página")
	onCard := func(p *page, title, control, value string) {
		t.Helper()
		p.eval(fmt.Sprintf(`{
			const card = [...document.querySelectorAll(".task")].find((d) => d.textContent.includes(%q));
			const sel = card.querySelector('select[aria-label=%q]');
			sel.value = %q;
			sel.dispatchEvent(new Event("change"));
		} ""`, title, control, value))
	}
	onCard(operator, "Desde la página", "mover", "blocked")
	operator.wait(`.col[data-status="blocked"]`, "Desde la página")
	operator.wait("#alerts", "bloqueada") // the system_event the app sends with it
	onCard(operator, "Desde la página", "asignar", "op1")
	operator.wait(`.col[data-status="blocked"]`, "· op1")
	if err := chromedp.Do(supervisor.ctx, chromedp.Click(`.efectivo[data-id="5"] button`)); err != nil {
		t.Fatal(err)
	}
	supervisor.wait("#efectivos", "Efectivo 5: no disponible")
	// An efectivo change for LEVEL_2 reaches the supervisor, not the operator.
	admin.must("PATCH", "/api/efectivos/3", map[string]bool{"disponible": false})
	supervisor.wait("#efectivos", "Efectivo 3: no disponible")
	// Efectivo 1 logs in: the supervisor sees them online (a presence
	// event); efectivo 2 stays offline.
	supervisor.wait("#efectivos", "Efectivo 1: disponible · desconectado")
	efectivo := open("e", "ef1", "Efectivo 1", "")
	efectivo.wait("#banner", "live")
	supervisor.wait("#efectivos", "Efectivo 1: disponible · en línea")
	supervisor.wait("#efectivos", "Efectivo 2: disponible · desconectado")
	// A rolled-back change never appears.
	if code, _ := admin.do("PATCH", "/api/tasks/2", map[string]string{"title": "ROLLED-BACK", "status": "archived"}); code != 422 {
		t.Fatalf("an invalid change answered %d, want 422", code)
	}

	// outboxd restarts while the page is open; changes commit meanwhile.
	operator.eval(`window.__noReload = "still here"; ""`)
	if err := ox.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = ox.Wait()
	operator.wait("#banner", "reconnecting")
	admin.must("POST", "/api/tasks", map[string]string{"title": "Mientras caído", "assignee": "op1"})
	admin.must("PATCH", "/api/tasks/2", map[string]string{"status": "done"})
	startOutboxdAt(t, db, ox.Addr, presence...)
	operator.wait(`.col[data-status="done"]`, "Ronda norte")
	operator.wait(`.col[data-status="pending"]`, "Mientras caído")
	operator.wait("#banner", "live")
	if got := operator.eval(`window.__noReload || "reloaded"`); got != "still here" {
		t.Fatal("the page reloaded instead of resuming")
	}
	for _, title := range []string{"Antes de abrir", "Ronda norte", "Mientras caído"} {
		if n := operator.count(title); n != 1 {
			t.Fatalf("%q shows %d times", title, n)
		}
	}
	if n := operator.count("ROLLED-BACK"); n != 0 || strings.Contains(operator.eval(`document.body.textContent`), "Efectivo 3") {
		t.Fatal("the operator's page shows a rolled-back change or another role's event")
	}

	// The state-and-position race: a change committed after the page read
	// its state and before it connected arrives once; one before, once.
	racer := open("c", "op2", "Operador 2", "pause=1") // LEVEL_1
	racer.wait("#board", "Mientras caído")             // state loaded, not connected
	if racer.eval(`document.body.dataset.stateLoaded || ""`) != "1" {
		t.Fatal("the page is not held between state and connect")
	}
	admin.must("POST", "/api/tasks", map[string]string{"title": "En la carrera", "assignee": "op2"})
	racer.eval(`window.__go(); ""`)
	racer.wait("#banner", "live")
	racer.wait(".board", "En la carrera")
	admin.must("POST", "/api/tasks", map[string]string{"title": "Después", "assignee": "op2"})
	racer.wait(".board", "Después")
	for _, title := range []string{"Mientras caído", "En la carrera", "Después"} {
		if n := racer.count(title); n != 1 {
			t.Fatalf("the racing page shows %q %d times", title, n)
		}
	}

	// The admin makes op1 a LEVEL_2: in the same transaction the app calls
	// outbox.disconnect. The operator's page is cut (4003), gets a new
	// token, and sees what LEVEL_2 sees.
	admin.must("POST", "/api/admin/users/op1/role", map[string]string{"role": "LEVEL_2"})
	operator.wait("#who", "LEVEL_2")
	operator.wait("#banner", "live")
	operator.wait("#efectivos", "Efectivo 3: no disponible")         // from the reloaded state,
	operator.wait("#efectivos", "Efectivo 1: disponible · en línea") // online in the same snapshot
	admin.must("PATCH", "/api/efectivos/4", map[string]bool{"disponible": false})
	operator.wait("#efectivos", "Efectivo 4: no disponible") // live, with the new role
	// Efectivo 1 closes the tab: the last session ends, offline.
	if err := chromedp.Cancel(efectivo.ctx); err != nil {
		t.Fatal(err)
	}
	operator.wait("#efectivos", "Efectivo 1: disponible · desconectado")
	supervisor.wait("#efectivos", "Efectivo 1: disponible · desconectado")
	if !strings.Contains(appLog.String(), "POST /api/admin/users/op1/role") {
		t.Fatal("the role change did not go through the app")
	}
	png, err := chromedp.Run(operator.ctx, chromedp.FullScreenshot(100))
	if err == nil {
		_ = os.WriteFile(filepath.Join(artifactsDir(t), "fastapi-app.png"), png, 0o644)
	}
	// Log out from the page: back to the login, and the stream is closed.
	if err := chromedp.Do(supervisor.ctx, chromedp.Click("#logout"), chromedp.WaitVisible(`[data-user="sup1"]`)); err != nil {
		t.Fatal(err)
	}
	if got := supervisor.eval(`getComputedStyle(document.getElementById("app")).display`); got != "none" {
		t.Fatalf("after logging out the board still shows (display %s)", got)
	}
}

// checkAppAuthorization: every endpoint of the example checks the
// caller's role, and without a login there is nothing to see.
func checkAppAuthorization(t *testing.T, base string, admin *appAPI) {
	t.Helper()
	anon := &appAPI{t: t, base: base, c: &http.Client{Timeout: 10 * time.Second}}
	op2 := loginApp(t, base, "op2")
	sup := loginApp(t, base, "sup1")
	for _, c := range []struct {
		who          *appAPI
		name         string
		method, path string
		body         any
		want         int
	}{
		{anon, "anonymous", "GET", "/api/users", nil, 401},
		{anon, "anonymous", "GET", "/api/state", nil, 401},
		{op2, "an operator", "GET", "/api/users", nil, 403},
		{op2, "an operator", "PATCH", "/api/efectivos/1", map[string]bool{"disponible": false}, 403},
		{sup, "a supervisor", "POST", "/api/tasks", map[string]string{"title": "x", "assignee": "op1"}, 403},
		{sup, "a supervisor", "PATCH", "/api/tasks/1", map[string]string{"status": "done"}, 403},
		{op2, "an operator", "POST", "/api/admin/users/op1/role", map[string]string{"role": "ADMIN"}, 403},
	} {
		if code, body := c.who.do(c.method, c.path, c.body); code != c.want {
			t.Errorf("%s: %s %s → %d %s, want %d", c.name, c.method, c.path, code, body, c.want)
		}
	}
	if code, body := admin.do("GET", "/api/users", nil); code != 200 {
		t.Errorf("admin: GET /api/users → %d %s", code, body)
	}
	// Outside development the app does not start on the public keys.
	check := exec.Command(pyvenv.Python(t), "-c", "import app")
	check.Dir = filepath.Join("..", "..", "examples", "fastapi-app")
	check.Env = append(os.Environ(), "APP_ENV=production", "SECRET_KEY=", "APP_SESSION_KEY=")
	if out, err := check.CombinedOutput(); err == nil || !strings.Contains(string(out), "APP_SESSION_KEY") {
		t.Errorf("APP_ENV=production without keys: %v %s", err, out)
	}
}
