// Package presence records who is online in PostgreSQL (PRESENCE=true), so
// an app reads it as rows of its own database: the view
// outbox.online_users, joinable with its tables and read in the same
// REPEATABLE READ snapshot as outbox.head(), then followed through the
// stream's presence events (migration 00011).
//
// A Recorder is told of every session the hub admits and ends
// (ws.Presence). It keeps per-user counts in memory and, every Interval,
// writes what changed in one transaction:
//
//  1. its replica's heartbeat (outbox.presence_replicas.seen_at);
//  2. the per-user lock rows of the users it changes, in user_id order
//     (outbox.presence_users: two replicas changing one user serialise);
//  3. its own rows of those users (outbox.presence_sessions);
//  4. for each user whose online state flipped across every replica, the
//     flip and a presence event targeted at Roles, in the same transaction.
//
// Then it sweeps: a replica whose heartbeat is older than TTL (stopped,
// killed, cut off) has its rows deleted and its users' offline events
// written by whichever survivor gets there first (FOR UPDATE SKIP LOCKED
// on its replica row), in one transaction. A replica that finds its own
// row swept when it comes back writes all its sessions again.
//
// A graceful stop writes nothing: the stopped replica's sessions are swept
// after TTL, by which time most of them have reconnected elsewhere and no
// offline event is due. Every statement runs inside a transaction, without
// session state: it works through a transaction pooler.
package presence

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/grupogad/outboxd/internal/startstop"
)

// Topic is the topic of presence events; outbox.emit refuses it.
const Topic = "presence"

// Defaults for Config.
const (
	TTLDefault      = 30 * time.Second
	IntervalDefault = time.Second
)

// Config configures a Recorder. Zero values take the defaults.
type Config struct {
	// ReplicaID names this process's rows (default: host name and a random
	// suffix, new at every start).
	ReplicaID string
	// Roles are the targets of presence events (PRESENCE_ROLES); empty: no
	// client is sent presence events and none are written.
	Roles []string
	// TTL: a replica whose heartbeat is older is swept (30 s).
	TTL time.Duration
	// Interval between writes, heartbeats and sweeps (1 s).
	Interval     time.Duration
	QueryTimeout time.Duration
	Logger       *slog.Logger
	// MeterProvider defaults to the OTel global.
	MeterProvider metric.MeterProvider
}

// Payload is a presence event's payload.
type Payload struct {
	UserID string   `json:"user_id"`
	Online bool     `json:"online"`
	Roles  []string `json:"roles"`
}

type user struct {
	sessions int
	roles    map[string]int
	since    time.Time
}

// Recorder is one replica's presence writer.
type Recorder struct {
	startstop.Base
	pool *pgxpool.Pool
	cfg  Config

	mu    sync.Mutex
	users map[string]*user
	dirty map[string]struct{}
	// written: the replica row was written once; a later flush that has to
	// insert it again was swept meanwhile and writes every session. Only
	// Flush touches it (one goroutine: Start's, or a test's).
	written bool

	events, sweeps, errors metric.Int64Counter
}

// New returns a Recorder writing through pool. Start it to write.
func New(pool *pgxpool.Pool, cfg Config) *Recorder {
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = NewReplicaID()
	}
	if cfg.TTL <= 0 {
		cfg.TTL = TTLDefault
	}
	if cfg.Interval <= 0 {
		cfg.Interval = IntervalDefault
	}
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	cfg.Roles = slices.Clone(cfg.Roles)
	r := &Recorder{pool: pool, cfg: cfg, users: map[string]*user{}, dirty: map[string]struct{}{}}
	m := cfg.MeterProvider.Meter("github.com/grupogad/outboxd/presence")
	r.events, _ = m.Int64Counter("outboxd.presence.events", metric.WithUnit("{event}"),
		metric.WithDescription("Presence transitions written, by state (online, offline)."))
	r.sweeps, _ = m.Int64Counter("outboxd.presence.sweeps", metric.WithUnit("{replica}"),
		metric.WithDescription("Replicas swept after PRESENCE_TTL without a heartbeat."))
	r.errors, _ = m.Int64Counter("outboxd.presence.errors",
		metric.WithDescription("Presence writes or sweeps that failed (retried at the next interval)."))
	// Every series from the start, at zero (rate() and alerts see them).
	bg := context.Background()
	for _, st := range []string{"online", "offline"} {
		r.events.Add(bg, 0, metric.WithAttributes(attribute.String("state", st)))
	}
	for _, op := range []string{"write", "sweep"} {
		r.errors.Add(bg, 0, metric.WithAttributes(attribute.String("op", op)))
	}
	r.sweeps.Add(bg, 0)
	users, _ := m.Int64ObservableGauge("outboxd.presence.users", metric.WithUnit("{user}"),
		metric.WithDescription("Distinct users with a session on this replica."))
	_, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		r.mu.Lock()
		n := len(r.users)
		r.mu.Unlock()
		o.ObserveInt64(users, int64(n))
		return nil
	}, users)
	return r
}

