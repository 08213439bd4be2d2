package server

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/grupogad/outboxd/observability"
	"github.com/grupogad/outboxd/relay"
	"github.com/grupogad/outboxd/ws"
)

// DevSecretKey signs tokens when ENVIRONMENT is not production and neither
// SECRET_KEY nor JWKS_URL is set, so the sidecar runs out of the box.
const DevSecretKey = "outboxd-development-secret-change-me"

// Config is outboxd's configuration, from the environment (README,
// "Configuration"), grouped by component; the groups are embedded, so a
// setting reads as cfg.HeartbeatInterval whatever its group. Every default
// of the binary is written in its tag, and only there (the README's table
// is tested against them, and so are the packages' own defaults).
type Config struct {
	// Environment: production disables /ws/_test/* and requires
	// SECRET_KEY or JWKS_URL, and ALLOWED_ORIGINS.
	Environment string `env:"ENVIRONMENT" envDefault:"development"`
	DatabaseSettings
	HTTPSettings
	AuthSettings
	LimitsSettings
	HubSettings
	RelaySettings
	PresenceSettings
	LogSettings
}

// DatabaseSettings are the database and the pools.
type DatabaseSettings struct {
	// DatabaseURL is the PostgreSQL holding the outbox schema.
	DatabaseURL string `env:"DATABASE_URL" envDefault:"postgres://postgres@localhost:5432/postgres?sslmode=disable"`
	// ListenDatabaseURL (optional) is a direct connection to the same
	// database for what a transaction pooler cannot carry: LISTEN,
	// migrations (a session lock) and RELAY_WAKEUP=idle's session lock.
	// Set, DATABASE_URL may point at PgBouncer in transaction mode.
	ListenDatabaseURL string `env:"LISTEN_DATABASE_URL"`
	// ReadDatabaseURL (optional) is a streaming standby of DATABASE_URL:
	// the tailer's and clients' replay reads of events go there while it
	// is at most ReadMaxLag behind, and to the primary otherwise.
	ReadDatabaseURL string        `env:"READ_DATABASE_URL"`
	ReadMaxLag      time.Duration `env:"READ_MAX_LAG" envDefault:"2s"`
	// DatabaseWait is how long the sidecar waits at start for its database
	// before giving up with a non-zero exit status (0: forever).
	DatabaseWait time.Duration `env:"DATABASE_WAIT" envDefault:"60s"`
	// AutoMigrate applies migrations at start.
	AutoMigrate bool `env:"AUTO_MIGRATE" envDefault:"true"`
	// RelayDBConns and ReplayDBConns size the two connection pools: the
	// relay's (sequencer, tailer, retention, readiness) and the clients'
	// replay reads (their bound on concurrent reads).
	RelayDBConns  int `env:"RELAY_DB_CONNS" envDefault:"4"`
	ReplayDBConns int `env:"REPLAY_DB_CONNS" envDefault:"4"`
}

// HTTPSettings: the addresses served and what HTTP accepts.
type HTTPSettings struct {
	// ListenAddr is the HTTP address.
	ListenAddr string `env:"LISTEN_ADDR" envDefault:":8002"`
	// AdminAddr, when set, serves /metrics and /ws/stats (and /healthz,
	// /readyz) on this address instead of LISTEN_ADDR, e.g. 127.0.0.1:9090.
	AdminAddr string `env:"ADMIN_ADDR"`
	// AdminToken, when set, is required as "Authorization: Bearer …" by
	// /metrics and /ws/stats, wherever they are served.
	AdminToken string `env:"ADMIN_TOKEN"`
	// StatsHideRoles leaves connections_by_role empty in /ws/stats.
	StatsHideRoles bool `env:"STATS_HIDE_ROLES" envDefault:"false"`
	// HTTPReadTimeout bounds reading a whole request, body included (a
	// held body is released after it); WebSocket sessions keep their own
	// deadlines once upgraded.
	HTTPReadTimeout time.Duration `env:"HTTP_READ_TIMEOUT" envDefault:"15s"`
	// HTTPIdleTimeout closes keep-alive connections idle that long between
	// requests (never a WebSocket: it is hijacked). Short, so that sockets
	// that send one request and idle do not hold connection slots
	// (MAX_OPEN_CONNS); a reverse proxy's upstream keep-alive must be shorter.
	HTTPIdleTimeout time.Duration `env:"HTTP_IDLE_TIMEOUT" envDefault:"10s"`
	// HTTPMaxHeaderBytes bounds a request's headers (larger: HTTP 431).
	HTTPMaxHeaderBytes int `env:"HTTP_MAX_HEADER_BYTES" envDefault:"16384"`
	// TrustedProxies is a comma list of CIDRs of reverse proxies whose
	// X-Forwarded-For is believed for the client address.
	TrustedProxies []string `env:"TRUSTED_PROXIES" envSeparator:","`
	// AllowedOrigins is a comma list of browser origins; * (the default
	// outside production) allows any.
	AllowedOrigins []string `env:"ALLOWED_ORIGINS" envSeparator:","`
	// DemoPage serves the embedded demo page at / (and its client script).
	// Unset: on outside production, off in production.
	DemoPage *bool `env:"DEMO_PAGE"`
	// PprofAddr, when set, serves net/http/pprof there (e.g. 127.0.0.1:6060).
	PprofAddr string `env:"PPROF_ADDR"`
}

