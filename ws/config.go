package ws

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/grupogad/outboxd/stream"
)

// Defaults for Config.
const (
	HeartbeatIntervalDefault = 30 * time.Second
	SendBufferDefault        = 16
	MaxMessageSizeDefault    = 4096
	ReplayMaxDefault         = 100000
	LagWindowDefault         = 10 * time.Second
	SocketSendBufferDefault  = 128 << 10
	WriteTimeoutDefault      = 10 * time.Second
	MetricsTopicsMaxDefault  = 64
	SendBufferBytesDefault   = 512 << 10
	CatchUpPageBytesDefault  = 4 << 20
	CatchUpMemoryDefault     = 32 << 20
)

// Config configures the Hub. Zero values take the defaults.
type Config struct {
	// Production disables /ws/_test/* (HTTP 403 {"status":"forbidden"}).
	Production bool
	// TestTokens enables POST /ws/_test/token (never in production). The
	// caller decides: outboxd enables it with its built-in development key
	// or TEST_TOKENS=true, never by default with a real key.
	TestTokens bool
	// HideRoleNames leaves connections_by_role empty in /ws/stats (role
	// names can say more about an organisation than it wants public).
	HideRoleNames bool
	// TrustedProxies are the reverse proxies whose X-Forwarded-For is
	// believed (see clientAddr); empty: the peer address is the client's.
	TrustedProxies []netip.Prefix
	// AllowedOrigins lists browser origins allowed to connect
	// ("https://app.example"); "*" allows any. Requests without an Origin
	// header (non-browser clients) are allowed.
	AllowedOrigins []string
	// HeartbeatInterval between WebSocket pings (30 s); a client that does
	// not answer within 1.5 × interval is closed.
	HeartbeatInterval time.Duration
	// SendBuffer is each session's live queue, in frames (16). When it
	// fills, the session catches up instead, from the hub's recent frames
	// in memory or else from the table.
	SendBuffer int
	// SendBufferBytes bounds the event bytes queued for one session (512
	// KiB); past it the session catches up as when its queue is full. A
	// frame larger than that still goes, alone. Live frames are shared by
	// every recipient; catch-up frames are the session's own.
	SendBufferBytes int
	// CatchUpPageBytes bounds one table catch-up page (4 MiB), and
	// CatchUpMemory what every catch-up of this hub holds at once (32 MiB):
	// a page reserves twice its budget (rows and frames) until its last
	// frame is queued; readers wait for room. A client's page budget starts
	// at 512 KiB and grows only while its pages come back full.
	CatchUpPageBytes int
	CatchUpMemory    int
	// MaxMessageSize is the largest client frame, in bytes (4096); larger
	// ones close the connection with 1009.
	MaxMessageSize int64
	// ReplayMax is the most events a client may replay on resume (more:
	// resync_required), and stay behind for LagWindow (more: closed 4008).
	ReplayMax int64
	// LagWindow is how long a client may stay more than ReplayMax behind
	// without gaining on the head before it is closed (10 s).
	LagWindow time.Duration
	// WriteTimeout bounds one socket write (10 s).
	WriteTimeout time.Duration
	// SocketSendBuffer caps the kernel send buffer of each connection
	// (SocketSendBufferDefault). Linux would grow it to megabytes: that
	// much data would sit in the kernel per slow client, and the hub could
	// not tell a client that reads slowly from one that stopped reading.
	SocketSendBuffer int
	// MetricsTopicsMax is how many distinct topics get a metric series of
	// their own (64); later ones are counted under "other".
	MetricsTopicsMax int
	// Limits against abuse; zero values disable each limit.
	Limits Limits
	// TracerProvider and MeterProvider default to the OTel globals. Under a
	// noop.TracerProvider the hub builds no per-event spans.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Ready reports whether the relay is running, for /readyz.
	Ready func(ctx context.Context) error
	// Degraded, if set, says how the relay is working while still ready
	// ("" when as configured): named in /readyz's detailed body.
	Degraded func() string
	// Presence, if set, is told of every session admitted and ended, and
	// of a refresh's change of roles (PRESENCE: presence.Recorder).
	Presence Presence
	// Reads, if set, says where event reads go (READ_DATABASE_URL): shown
	// in /ws/stats as relay.reads.
	Reads  func() stream.ReadsStatus
	Logger *slog.Logger
}

// Presence is told of sessions as the hub admits and ends them, under the
// hub's lock: it must only record, never block. Each SessionClosed matches
// one SessionOpened, with the same roles.
type Presence interface {
	SessionOpened(userID string, roles []string)
	SessionClosed(userID string, roles []string)
}

func (c *Config) setDefaults() {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = HeartbeatIntervalDefault
	}
	if c.SendBuffer <= controlReserve {
		c.SendBuffer = SendBufferDefault
	}
	if c.SendBufferBytes <= 0 {
		c.SendBufferBytes = SendBufferBytesDefault
	}
	if c.CatchUpPageBytes <= 0 {
		c.CatchUpPageBytes = CatchUpPageBytesDefault
	}
	c.CatchUpPageBytes = max(c.CatchUpPageBytes, 2*maxRowBytes) // a page holds at least one row
	if c.CatchUpMemory <= 0 {
		c.CatchUpMemory = CatchUpMemoryDefault
	}
	c.CatchUpMemory = max(c.CatchUpMemory, 2*c.CatchUpPageBytes) // at least one page at a time
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = MaxMessageSizeDefault
	}
	if c.ReplayMax <= 0 {
		c.ReplayMax = ReplayMaxDefault
	}
	if c.SocketSendBuffer <= 0 {
		c.SocketSendBuffer = SocketSendBufferDefault
	}
	if c.LagWindow <= 0 {
		c.LagWindow = LagWindowDefault
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = WriteTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MetricsTopicsMax <= 0 {
		c.MetricsTopicsMax = MetricsTopicsMaxDefault
	}
	if len(c.AllowedOrigins) == 0 {
		c.AllowedOrigins = []string{"*"}
	}
}

// Per-connection buffers, in bytes (BENCHMARKS.md, scenario 5): each
// session holds its read buffer; write buffers are pooled and held only
// while a message is written.
const (
	clientReadBuffer  = 256
	clientWriteBuffer = 8 << 10
)