// NewReplicaID is the host name and a random suffix.
func NewReplicaID() string {
	host, _ := os.Hostname()
	var b [6]byte
	_, _ = rand.Read(b[:])
	if host == "" {
		host = "outboxd"
	}
	return host + "-" + hex.EncodeToString(b[:])
}

// ReplicaID is this recorder's replica id.
func (r *Recorder) ReplicaID() string { return r.cfg.ReplicaID }

// SessionOpened counts a session of userID holding roles. It only touches
// memory; the change is written at the next interval.
func (r *Recorder) SessionOpened(userID string, roles []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.users[userID]
	if u == nil {
		u = &user{roles: map[string]int{}, since: time.Now()}
		r.users[userID] = u
	}
	u.sessions++
	for _, role := range roles {
		u.roles[role]++
	}
	r.dirty[userID] = struct{}{}
}

// SessionClosed uncounts a session SessionOpened counted, with the same
// roles.
func (r *Recorder) SessionClosed(userID string, roles []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.users[userID]
	if u == nil {
		return
	}
	for _, role := range roles {
		if u.roles[role]--; u.roles[role] <= 0 {
			delete(u.roles, role)
		}
	}
	if u.sessions--; u.sessions <= 0 {
		delete(r.users, userID)
	}
	r.dirty[userID] = struct{}{}
}

// Start writes every Interval until Stop. Stop writes nothing more (see
// the package doc).
func (r *Recorder) Start(ctx context.Context) error {
	return r.StartFunc(ctx, r.run)
}

func (r *Recorder) run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		r.Tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick writes what changed and sweeps once; errors are logged and counted,
// and what failed is written at the next tick.
func (r *Recorder) Tick(ctx context.Context) {
	if err := r.Flush(ctx); err != nil && ctx.Err() == nil {
		r.errors.Add(ctx, 1, metric.WithAttributes(attribute.String("op", "write")))
		r.cfg.Logger.Warn("presence: write failed; retrying", "error", err)
	}
	if _, err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
		r.errors.Add(ctx, 1, metric.WithAttributes(attribute.String("op", "sweep")))
		r.cfg.Logger.Warn("presence: sweep failed; retrying", "error", err)
	}
}

// change is one user's row on this replica: Sessions 0 deletes it.
type change struct {
	UserID   string    `json:"u"`
	Sessions int       `json:"n"`
	Roles    []string  `json:"r"`
	Since    time.Time `json:"s"`
}

// take returns the changes to write: the dirty users, or every user when
// all is set, and clears the dirty set.
func (r *Recorder) take(all bool) []change {
	r.mu.Lock()
	defer r.mu.Unlock()
	if all {
		for id := range r.users {
			r.dirty[id] = struct{}{}
		}
	}
	out := make([]change, 0, len(r.dirty))
	for id := range r.dirty {
		c := change{UserID: id, Roles: []string{}}
		if u := r.users[id]; u != nil {
			c.Sessions, c.Since = u.sessions, u.since
			for role := range u.roles {
				c.Roles = append(c.Roles, role)
			}
			slices.Sort(c.Roles)
		}
		out = append(out, c)
	}
	clear(r.dirty)
	slices.SortFunc(out, func(a, b change) int { return strings.Compare(a.UserID, b.UserID) })
	return out
}

// untake marks changes dirty again after a failed write.
func (r *Recorder) untake(cs []change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		r.dirty[c.UserID] = struct{}{}
	}
}