// AuthSettings: how tokens are checked.
type AuthSettings struct {
	// SecretKey enables HS256 tokens.
	SecretKey string `env:"SECRET_KEY"`
	// JWKSURL enables RS256/ES256 tokens.
	JWKSURL     string `env:"JWKS_URL"`
	JWTIssuer   string `env:"JWT_ISSUER"`
	JWTAudience string `env:"JWT_AUDIENCE"`
	// JWKSAllowHTTP accepts an http:// JWKS_URL in production (a key
	// server on a trusted network); by default production wants https.
	JWKSAllowHTTP bool `env:"JWKS_ALLOW_HTTP" envDefault:"false"`
	// JWTRequireExp refuses tokens without exp.
	JWTRequireExp bool `env:"JWT_REQUIRE_EXP" envDefault:"true"`
	// JWTMaxTTL bounds a token's lifetime (exp − iat, or exp − now without
	// iat); outbox.disconnect's revocations are kept that long.
	JWTMaxTTL time.Duration `env:"JWT_MAX_TTL" envDefault:"24h"`
	// TestTokens lets POST /ws/_test/token mint tokens signed with a real
	// SECRET_KEY (outside production only). Without it the endpoint mints
	// only with the built-in development key.
	TestTokens bool `env:"TEST_TOKENS" envDefault:"false"`
}

// LimitsSettings: what one replica, address, user and session may take.
type LimitsSettings struct {
	// MaxOpenConns bounds open TCP connections on LISTEN_ADDR, WebSockets
	// included; past it a connection gets HTTP 503 at once. 0: derived,
	// MAX_CONNECTIONS + 1024 (no bound when MAX_CONNECTIONS is 0).
	MaxOpenConns int `env:"MAX_OPEN_CONNS" envDefault:"0"`
	// MaxConnsPerAddress bounds open TCP connections from one peer address,
	// not counting TRUSTED_PROXIES (0: no bound). Off by default: NAT and
	// proxies put many clients behind one address.
	MaxConnsPerAddress int `env:"MAX_CONNS_PER_ADDRESS" envDefault:"0"`
	// MaxHandshakes bounds WebSocket handshakes in flight; past it HTTP 503
	// with Retry-After: 1 (0: no limit).
	MaxHandshakes int `env:"MAX_HANDSHAKES" envDefault:"1024"`
	// MaxConnections bounds sessions on this replica (0: no limit).
	MaxConnections int `env:"MAX_CONNECTIONS" envDefault:"20000"`
	// MaxConnectionsPerUser bounds one user's sessions on this replica.
	MaxConnectionsPerUser int `env:"MAX_CONNECTIONS_PER_USER" envDefault:"20"`
	// ConnectRate and ConnectBurst: new connections per second per client
	// address (0, the default: no limit; behind a reverse proxy set
	// TRUSTED_PROXIES first, or every browser shares the proxy's budget).
	ConnectRate  float64 `env:"CONNECT_RATE" envDefault:"0"`
	ConnectBurst int     `env:"CONNECT_BURST" envDefault:"30"`
	// ClientMessageRate and ClientMessageBurst: frames per second a client
	// may send; a flood closes it with 1008 (0: no limit).
	ClientMessageRate  float64 `env:"CLIENT_MESSAGE_RATE" envDefault:"20"`
	ClientMessageBurst int     `env:"CLIENT_MESSAGE_BURST" envDefault:"40"`
	// WSMaxMessageSize is the largest client frame, in bytes.
	WSMaxMessageSize int64 `env:"WS_MAX_MESSAGE_SIZE" envDefault:"4096"`
}

