package proctest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards TCP connections to a target and can cut the network: while
// cut, it forwards nothing in either direction and keeps sockets open, as a
// partition does (no RST, no FIN), so both sides only learn by timeouts.
type Proxy struct {
	Addr   string
	target string
	l      net.Listener
	cut    atomic.Bool
	closed atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	frozen []*atomic.Bool // one per connection pair
	wg     sync.WaitGroup
}

// NewProxy listens on 127.0.0.1 and forwards to target.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: l.Addr().String(), target: target, l: l}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// FreezeExisting makes every connection open now half-open for good: it
// forwards nothing more in either direction and never closes, as a peer
// that vanished without a FIN would. Connections opened later work.
func (p *Proxy) FreezeExisting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.frozen {
		f.Store(true)
	}
}

// Cut stops forwarding; Restore resumes it.
func (p *Proxy) Cut()     { p.cut.Store(true) }
func (p *Proxy) Restore() { p.cut.Store(false) }

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	if p.closed.Swap(true) {
		return
	}
	_ = p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		frozen := &atomic.Bool{}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.frozen = append(p.frozen, frozen)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(up, c, frozen)
		go p.pipe(c, up, frozen)
	}
}

// pipe copies src to dst. While cut, whatever was read — data or the end
// of the stream — waits, as in a partition; it goes through on Restore.
func (p *Proxy) pipe(dst, src net.Conn, frozen *atomic.Bool) {
	defer p.wg.Done()
	defer dst.Close()
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		for p.cut.Load() || frozen.Load() {
			if p.closed.Load() {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