const (
	// heartbeatSQL returns whether the replica row had to be inserted
	// (xmax = 0: no earlier version): first write, or swept meanwhile.
	heartbeatSQL = `INSERT INTO outbox.presence_replicas AS r (replica_id) VALUES ($1)
ON CONFLICT (replica_id) DO UPDATE SET seen_at = clock_timestamp()
RETURNING (r.xmax = 0)`

	// lockUsersSQL creates missing per-user rows and lockRowsSQL locks them,
	// both in user_id order ($1 is sorted), so that transactions touching
	// several users never wait on each other in a cycle.
	lockUsersSQL = `INSERT INTO outbox.presence_users (user_id)
SELECT u FROM unnest($1::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i
ON CONFLICT (user_id) DO NOTHING`
	lockRowsSQL = `SELECT count(*) FROM (SELECT 1 FROM outbox.presence_users WHERE user_id = ANY($1::text[])
ORDER BY user_id FOR UPDATE) AS locked`

	deleteSessionsSQL = `DELETE FROM outbox.presence_sessions WHERE replica_id = $1 AND user_id = ANY($2::text[])`
	upsertSessionsSQL = `INSERT INTO outbox.presence_sessions AS s (replica_id, user_id, roles, sessions, since)
SELECT $1, x.u, x.r, x.n, x.s FROM jsonb_to_recordset($2::jsonb) AS x(u text, n int, r text[], s timestamptz)
ON CONFLICT (replica_id, user_id) DO UPDATE SET roles = excluded.roles, sessions = excluded.sessions
WHERE (s.roles, s.sessions) IS DISTINCT FROM (excluded.roles, excluded.sessions)`

	// settleSQL compares each user's rows over every replica with their
	// per-user row (locked by this transaction), records the flips, and
	// writes one presence event per flip, targeted at $2 (none when $2 is
	// empty). A user still online has its announced roles kept current;
	// an offline event carries the roles last announced.
	settleSQL = `WITH agg AS (
  SELECT s.user_id, coalesce(array_agg(DISTINCT r ORDER BY r) FILTER (WHERE r IS NOT NULL), '{}') AS roles
  FROM outbox.presence_sessions s LEFT JOIN LATERAL unnest(s.roles) AS r ON true
  WHERE s.user_id = ANY($1::text[])
  GROUP BY s.user_id
), now AS (
  SELECT p.user_id, p.online AS was, a.user_id IS NOT NULL AS online, coalesce(a.roles, '{}') AS roles
  FROM outbox.presence_users p LEFT JOIN agg a ON a.user_id = p.user_id
  WHERE p.user_id = ANY($1::text[])
), changed AS (
  UPDATE outbox.presence_users p
  SET online = n.online, roles = CASE WHEN n.online THEN n.roles ELSE p.roles END,
      changed_at = CASE WHEN n.online <> n.was THEN clock_timestamp() ELSE p.changed_at END
  FROM now n
  WHERE p.user_id = n.user_id AND (n.online <> n.was OR (n.online AND p.roles <> n.roles))
  RETURNING p.user_id, p.online, p.roles, n.online <> n.was AS flipped
), written AS (
  INSERT INTO outbox.events (topic, payload, target_users, target_roles)
  SELECT 'presence', jsonb_build_object('user_id', user_id, 'online', online, 'roles', to_jsonb(roles)), '{}', $2::text[]
  FROM changed WHERE flipped AND cardinality($2::text[]) > 0
  ORDER BY user_id
  RETURNING 1
)
SELECT coalesce(sum(CASE WHEN flipped AND online THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN flipped AND NOT online THEN 1 ELSE 0 END), 0),
       (SELECT count(*) FROM written)
FROM changed`

	// deadSQL claims the replicas past the TTL that no one else is
	// sweeping (nor writing: a live replica's write holds its row).
	deadSQL = `SELECT replica_id FROM outbox.presence_replicas
WHERE seen_at < clock_timestamp() - $1::interval AND replica_id <> $2
ORDER BY replica_id FOR UPDATE SKIP LOCKED`
	deadUsersSQL  = `SELECT DISTINCT user_id FROM outbox.presence_sessions WHERE replica_id = ANY($1::text[]) ORDER BY user_id`
	dropDeadSQL   = `DELETE FROM outbox.presence_replicas WHERE replica_id = ANY($1::text[])`
	dropDeadRows  = `DELETE FROM outbox.presence_sessions WHERE replica_id = ANY($1::text[])`
	presenceTxMax = 10000 // users one transaction locks and settles at most
)

