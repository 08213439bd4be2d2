package ws

import (
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound what one client, or all of them, can take. Zero disables a
// limit. Each refusal has its own answer:
//
//	MaxHandshakes          HTTP 503 {"error":"busy"} with Retry-After
//	MaxConnections         HTTP 503 {"error":"too_many_connections"}
//	MaxConnectionsPerUser  HTTP 429 {"error":"too_many_connections_for_user"}
//	ConnectRate            HTTP 429 {"error":"rate_limited"} with Retry-After
//	MessageRate            close 1008 (policy violation) after a flood of client frames
type Limits struct {
	// MaxHandshakes bounds handshakes in flight (token check and upgrade)
	// on this replica. Unlike a per-address rate it does not punish a
	// reverse proxy that every browser comes through: after a deploy the
	// whole replica's clients come back at once and are served as fast as
	// the machine can, those over the bound told to retry a second later.
	MaxHandshakes         int
	MaxConnections        int
	MaxConnectionsPerUser int
	// ConnectRate is new connections per second allowed from one client
	// address (see Config.TrustedProxies), with a burst of ConnectBurst.
	// Off by default: behind a proxy every browser shares one address.
	ConnectRate  float64
	ConnectBurst int
	// MessageRate is client frames per second allowed on one connection,
	// with a burst of MessageBurst.
	MessageRate  float64
	MessageBurst int
}

// Defaults for Limits (used by outboxd's configuration).
const (
	MaxHandshakesDefault         = 1024
	MaxConnectionsDefault        = 20000
	MaxConnectionsPerUserDefault = 20
	ConnectRateDefault           = 0
	ConnectBurstDefault          = 30
	MessageRateDefault           = 20
	MessageBurstDefault          = 40
)

// ClosePolicy is sent to a client that floods the server with frames.
var ClosePolicy = CloseError{1008, "too many messages"}

// addrLimiter is a token bucket per client address, forgotten after idle.
type addrLimiter struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*addrEntry
}

type addrEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

func newAddrLimiter(perSecond float64, burst int) *addrLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst < 1 {
		burst = 1
	}
	return &addrLimiter{rate: rate.Limit(perSecond), burst: burst, m: map[string]*addrEntry{}}
}

// allow reports whether host may connect now, and otherwise how long to wait.
func (a *addrLimiter) allow(host string, now time.Time) (bool, time.Duration) {
	if a == nil {
		return true, 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.m[host]
	if e == nil {
		e = &addrEntry{lim: rate.NewLimiter(a.rate, a.burst)}
		a.m[host] = e
	}
	e.seen = now
	r := e.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// sweep forgets addresses idle long enough for their bucket to be full.
func (a *addrLimiter) sweep(now time.Time) {
	if a == nil {
		return
	}
	idle := time.Duration(float64(a.burst)/float64(a.rate)*float64(time.Second)) + time.Second
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, e := range a.m {
		if now.Sub(e.seen) > idle {
			delete(a.m, k)
		}
	}
}

func retryAfter(d time.Duration) string {
	return strconv.Itoa(int(d/time.Second) + 1)
}
