// Package connlimit bounds the TCP connections an HTTP server holds open:
// in total, and per peer address except for trusted proxies. A connection
// over a bound is answered at once with HTTP 503 and closed, so the client
// sees a clean refusal instead of a hang, and the server's file descriptors
// stay available to the clients it serves.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Config bounds a Listener. Zero disables a bound.
type Config struct {
	// Max is the most connections open at once.
	Max int
	// PerAddress is the most connections open at once from one peer
	// address; peers in Exempt (reverse proxies, through which every client
	// comes) are not counted.
	PerAddress int
	Exempt     []netip.Prefix
	// OnRefuse, if set, is called with "total" or "address" for every
	// refused connection.
	OnRefuse func(reason string)
}

// refusal is what a refused connection reads before it is closed.
const refusal = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 77\r\n\r\n" +
	`{"error":"too_many_connections","detail":"too many open connections; retry"}` + "\n"

// Listener wraps a net.Listener with the bounds of Config.
type Listener struct {
	net.Listener
	cfg Config

	mu     sync.Mutex
	open   int
	byAddr map[netip.Addr]int
}

// New wraps l.
func New(l net.Listener, cfg Config) *Listener {
	return &Listener{Listener: l, cfg: cfg, byAddr: map[netip.Addr]int{}}
}

// Open returns how many connections are open.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Accept returns the next connection within the bounds; connections over
// them are refused and never returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := peerAddr(c)
		if reason := l.admit(addr); reason != "" {
			if l.cfg.OnRefuse != nil {
				l.cfg.OnRefuse(reason)
			}
			go refuse(c)
			continue
		}
		return &conn{Conn: c, l: l, addr: addr}, nil
	}
}

func (l *Listener) exempt(a netip.Addr) bool {
	for _, p := range l.cfg.Exempt {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (l *Listener) admit(a netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.Max > 0 && l.open >= l.cfg.Max {
		return "total"
	}
	counted := l.cfg.PerAddress > 0 && a.IsValid() && !l.exempt(a)
	if counted && l.byAddr[a] >= l.cfg.PerAddress {
		return "address"
	}
	l.open++
	if counted {
		l.byAddr[a]++
	}
	return ""
}

func (l *Listener) release(a netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if n, ok := l.byAddr[a]; ok {
		if n <= 1 {
			delete(l.byAddr, a)
		} else {
			l.byAddr[a] = n - 1
		}
	}
}

func peerAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func refuse(c net.Conn) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write([]byte(refusal))
	_ = c.Close()
}

// conn releases its place once, on the first Close.
type conn struct {
	net.Conn
	l    *Listener
	addr netip.Addr
	once sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() { c.l.release(c.addr) })
	return c.Conn.Close()
}

// SetWriteBuffer reaches the TCP connection's socket option through the
// wrapper (the hub bounds each connection's kernel send buffer).
func (c *conn) SetWriteBuffer(n int) error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		return tc.SetWriteBuffer(n)
	}
	return nil
}