// HubSettings: sessions, their queues and catch-up.
type HubSettings struct {
	// HeartbeatInterval between WebSocket pings.
	HeartbeatInterval time.Duration `env:"HEARTBEAT_INTERVAL" envDefault:"30s"`
	// WSSendBuffer is each session's live queue, in frames.
	WSSendBuffer int `env:"WS_SEND_BUFFER" envDefault:"16"`
	// WSSendBufferBytes bounds the event bytes queued for one session.
	WSSendBufferBytes int `env:"WS_SEND_BUFFER_BYTES" envDefault:"524288"`
	// CatchUpPageBytes bounds one catch-up page read from the table;
	// CatchUpMemory what all catch-ups of the replica hold at once.
	CatchUpPageBytes int `env:"CATCHUP_PAGE_BYTES" envDefault:"4194304"`
	CatchUpMemory    int `env:"CATCHUP_MEMORY" envDefault:"33554432"`
	// ReplayMax is the most events a client may replay or lag behind.
	ReplayMax int64 `env:"REPLAY_MAX" envDefault:"100000"`
	// MetricsTopicsMax is how many distinct topics get a metric series of
	// their own; later ones are counted as "other".
	MetricsTopicsMax int `env:"METRICS_TOPICS_MAX" envDefault:"64"`
}

// RelaySettings: sequencing, tailing and retention.
type RelaySettings struct {
	// RelayBatchSize is the most rows sequenced in one transaction.
	RelayBatchSize int `env:"RELAY_BATCH_SIZE" envDefault:"5000"`
	// RelayBatchBytes bounds the payload bytes the tailer reads at once.
	RelayBatchBytes int `env:"RELAY_BATCH_BYTES" envDefault:"1048576"`
	// RelayPollInterval is the longest idle sleep of the sequencer.
	RelayPollInterval time.Duration `env:"RELAY_POLL_INTERVAL" envDefault:"100ms"`
	// RelayMinPollInterval is the sequencer's pause after a batch that was
	// not full, while events flow: rows gather for the next batch.
	RelayMinPollInterval time.Duration `env:"RELAY_MIN_POLL_INTERVAL" envDefault:"2ms"`
	// RelayWakeup is how an idle sequencer learns of new rows: poll,
	// idle (a producer trigger that notifies only while the sequencer
	// sleeps idle) or notify (a producer trigger, every statement).
	RelayWakeup string `env:"RELAY_WAKEUP" envDefault:"poll"`
	// RelayHandoff: the local sequencer hands each committed batch to this
	// replica's hub directly instead of through NOTIFY and a read.
	RelayHandoff bool `env:"RELAY_HANDOFF" envDefault:"true"`
	// RelayStallTimeout is how long the relay may make no progress (pending
	// rows and no batch, a failing sequencer, a tailer that cannot read)
	// before /readyz reports the replica not ready.
	RelayStallTimeout time.Duration `env:"RELAY_STALL_TIMEOUT" envDefault:"30s"`
	// OutboxRetention is how long sequenced rows are kept for resume.
	OutboxRetention time.Duration `env:"OUTBOX_RETENTION" envDefault:"24h"`
}

// PresenceSettings: who is online, recorded in the database.
type PresenceSettings struct {
	// Presence records every replica's sessions in PostgreSQL (the view
	// outbox.online_users) and writes presence events into the stream.
	Presence bool `env:"PRESENCE" envDefault:"false"`
	// PresenceRoles are the roles presence events are targeted at (empty:
	// nobody; none are written).
	PresenceRoles []string `env:"PRESENCE_ROLES" envSeparator:","`
	// PresenceTTL: a replica without a heartbeat for this long is swept by
	// a surviving one, and its users' offline events written.
	PresenceTTL time.Duration `env:"PRESENCE_TTL" envDefault:"30s"`
	// PresenceInterval between presence writes (and heartbeats, sweeps).
	PresenceInterval time.Duration `env:"PRESENCE_INTERVAL" envDefault:"1s"`
}

