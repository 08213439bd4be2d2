package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// tcpFloor measures what scenario 5's broadcast costs this machine with no
// WebSocket server at all: one write of a notification-sized message to
// each of n loopback TCP connections, one writer goroutine per connection
// (melody's shape), one reader goroutine per connection on the other side,
// from the moment the writers are released to the last receipt. Both ends
// live in this process, so n is capped by half the file limit.
func tcpFloor(ctx context.Context, e *benchEnv) (result, error) {
	var r result
	n := e.n(10000)
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		n = min(n, int(lim.Cur-200)/2)
	}
	if n < 1 {
		return r, errors.New("file limit too low for the floor measurement")
	}
	servers, clients, err := loopbackPairs(ctx, n)
	defer func() {
		for _, c := range slices.Concat(servers, clients) {
			_ = c.Close()
		}
	}()
	if err != nil {
		return r, err
	}
	msg := make([]byte, 150) // a notification frame's size
	const rounds = 7
	lasts := make([]float64, 0, rounds)
	for range rounds {
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		d, err := floorRound(servers, clients, msg)
		if err != nil {
			return r, err
		}
		lasts = append(lasts, ms(d))
	}
	slices.Sort(lasts)
	r.add("connections", float64(n), "loopback TCP connections")
	r.add("floor_last_receipt", lasts[rounds/2], fmt.Sprintf("ms (median of %d rounds: release → last of all readers)", rounds))
	r.add("floor_last_receipt_min", lasts[0], "ms")
	return r, nil
}

// loopbackPairs opens n connected TCP pairs on 127.0.0.1.
func loopbackPairs(ctx context.Context, n int) (servers, clients []net.Conn, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer l.Close()
	accepted := make(chan net.Conn, n)
	go func() {
		for range n {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var d net.Dialer
	for range n {
		c, err := d.DialContext(ctx, "tcp", l.Addr().String())
		if err != nil {
			return servers, clients, err
		}
		clients = append(clients, c)
		select {
		case s := <-accepted:
			servers = append(servers, s)
		case <-time.After(10 * time.Second):
			return servers, clients, errors.New("accept timed out")
		}
	}
	return servers, clients, nil
}

// floorRound releases one write per server connection and returns the time
// to the last receipt.
func floorRound(servers, clients []net.Conn, msg []byte) (time.Duration, error) {
	var got, last atomic.Int64
	all := make(chan struct{})
	var readers sync.WaitGroup
	for _, c := range clients {
		readers.Go(func() {
			buf := make([]byte, 512)
			_ = c.SetReadDeadline(time.Now().Add(time.Minute))
			if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
				return
			}
			last.Store(time.Now().UnixNano())
			if got.Add(1) == int64(len(clients)) {
				close(all)
			}
		})
	}
	release := make(chan struct{})
	var writers sync.WaitGroup
	for _, c := range servers {
		writers.Go(func() {
			<-release
			_, _ = c.Write(msg)
		})
	}
	time.Sleep(200 * time.Millisecond) // every goroutine parked
	start := time.Now()
	close(release)
	writers.Wait()
	readers.Wait()
	select {
	case <-all:
		return time.Unix(0, last.Load()).Sub(start), nil
	default:
		return 0, fmt.Errorf("only %d of %d readers got the message", got.Load(), len(clients))
	}
}
