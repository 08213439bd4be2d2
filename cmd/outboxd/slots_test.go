package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/internal/testsignal"
	"github.com/grupogad/outboxd/ws"
)

// 500 sockets from one address that each send one request and then idle
// hold every connection slot (MAX_OPEN_CONNS=400) only until the default
// keep-alive idle timeout closes them (10 s; it was 60 s): a WebSocket
// client from another address then gets in, well within its bound.
func TestIdleKeepAlivesDoNotHoldTheSlots(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := startOutboxd(t, db, "MAX_OPEN_CONNS=400", "LOG_LEVEL=info")
	var idle []net.Conn
	t.Cleanup(func() {
		for _, c := range idle {
			_ = c.Close()
		}
	})
	held := 0
	for range 500 {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: outboxd\r\n\r\n"); err != nil {
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				held++
			}
			resp.Body.Close()
		}
	}
	if held < 300 {
		t.Fatalf("only %d idle keep-alives held a slot: the test does not fill MAX_OPEN_CONNS", held)
	}
	tok, err := ws.MintHS256(testSecret, "op1", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second,
		NetDial: func(network, addr string) (net.Conn, error) {
			nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
			return nd.Dial(network, addr)
		}}
	start := time.Now()
	refused := 0
	testsignal.Eventually(t, 20*time.Second, func() bool {
		conn, _, err := d.Dial("ws://"+p.Addr+"/ws/connect?token="+url.QueryEscape(tok), nil)
		if err != nil {
			refused++
			return false
		}
		_ = conn.Close()
		return true
	}, func() string {
		return fmt.Sprintf("a WebSocket client from another address still refused (%d tries)", refused)
	})
	if refused == 0 {
		t.Fatal("the first WebSocket connect got in: the idle sockets did not hold the slots")
	}
	t.Logf("in after %s, %d refused tries", time.Since(start).Round(time.Millisecond), refused)
}

// In production: the demo page is off unless DEMO_PAGE=true, and the
// start-up log warns that one address can take every slot when neither
// TRUSTED_PROXIES nor MAX_CONNS_PER_ADDRESS is set.
func TestProductionDefaults(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	prod := []string{"ENVIRONMENT=production", "ALLOWED_ORIGINS=https://app.example"}
	p := startOutboxd(t, db, prod...)
	if code := httpStatus(t, "http://"+p.Addr+"/"); code != http.StatusNotFound {
		t.Errorf("GET / in production: %d, want 404 (no demo page)", code)
	}
	if !strings.Contains(p.Stderr.String(), "TRUSTED_PROXIES is empty and MAX_CONNS_PER_ADDRESS is 0") {
		t.Errorf("no warning about per-address limits:\n%s", p.Stderr.String())
	}
	withPage := startOutboxd(t, db, append(prod, "DEMO_PAGE=true", "MAX_CONNS_PER_ADDRESS=50")...)
	if code := httpStatus(t, "http://"+withPage.Addr+"/"); code != http.StatusOK {
		t.Errorf("GET / with DEMO_PAGE=true: %d", code)
	}
	if strings.Contains(withPage.Stderr.String(), "TRUSTED_PROXIES is empty") {
		t.Errorf("warned with MAX_CONNS_PER_ADDRESS set")
	}
	dev := startOutboxd(t, db, "MAX_OPEN_CONNS=100000000")
	if code := httpStatus(t, "http://"+dev.Addr+"/"); code != http.StatusOK {
		t.Errorf("GET / in development: %d", code)
	}
	if !strings.Contains(dev.Stderr.String(), "MAX_OPEN_CONNS is 100000000 but the process may open only") {
		t.Errorf("no warning about MAX_OPEN_CONNS over the file limit:\n%s", dev.Stderr.String())
	}
}

func httpStatus(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