// LogSettings: slog output.
type LogSettings struct {
	// LogLevel: debug, info, warn, error.
	LogLevel string `env:"LOG_LEVEL" envDefault:"info"`
	// LogFormat: text or json (default json in production, text elsewhere).
	LogFormat string `env:"LOG_FORMAT"`
}

// SigningKey is the HS256 key: SECRET_KEY, or outside production when no
// key source is set, DevSecretKey (dev reports that it is the latter).
func (c *Config) SigningKey() (key string, dev bool) {
	if c.SecretKey != "" || c.Production() || c.JWKSURL != "" {
		return c.SecretKey, false
	}
	return DevSecretKey, true
}

// TestTokensEnabled reports whether POST /ws/_test/token mints (the contract,
// "Development endpoints"): never in production; otherwise with the
// built-in development key, or with a real key only when TEST_TOKENS=true.
func (c *Config) TestTokensEnabled() bool {
	if c.Production() {
		return false
	}
	_, dev := c.SigningKey()
	return dev || (c.TestTokens && c.SecretKey != "")
}

// DevFeatures lists the development conveniences this configuration turns
// on, for the start-up log.
func (c *Config) DevFeatures() []string {
	var on []string
	if _, dev := c.SigningKey(); dev {
		on = append(on, "development signing key (SECRET_KEY unset)")
	}
	if c.TestTokensEnabled() {
		on = append(on, "POST /ws/_test/token")
	}
	if !c.Production() {
		on = append(on, "POST /ws/_test/broadcast")
	}
	if slices.Contains(c.AllowedOrigins, "*") {
		on = append(on, "any Origin (ALLOWED_ORIGINS=*)")
	}
	if c.PprofAddr != "" {
		on = append(on, "pprof on "+c.PprofAddr)
	}
	return on
}

// DemoPageEnabled is DEMO_PAGE, or its default: on outside production.
func (c *Config) DemoPageEnabled() bool {
	if c.DemoPage != nil {
		return *c.DemoPage
	}
	return !c.Production()
}

// OpenConnsLimit is MAX_OPEN_CONNS, or derived from MAX_CONNECTIONS.
func (c *Config) OpenConnsLimit() int {
	if c.MaxOpenConns > 0 || c.MaxConnections == 0 {
		return c.MaxOpenConns
	}
	return c.MaxConnections + 1024
}

// StartWarnings are settings that start but that an operator should
// know about: in production, no per-address bound and no proxy to find the
// real address (one address can then take every connection slot); an open
// connection bound above what the process may open (the kernel refuses
// sockets first, with no 503 and no metric).
func (c *Config) StartWarnings() []string {
	var w []string
	if c.Production() && len(c.TrustedProxies) == 0 && c.MaxConnsPerAddress == 0 {
		w = append(w, "TRUSTED_PROXIES is empty and MAX_CONNS_PER_ADDRESS is 0: one client address can hold every connection slot (MAX_OPEN_CONNS); behind a proxy set TRUSTED_PROXIES, exposed directly set MAX_CONNS_PER_ADDRESS")
	}
	if limit, ok := fileLimit(); ok && c.OpenConnsLimit() > 0 && uint64(c.OpenConnsLimit()) > limit {
		w = append(w, fmt.Sprintf("MAX_OPEN_CONNS is %d but the process may open only %d files (ulimit -n): connections past that fail at accept, with no 503; raise the limit or lower MAX_OPEN_CONNS/MAX_CONNECTIONS", c.OpenConnsLimit(), limit))
	}
	return w
}

// fileLimit is the process's soft RLIMIT_NOFILE.
func fileLimit() (uint64, bool) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	return rl.Cur, true
}

// Pooled reports whether DATABASE_URL may be a transaction pooler
// (LISTEN_DATABASE_URL is set).
func (c *Config) Pooled() bool { return c.ListenDatabaseURL != "" }

// Production reports whether ENVIRONMENT is production.
func (c *Config) Production() bool { return c.Environment == "production" }

