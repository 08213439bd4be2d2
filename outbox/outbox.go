package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// MaxPayloadBytes is the largest payload accepted, as serialised JSON.
const MaxPayloadBytes = 256 << 10

// ReservedTopicPrefix starts the topics of outboxd's control rows (see
// Disconnect); events cannot use it.
const ReservedTopicPrefix = "outboxd."

// PresenceTopic is the topic of the presence events outboxd writes itself
// (PRESENCE=true); events cannot use it.
const PresenceTopic = "presence"

// MaxTraceparentBytes bounds the stored trace context.
const MaxTraceparentBytes = 512

var topicRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)

// Executor is what Emit needs from the caller's transaction. pgx.Tx,
// *pgx.Conn and *pgxpool.Pool satisfy it.
type Executor interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Event is one message to relay.
type Event struct {
	// Topic is the event type ("task_event"); it becomes "type" in the
	// WebSocket envelope. It must match ^[a-z][a-z0-9_.-]{0,63}$.
	Topic string
	// Data becomes "data" in the envelope. It must marshal to a JSON object;
	// json.RawMessage and []byte are taken as already-encoded JSON.
	Data any
	// Users are JWT "sub" values; Roles are role names: the event reaches
	// their union. Empty (or nil) means nobody: a recipient query that
	// finds no one must not leak the event to everyone.
	Users []string
	Roles []string
	// Broadcast sends the event to every connected client; Users and Roles
	// must then be nil.
	Broadcast bool
	// Traceparent overrides the trace context taken from ctx.
	Traceparent string
}

var traceparentFunc atomic.Pointer[func(context.Context) string]

// SetTraceparentFunc installs the function Emit uses to read the W3C
// traceparent of the span in ctx (nil removes it). Call it at start-up.
func SetTraceparentFunc(f func(context.Context) string) {
	if f == nil {
		traceparentFunc.Store(nil)
		return
	}
	traceparentFunc.Store(&f)
}

type encoded struct {
	topic       string
	payload     []byte
	users       []string
	roles       []string
	traceparent *string
}

// Validate reports why ev would be refused, or nil.
func (ev Event) Validate() error {
	_, err := ev.encode(context.Background())
	return err
}

func (ev Event) encode(ctx context.Context) (encoded, error) {
	if !topicRE.MatchString(ev.Topic) {
		return encoded{}, fmt.Errorf("%w: topic %q must match %s", ErrInvalidEvent, ev.Topic, topicRE)
	}
	if strings.HasPrefix(ev.Topic, ReservedTopicPrefix) {
		return encoded{}, fmt.Errorf("%w: topic %q is reserved for outboxd's control rows", ErrInvalidEvent, ev.Topic)
	}
	if ev.Topic == PresenceTopic {
		return encoded{}, fmt.Errorf("%w: topic %q is written by outboxd itself (PRESENCE)", ErrInvalidEvent, ev.Topic)
	}
	var payload []byte
	switch d := ev.Data.(type) {
	case json.RawMessage:
		payload = d
	case []byte:
		payload = d
	case nil:
		return encoded{}, fmt.Errorf("%w: data is nil; it must be a JSON object", ErrInvalidEvent)
	default:
		var err error
		if payload, err = json.Marshal(d); err != nil {
			return encoded{}, fmt.Errorf("%w: data: %w", ErrInvalidEvent, err)
		}
	}
	if len(payload) > MaxPayloadBytes {
		return encoded{}, fmt.Errorf("%w: data is %d bytes, more than %d", ErrInvalidEvent, len(payload), MaxPayloadBytes)
	}
	if !isJSONObject(payload) {
		return encoded{}, fmt.Errorf("%w: data must be a JSON object", ErrInvalidEvent)
	}
	if slices.Contains(ev.Users, "") {
		return encoded{}, fmt.Errorf("%w: empty user id in Users", ErrInvalidEvent)
	}
	if slices.Contains(ev.Roles, "") {
		return encoded{}, fmt.Errorf("%w: empty role in Roles", ErrInvalidEvent)
	}
	e := encoded{topic: ev.Topic, payload: payload}
	if ev.Broadcast {
		if ev.Users != nil || ev.Roles != nil {
			return encoded{}, fmt.Errorf("%w: Broadcast with Users or Roles; choose one", ErrInvalidEvent)
		}
	} else {
		// NULL targets mean everyone in SQL: pass empty sets instead.
		e.users, e.roles = ev.Users, ev.Roles
		if e.users == nil {
			e.users = []string{}
		}
		if e.roles == nil {
			e.roles = []string{}
		}
	}
	tp := ev.Traceparent
	if f := traceparentFunc.Load(); tp == "" && f != nil {
		tp = (*f)(ctx)
	}
	if len(tp) > MaxTraceparentBytes {
		return encoded{}, fmt.Errorf("%w: traceparent longer than %d bytes", ErrInvalidEvent, MaxTraceparentBytes)
	}
	if tp != "" {
		e.traceparent = &tp
	}
	return e, nil
}

