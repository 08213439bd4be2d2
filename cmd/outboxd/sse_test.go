package main

import (
	"bufio"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
	"github.com/grupogad/outboxd/ws"
)

// SSE through the real server: a stream outlives HTTP_READ_TIMEOUT (its
// read deadline is cleared), gives its handshake slot back once started
// (three streams with MAX_HANDSHAKES=2), and delivers what is committed.
func TestSSEThroughTheServer(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	p := startOutboxd(t, db, "HTTP_READ_TIMEOUT=1s", "MAX_HANDSHAKES=2", "HEARTBEAT_INTERVAL=1s")
	tok, err := ws.MintHS256(testSecret, "op1", []string{"LEVEL_1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var readers []*bufio.Reader
	for range 3 {
		resp, err := http.Get("http://" + p.Addr + "/ws/sse?token=" + url.QueryEscape(tok))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream: HTTP %d", resp.StatusCode)
		}
		readers = append(readers, bufio.NewReader(resp.Body))
	}
	// Past the read timeout: three heartbeats on the first stream.
	for pings := 0; pings < 3; {
		line, err := readers[0].ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended after %d pings: %v", pings, err)
		}
		if strings.HasPrefix(line, ": ping") {
			pings++
		}
	}
	runCLI(t, db, "emit", "--topic", "task_event", "--data", `{"n":1}`, "--roles", "LEVEL_1")
	for i, br := range readers {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			if strings.HasPrefix(line, "event: task_event") {
				break
			}
		}
	}
}