// LoadConfig reads and validates the environment. The error names every
// bad variable.
func LoadConfig(environ map[string]string) (Config, error) {
	var c Config
	var problems []string
	unparsed := map[string]bool{}
	if err := env.ParseWithOptions(&c, env.Options{Environment: environ}); err != nil {
		var agg env.AggregateError
		if !errors.As(err, &agg) {
			return c, fmt.Errorf("invalid configuration: %w", err)
		}
		for _, e := range agg.Errors {
			var pe env.ParseError
			if errors.As(e, &pe) {
				name := envName(pe.Name)
				unparsed[name] = true
				problems = append(problems, fmt.Sprintf("%s: %q is not a valid %s", name, environ[name], pe.Type))
				continue
			}
			problems = append(problems, e.Error())
		}
	}
	for _, p := range c.validate() {
		// A variable that did not parse is reported once, not again for
		// the zero value it left behind.
		if name, _, _ := strings.Cut(p, ":"); !unparsed[name] {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		return c, fmt.Errorf("invalid configuration:\n  - %s", strings.Join(problems, "\n  - "))
	}
	c.applyDefaults()
	return c, nil
}

func (c *Config) validate() []string {
	var p []string
	if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		p = append(p, "DATABASE_URL: want postgres://user@host:port/db")
	}
	if u, err := url.Parse(c.ListenDatabaseURL); c.ListenDatabaseURL != "" && (err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql")) {
		p = append(p, "LISTEN_DATABASE_URL: want postgres://user@host:port/db (a direct connection, not through a pooler)")
	}
	if u, err := url.Parse(c.ReadDatabaseURL); c.ReadDatabaseURL != "" && (err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql")) {
		p = append(p, "READ_DATABASE_URL: want postgres://user@host:port/db (a streaming standby of DATABASE_URL)")
	}
	if c.ReadMaxLag < 100*time.Millisecond || c.ReadMaxLag > 10*time.Minute {
		p = append(p, fmt.Sprintf("READ_MAX_LAG: %s; want 100ms to 10m", c.ReadMaxLag))
	}
	if c.ListenAddr == "" || !strings.Contains(c.ListenAddr, ":") {
		p = append(p, fmt.Sprintf("LISTEN_ADDR: %q is not host:port", c.ListenAddr))
	}
	switch c.Environment {
	case "development", "test", "staging", "production":
	default:
		p = append(p, fmt.Sprintf("ENVIRONMENT: %q; want development, test, staging or production", c.Environment))
	}
	if c.Production() {
		if c.SecretKey == "" && c.JWKSURL == "" {
			p = append(p, "SECRET_KEY or JWKS_URL: one is required in production")
		}
		if len(c.AllowedOrigins) == 0 {
			p = append(p, "ALLOWED_ORIGINS: required in production")
		}
		for _, o := range c.AllowedOrigins {
			if strings.TrimSpace(o) == "*" {
				p = append(p, "ALLOWED_ORIGINS: * is not allowed in production")
			}
		}
		if u, err := url.Parse(c.JWKSURL); c.JWKSURL != "" && err == nil && u.Scheme == "http" && !c.JWKSAllowHTTP {
			p = append(p, "JWKS_URL: http:// in production (keys could be swapped in transit); use https or set JWKS_ALLOW_HTTP=true")
		}
		if c.JWKSURL != "" && c.JWTIssuer == "" {
			p = append(p, "JWT_ISSUER: required in production with JWKS_URL (else a token the provider issued for another service passes)")
		}
		if c.JWKSURL != "" && c.JWTAudience == "" {
			p = append(p, "JWT_AUDIENCE: required in production with JWKS_URL (else a token the provider issued for another service passes)")
		}
	}
	if c.AdminAddr != "" && !strings.Contains(c.AdminAddr, ":") {
		p = append(p, fmt.Sprintf("ADMIN_ADDR: %q is not host:port", c.AdminAddr))
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		p = append(p, "ADMIN_TOKEN: shorter than 16 bytes")
	}
	if c.HTTPReadTimeout < time.Second || c.HTTPReadTimeout > 10*time.Minute {
		p = append(p, fmt.Sprintf("HTTP_READ_TIMEOUT: %s; want 1s to 10m", c.HTTPReadTimeout))
	}
	if c.HTTPIdleTimeout < time.Second || c.HTTPIdleTimeout > time.Hour {
		p = append(p, fmt.Sprintf("HTTP_IDLE_TIMEOUT: %s; want 1s to 1h", c.HTTPIdleTimeout))
	}
	if c.JWTMaxTTL < time.Minute || c.JWTMaxTTL > 30*24*time.Hour {
		p = append(p, fmt.Sprintf("JWT_MAX_TTL: %s; want 1m to 720h", c.JWTMaxTTL))
	}
	if c.HTTPMaxHeaderBytes < 4096 || c.HTTPMaxHeaderBytes > 1<<20 {
		p = append(p, fmt.Sprintf("HTTP_MAX_HEADER_BYTES: %d; want 4096 to 1048576 (tokens are at most 8 KiB)", c.HTTPMaxHeaderBytes))
	}
	if c.SecretKey != "" && len(c.SecretKey) < 16 {
		p = append(p, "SECRET_KEY: shorter than 16 bytes")
	}
	if c.JWKSURL != "" {
		if u, err := url.Parse(c.JWKSURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			p = append(p, "JWKS_URL: want an http(s) URL")
		}
	}
	for _, o := range c.AllowedOrigins {
		o = strings.TrimSpace(o)
		if o == "*" {
			continue
		}
		if u, err := url.Parse(o); err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			p = append(p, fmt.Sprintf("ALLOWED_ORIGINS: %q is not an origin like https://app.example.com", o))
		}
	}
	if c.PresenceInterval < 100*time.Millisecond || c.PresenceInterval > time.Minute {
		p = append(p, fmt.Sprintf("PRESENCE_INTERVAL: %s; want 100ms to 1m", c.PresenceInterval))
	}
	if c.PresenceTTL < 3*c.PresenceInterval || c.PresenceTTL > time.Hour {
		p = append(p, fmt.Sprintf("PRESENCE_TTL: %s; want 3 × PRESENCE_INTERVAL (%s) to 1h, so that a live replica's heartbeat is never late", c.PresenceTTL, 3*c.PresenceInterval))
	}
	for _, r := range c.PresenceRoles {
		if r = strings.TrimSpace(r); r == "" || len(r) > 256 {
			p = append(p, fmt.Sprintf("PRESENCE_ROLES: %q is not a role name (comma list, each 1 to 256 bytes)", r))
		}
	}
	if len(c.PresenceRoles) > 1000 {
		p = append(p, "PRESENCE_ROLES: more than 1000 roles (an event's targets are bounded at 1000)")
	}
	if len(c.PresenceRoles) > 0 && !c.Presence {
		p = append(p, "PRESENCE_ROLES: set without PRESENCE=true")
	}
	if c.HeartbeatInterval < time.Second || c.HeartbeatInterval > 10*time.Minute {
		p = append(p, fmt.Sprintf("HEARTBEAT_INTERVAL: %s; want between 1s and 10m", c.HeartbeatInterval))
	}
	if c.WSSendBuffer < 8 || c.WSSendBuffer > 65536 {
		p = append(p, fmt.Sprintf("WS_SEND_BUFFER: %d; want 8 to 65536 frames", c.WSSendBuffer))
	}
	if c.WSMaxMessageSize < 128 || c.WSMaxMessageSize > 1<<20 {
		p = append(p, fmt.Sprintf("WS_MAX_MESSAGE_SIZE: %d; want 128 to 1048576 bytes", c.WSMaxMessageSize))
	}
	if c.RelayBatchSize < 1 || c.RelayBatchSize > 100000 {
		p = append(p, fmt.Sprintf("RELAY_BATCH_SIZE: %d; want 1 to 100000", c.RelayBatchSize))
	}
	if c.RelayPollInterval < time.Millisecond || c.RelayPollInterval > time.Minute {
		p = append(p, fmt.Sprintf("RELAY_POLL_INTERVAL: %s; want 1ms to 1m", c.RelayPollInterval))
	}
	if c.RelayMinPollInterval < 100*time.Microsecond || c.RelayMinPollInterval > c.RelayPollInterval {
		p = append(p, fmt.Sprintf("RELAY_MIN_POLL_INTERVAL: %s; want 100µs to RELAY_POLL_INTERVAL (%s)", c.RelayMinPollInterval, c.RelayPollInterval))
	}
	if c.RelayWakeup != relay.WakeupPoll && c.RelayWakeup != relay.WakeupIdle && c.RelayWakeup != relay.WakeupNotify {
		p = append(p, fmt.Sprintf("RELAY_WAKEUP: %q; want poll, idle or notify", c.RelayWakeup))
	}
	if _, err := ws.ParseTrustedProxies(c.TrustedProxies); err != nil {
		p = append(p, "TRUSTED_PROXIES: "+err.Error())
	}
	if c.DatabaseWait < 0 {
		p = append(p, fmt.Sprintf("DATABASE_WAIT: %s; want 0 (forever) or more", c.DatabaseWait))
	}
	for _, b := range []struct {
		name     string
		v, lo, h int
	}{
		{"WS_SEND_BUFFER_BYTES", c.WSSendBufferBytes, 16 << 10, 1 << 30},
		{"CATCHUP_PAGE_BYTES", c.CatchUpPageBytes, 512 << 10, 1 << 30},
		{"CATCHUP_MEMORY", c.CatchUpMemory, 2 * c.CatchUpPageBytes, 1 << 40},
		{"RELAY_BATCH_BYTES", c.RelayBatchBytes, 256 << 10, 1 << 30},
		{"RELAY_DB_CONNS", c.RelayDBConns, 3, 100},
		{"REPLAY_DB_CONNS", c.ReplayDBConns, 1, 1000},
	} {
		if b.v < b.lo || b.v > b.h {
			p = append(p, fmt.Sprintf("%s: %d; want %d to %d", b.name, b.v, b.lo, b.h))
		}
	}
	if c.MetricsTopicsMax < 1 || c.MetricsTopicsMax > 10000 {
		p = append(p, fmt.Sprintf("METRICS_TOPICS_MAX: %d; want 1 to 10000", c.MetricsTopicsMax))
	}
	if c.RelayStallTimeout < time.Second {
		p = append(p, fmt.Sprintf("RELAY_STALL_TIMEOUT: %s; want at least 1s", c.RelayStallTimeout))
	}
	if c.OutboxRetention < time.Minute {
		p = append(p, fmt.Sprintf("OUTBOX_RETENTION: %s; want at least 1m", c.OutboxRetention))
	}
	limits := map[string]float64{
		"MAX_HANDSHAKES": float64(c.MaxHandshakes), "MAX_OPEN_CONNS": float64(c.MaxOpenConns),
		"MAX_CONNS_PER_ADDRESS": float64(c.MaxConnsPerAddress), "MAX_CONNECTIONS": float64(c.MaxConnections), "MAX_CONNECTIONS_PER_USER": float64(c.MaxConnectionsPerUser),
		"CONNECT_RATE": c.ConnectRate, "CONNECT_BURST": float64(c.ConnectBurst),
		"CLIENT_MESSAGE_RATE": c.ClientMessageRate, "CLIENT_MESSAGE_BURST": float64(c.ClientMessageBurst),
	}
	names := make([]string, 0, len(limits))
	for name := range limits {
		names = append(names, name)
	}
	sort.Strings(names) // a stable message
	for _, name := range names {
		if v := limits[name]; v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			p = append(p, fmt.Sprintf("%s: %v; want 0 (no limit) or more", name, v))
		}
	}
	if c.ReplayMax < 1 {
		p = append(p, fmt.Sprintf("REPLAY_MAX: %d; want at least 1", c.ReplayMax))
	}
	if _, err := observability.ParseLevel(c.LogLevel); err != nil {
		p = append(p, "LOG_LEVEL: "+err.Error())
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		p = append(p, fmt.Sprintf("LOG_FORMAT: %q; want text or json", c.LogFormat))
	}
	return p
}