func isJSONObject(b []byte) bool {
	if !json.Valid(b) {
		return false
	}
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{':
			return true
		default:
			return false
		}
	}
	return false
}

// Producers call the SQL functions, which run with their owner's rights: a
// producer role needs EXECUTE on them and no rights on the tables.
const insertOne = `SELECT outbox.emit($1, $2, $3, $4, $5)`

// Emit inserts ev through tx and returns its outbox id. Call it as the last
// statement of the transaction (see the package documentation).
func Emit(ctx context.Context, tx Executor, ev Event) (int64, error) {
	e, err := ev.encode(ctx)
	if err != nil {
		return 0, err
	}
	var id int64
	err = tx.QueryRow(ctx, insertOne, e.topic, e.payload, e.users, e.roles, e.traceparent).Scan(&id)
	if err != nil {
		return 0, translate(err)
	}
	return id, nil
}

// Targets are passed as JSON arrays because SQL arrays cannot be ragged.
const insertMany = `SELECT array_agg(id ORDER BY id)
FROM outbox.emit_batch($1::text[], $2::jsonb[], $3::jsonb[], $4::jsonb[], $5::text[]) AS ins(id)`

// EmitBatch inserts every event in one round trip and returns their ids in
// the order given. Either every event is valid and inserted, or none is.
func EmitBatch(ctx context.Context, tx Executor, evs []Event) ([]int64, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	topics := make([]string, len(evs))
	payloads := make([]string, len(evs))
	users := make([]*string, len(evs))
	roles := make([]*string, len(evs))
	tps := make([]*string, len(evs))
	for i, ev := range evs {
		e, err := ev.encode(ctx)
		if err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		topics[i], payloads[i], tps[i] = e.topic, string(e.payload), e.traceparent
		users[i], roles[i] = jsonArray(e.users), jsonArray(e.roles)
	}
	// A querier that can only QueryRow still works: the ids come back as
	// one array.
	var ids []int64
	err := tx.QueryRow(ctx, insertMany, topics, payloads, users, roles, tps).Scan(&ids)
	if err != nil {
		return nil, translate(err)
	}
	if len(ids) != len(evs) {
		return nil, fmt.Errorf("outbox: inserted %d rows for %d events", len(ids), len(evs))
	}
	return ids, nil
}

// Disconnect closes, with WebSocket close code 4003 and reason, every live
// session of users, on every replica, once each has been given every event
// committed before this transaction. Call it in the transaction that
// changes their permissions (as its last statement, like Emit): the cut
// happens if and only if the change commits, and the browser then asks the
// app for a new token. users must not be empty.
func Disconnect(ctx context.Context, tx Executor, users []string, reason string) error {
	if len(users) == 0 || slices.Contains(users, "") {
		return fmt.Errorf("%w: Disconnect needs non-empty user ids", ErrInvalidEvent)
	}
	if reason == "" {
		reason = "revoked"
	}
	if _, err := tx.Exec(ctx, `SELECT outbox.disconnect($1, $2)`, users, reason); err != nil {
		return translate(err)
	}
	return nil
}

func jsonArray(ss []string) *string {
	if ss == nil {
		return nil
	}
	b, _ := json.Marshal(ss) // strings always marshal
	s := string(b)
	return &s
}

// translate turns a CHECK violation into ErrInvalidEvent, naming the
// constraint; other errors pass through wrapped.
func translate(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23514" {
		return fmt.Errorf("%w: refused by %s: %s", ErrInvalidEvent, pgErr.ConstraintName, pgErr.Message)
	}
	return fmt.Errorf("outbox: insert: %w", err)
}
