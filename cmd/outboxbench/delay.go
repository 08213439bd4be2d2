package main

import (
	"context"
	"net"
	"sync"
	"time"
)

// delayProxy stands between outboxd and PostgreSQL and holds every chunk of
// bytes, in each direction, for a fixed delay before passing it on, in
// order: a database one round trip of 2 × delay away (-pg-delay), on a
// machine that has only one. The producers still connect directly: it is
// outboxd's distance to the database that is measured.
type delayProxy struct {
	ln       net.Listener
	upstream string
	delay    time.Duration
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// startDelayProxy listens on 127.0.0.1 and forwards to upstream (host:port).
func startDelayProxy(upstream string, delay time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &delayProxy{ln: ln, upstream: upstream, delay: delay, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the address to connect to instead of upstream.
func (p *delayProxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting, cuts every connection and waits for the copies.
// A connection accepted meanwhile is refused by track.
func (p *delayProxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// track records c to be cut by Close; false once Close has run.
func (p *delayProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *delayProxy) accept() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.upstream, 10*time.Second)
		if err != nil {
			_ = down.Close()
			continue
		}
		if !p.track(down) || !p.track(up) {
			_ = down.Close()
			_ = up.Close()
			return
		}
		p.wg.Go(func() { p.pipe(up, down) })
		p.wg.Go(func() { p.pipe(down, up) })
	}
}

// pipe copies src to dst, each chunk written delay after it was read;
// closing either side ends both directions.
func (p *delayProxy) pipe(dst, src net.Conn) {
	type chunk struct {
		at time.Time
		b  []byte
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := make(chan chunk, 4096)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTimer(0)
		defer t.Stop()
		for c := range q {
			if d := time.Until(c.at); d > 0 {
				t.Reset(d)
				select {
				case <-t.C:
				case <-ctx.Done():
					return
				}
			}
			if _, err := dst.Write(c.b); err != nil {
				cancel()
				_ = src.Close()
				return
			}
		}
	})
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case q <- chunk{time.Now().Add(p.delay), append([]byte(nil), buf[:n]...)}:
			case <-ctx.Done():
			}
		}
		if err != nil || ctx.Err() != nil {
			break // EOF or a close: the other side sees the close below
		}
	}
	close(q)
	wg.Wait()
	_ = dst.Close()
	_ = src.Close()
}