func (c *Config) applyDefaults() {
	for i := range c.AllowedOrigins {
		c.AllowedOrigins[i] = strings.TrimSpace(c.AllowedOrigins[i])
	}
	if len(c.AllowedOrigins) == 0 {
		c.AllowedOrigins = []string{"*"}
	}
	for i := range c.PresenceRoles {
		c.PresenceRoles[i] = strings.TrimSpace(c.PresenceRoles[i])
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
		if c.Production() {
			c.LogFormat = "json"
		}
	}
}

// envName maps a Config field name to its environment variable.
func envName(field string) string {
	f, ok := reflect.TypeFor[Config]().FieldByName(field)
	if !ok {
		return field
	}
	name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
	return name
}

// Variable is one environment variable Config reads.
type Variable struct {
	Name string
	// Default is its envDefault ("" with HasDefault false: none).
	Default    string
	HasDefault bool
}

// Variables lists every environment variable Config reads, group by group.
func Variables() []Variable {
	var out []Variable
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
				continue
			}
			if name, _, _ := strings.Cut(f.Tag.Get("env"), ","); name != "" {
				def, ok := f.Tag.Lookup("envDefault")
				out = append(out, Variable{Name: name, Default: def, HasDefault: ok})
			}
		}
	}
	walk(reflect.TypeFor[Config]())
	return out
}
