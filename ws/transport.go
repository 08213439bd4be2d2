package ws

import (
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
)

// Transport is a session's way to its client. The hub and the client logic
// (routing, flow control, catch-up, disconnects) are written against it;
// melody's WebSocket session is one (wsTransport), and a one-way HTTP
// stream can be another. What flow control needs of a transport:
//
//   - Write queues one text frame and never blocks (a full queue is an
//     error: the client accounts for its queue so that it never is), and
//     the transport reports every frame it has written to the socket with
//     client.onSent, from its own goroutine — never from inside Write,
//     which runs with the session's lock held;
//   - Close delivers a close (code and reason) to the client straight, not
//     behind queued frames (a slow client's queue may be full: melody's
//     trap, docs/design.md), then ends the connection; ended is closed
//     once the session is over, for a transport that lets the client
//     answer first. Close is called once per session, and may block.
//
// The transport owns the connection's own chores: melody keeps the
// upgrade, the read loop, ping/pong and its write queue.
type Transport interface {
	Write(frame []byte) error
	Close(ce CloseError, ended <-chan struct{})
}

// wsTransport is melody's WebSocket session as a Transport.
type wsTransport struct{ s *melody.Session }

func (t wsTransport) Write(frame []byte) error { return t.s.Write(frame) }

// Close writes the close frame with the connection's WriteControl (safe
// beside melody's writer), never through melody's queue. Once it is
// written the socket is not closed at once: frames of the client's still
// unread (a ping flood's, say) would make the kernel answer with a reset,
// and a reset can destroy the close frame before the client reads it — it
// would see 1006, not the code. melody's read loop goes on draining the
// socket until the client's own close frame ends the session (ended), and
// a client that does not answer within closeWriteWait is cut.
func (t wsTransport) Close(ce CloseError, ended <-chan struct{}) {
	conn := t.s.WebsocketConnection()
	err := conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(ce.Code, ce.Reason),
		time.Now().Add(closeWriteWait))
	if err == nil {
		answer := time.NewTimer(closeWriteWait)
		select {
		case <-ended:
		case <-answer.C:
		}
		answer.Stop()
	}
	_ = conn.Close()
}
