package ws

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// The HTTP streaming fallback: Server-Sent Events at GET /ws/sse, for
// networks whose proxies break WebSocket upgrades. The same checks, limits,
// routing, resume and catch-up as /ws/connect — it is one more Transport
// of the same hub, not a second hub. Every envelope a WebSocket client
// would get is one event (event: its type, id: its seq, data: the
// envelope); Last-Event-ID resumes exactly; a close is an "event: close"
// with the code; ": ping" comments keep proxies from timing it out. One
// way only: the topic filter is fixed at connect.

// TransportWebSocket and TransportSSE name the transports in metrics.
const (
	TransportWebSocket = "websocket"
	TransportSSE       = "sse"
)

// handleSSE opens an SSE session. Like handleConnect it is not wrapped by
// otelhttp: a short "ws.handshake" span covers the checks.
func (h *Hub) handleSSE(w http.ResponseWriter, r *http.Request) {
	_, span := h.tel.tracer.Start(r.Context(), "ws.handshake", trace.WithSpanKind(trace.SpanKindServer))
	o, ok := h.openSession(w, r, span, false)
	if !ok {
		return
	}
	rc := http.NewResponseController(w)
	// A stream is not a slow request: no read deadline for it (the
	// server's would end it), and each write gets its own.
	_ = rc.SetReadDeadline(time.Time{})
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	t := &sseTransport{
		h: h, c: o.c, w: bufio.NewWriterSize(w, 4096), rc: rc,
		queue: make(chan []byte, h.cfg.SendBuffer), closeCh: make(chan CloseError, 1), ended: make(chan struct{}),
	}
	o.c.transport = TransportSSE
	close(o.c.upgraded)
	h.attach(o.c, t)
	o.release() // the stream has started: its handshake slot is free
	t.serve(r)
}

// sseTransport is a Transport over one streaming HTTP response. Write
// queues a frame (a bounded channel, as melody's queue); the handler's
// goroutine writes the frames as events, flushes, and reports each one
// written (onSent), and writes the close event first when there is one.
type sseTransport struct {
	h       *Hub
	c       *client
	w       *bufio.Writer
	rc      *http.ResponseController
	queue   chan []byte
	closeCh chan CloseError
	ended   chan struct{}
}

var errSSEQueueFull = errors.New("sse: queue full")

func (t *sseTransport) Write(frame []byte) error {
	select {
	case t.queue <- frame:
		return nil
	default:
		return errSSEQueueFull
	}
}

// Close hands the close to the writer, ahead of queued frames, and waits
// for the stream to end (at most closeWriteWait).
func (t *sseTransport) Close(ce CloseError, _ <-chan struct{}) {
	select {
	case t.closeCh <- ce:
	default:
	}
	select {
	case <-t.ended:
	case <-time.After(closeWriteWait):
	}
}

// serve writes until the session is closed or the client goes away.
func (t *sseTransport) serve(r *http.Request) {
	defer close(t.ended)
	defer t.h.detach(t.c)
	beat := time.NewTicker(t.h.cfg.HeartbeatInterval)
	defer beat.Stop()
	for {
		select {
		case ce := <-t.closeCh:
			t.writeClose(ce)
			return
		default:
		}
		select {
		case ce := <-t.closeCh:
			t.writeClose(ce)
			return
		case frame := <-t.queue:
			if err := t.writeFrame(frame); err != nil {
				return
			}
			t.c.onSent(frame)
		case <-beat.C:
			if t.deadline() != nil || t.flush([]byte(": ping\n\n")) != nil {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

func (t *sseTransport) deadline() error {
	return t.rc.SetWriteDeadline(time.Now().Add(t.h.cfg.WriteTimeout))
}

func (t *sseTransport) flush(b []byte) error {
	if _, err := t.w.Write(b); err != nil {
		return err
	}
	if err := t.w.Flush(); err != nil {
		return err
	}
	return t.rc.Flush()
}

// writeFrame writes a frame's envelopes (a batch session's frame holds
// several, one per line) as events, and flushes once.
func (t *sseTransport) writeFrame(frame []byte) error {
	if err := t.deadline(); err != nil {
		return err
	}
	for len(frame) > 0 {
		line := frame
		if i := bytes.IndexByte(frame, '\n'); i >= 0 {
			line, frame = frame[:i], frame[i+1:]
		} else {
			frame = nil
		}
		var env struct {
			Type string `json:"type"`
			Seq  int64  `json:"seq"`
			Data struct {
				HeadSeq int64 `json:"head_seq"`
			} `json:"data"`
		}
		if err := json.Unmarshal(line, &env); err != nil {
			continue // encoded by the hub: cannot happen
		}
		id := env.Seq
		if env.Type == TypeWelcome {
			// The seq it starts after, so that an EventSource that got
			// nothing else still resumes exactly.
			id = env.Data.HeadSeq
			if t.c.hasSince {
				id = t.c.since
			}
		}
		_, _ = t.w.WriteString("event: ")
		_, _ = t.w.WriteString(env.Type)
		if id > 0 || env.Type == TypeWelcome {
			_, _ = t.w.WriteString("\nid: ")
			_, _ = t.w.WriteString(strconv.FormatInt(id, 10))
		}
		_, _ = t.w.WriteString("\ndata: ")
		_, _ = t.w.Write(line)
		_, _ = t.w.WriteString("\n\n")
	}
	return t.flush(nil)
}

func (t *sseTransport) writeClose(ce CloseError) {
	if t.deadline() != nil {
		return
	}
	b, _ := json.Marshal(struct {
		Code   int    `json:"code"`
		Reason string `json:"reason"`
	}{ce.Code, ce.Reason})
	_ = t.flush(append(append([]byte("event: close\ndata: "), b...), "\n\n"...))
}