// Flush writes the heartbeat and the sessions changed since the last
// Flush, in one transaction (or several, for more than 10,000 users).
func (r *Recorder) Flush(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
	defer cancel()
	var pending []change
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var fresh bool
		if err := tx.QueryRow(ctx, heartbeatSQL, r.cfg.ReplicaID).Scan(&fresh); err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
		pending = r.take(fresh && r.written)
		if fresh && r.written {
			r.cfg.Logger.Warn("presence: this replica was swept (no heartbeat for PRESENCE_TTL); writing its sessions again", "replica", r.cfg.ReplicaID, "users", len(pending))
		}
		first := pending
		if len(first) > presenceTxMax {
			first = first[:presenceTxMax]
		}
		if err := r.write(ctx, tx, first); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		r.untake(pending)
		return err
	}
	r.written = true
	if len(pending) > presenceTxMax {
		// The rest, in further transactions of the same size.
		for rest := pending[presenceTxMax:]; len(rest) > 0; {
			n := min(len(rest), presenceTxMax)
			if err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error { return r.write(ctx, tx, rest[:n]) }); err != nil {
				r.untake(rest)
				return err
			}
			rest = rest[n:]
		}
	}
	return nil
}

// write applies this replica's changes cs (sorted by user) in tx.
func (r *Recorder) write(ctx context.Context, tx pgx.Tx, cs []change) error {
	if len(cs) == 0 {
		return nil
	}
	ids := make([]string, len(cs))
	var gone []string
	var live []change
	for i, c := range cs {
		ids[i] = c.UserID
		if c.Sessions == 0 {
			gone = append(gone, c.UserID)
		} else {
			live = append(live, c)
		}
	}
	if err := lockUsers(ctx, tx, ids); err != nil {
		return err
	}
	if len(gone) > 0 {
		if _, err := tx.Exec(ctx, deleteSessionsSQL, r.cfg.ReplicaID, gone); err != nil {
			return fmt.Errorf("delete sessions: %w", err)
		}
	}
	if len(live) > 0 {
		b, err := json.Marshal(live)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, upsertSessionsSQL, r.cfg.ReplicaID, string(b)); err != nil {
			return fmt.Errorf("write sessions: %w", err)
		}
	}
	return r.settle(ctx, tx, ids)
}

func lockUsers(ctx context.Context, tx pgx.Tx, ids []string) error {
	if _, err := tx.Exec(ctx, lockUsersSQL, ids); err != nil {
		return fmt.Errorf("lock users: %w", err)
	}
	var n int
	if err := tx.QueryRow(ctx, lockRowsSQL, ids).Scan(&n); err != nil {
		return fmt.Errorf("lock users: %w", err)
	}
	if n != len(ids) {
		return fmt.Errorf("lock users: locked %d of %d rows", n, len(ids))
	}
	return nil
}

func (r *Recorder) settle(ctx context.Context, tx pgx.Tx, ids []string) error {
	var online, offline, written int64
	if err := tx.QueryRow(ctx, settleSQL, ids, r.cfg.Roles).Scan(&online, &offline, &written); err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	// Counted before the commit: a rolled-back write is written again, and
	// the counter then says so twice. (Rare: only on failure.)
	if online > 0 {
		r.events.Add(ctx, online, metric.WithAttributes(attribute.String("state", "online")))
	}
	if offline > 0 {
		r.events.Add(ctx, offline, metric.WithAttributes(attribute.String("state", "offline")))
	}
	return nil
}

// Sweep deletes the rows of replicas without a heartbeat for TTL and writes
// their users' offline events, in one transaction; it returns how many
// replicas it swept.
func (r *Recorder) Sweep(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
	defer cancel()
	var swept int
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		dead, err := collect(ctx, tx, deadSQL, r.cfg.TTL, r.cfg.ReplicaID)
		if err != nil || len(dead) == 0 {
			return err
		}
		ids, err := collect(ctx, tx, deadUsersSQL, dead)
		if err != nil {
			return err
		}
		if len(ids) > 0 {
			if err := lockUsers(ctx, tx, ids); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, dropDeadRows, dead); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, dropDeadSQL, dead); err != nil {
			return err
		}
		if len(ids) > 0 {
			if err := r.settle(ctx, tx, ids); err != nil {
				return err
			}
		}
		swept = len(dead)
		r.cfg.Logger.Info("presence: swept replicas without a heartbeat", "replicas", dead, "users", len(ids))
		return nil
	})
	if err != nil {
		return 0, err
	}
	if swept > 0 {
		r.sweeps.Add(ctx, int64(swept))
	}
	return swept, nil
}

func collect(ctx context.Context, tx pgx.Tx, sql string, args ...any) ([]string, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	return out, nil
}
