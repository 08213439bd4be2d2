// Package memstore is an in-memory ws.Store: the hub's view of the outbox
// (history, position, entitled replay reads, status) over a slice, so that
// the hub's resume and catch-up logic can be tested without PostgreSQL.
// Its entitlement rule is the table's: both targets nil reach everyone, an
// empty set nobody, otherwise the union of users and roles.
package memstore

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/grupogad/outboxd/relay"
)

// Store holds sequenced events in seq order, contiguous from Oldest.
type Store struct {
	mu     sync.Mutex
	events []relay.Event
	head   int64
	epoch  string
	// revoked: user → unix second of its revocation.
	revoked map[string]int64
}

// New returns an empty history with the given epoch.
func New(epoch string) *Store { return &Store{epoch: epoch} }

// Append sequences evs after the head and returns them as sequenced.
func (s *Store) Append(evs ...relay.Event) []relay.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]relay.Event, len(evs))
	for i, e := range evs {
		s.head++
		e.Seq, e.ID = s.head, s.head
		s.events = append(s.events, e)
		out[i] = e
	}
	return out
}

// DeleteThrough drops every event with seq ≤ seq, as retention does.
func (s *Store) DeleteThrough(seq int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = slices.DeleteFunc(s.events, func(e relay.Event) bool { return e.Seq <= seq })
}

// History implements ws.Store.
func (s *Store) History(context.Context) (relay.History, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return relay.History{Head: s.head, Epoch: s.epoch}, nil
}

func (s *Store) position() relay.Position {
	p := relay.Position{Head: s.head}
	if len(s.events) > 0 {
		p.Oldest = s.events[0].Seq
	}
	return p
}

// Position implements ws.Store.
func (s *Store) Position(context.Context) (relay.Position, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.position(), nil
}

// ReadEntitled implements ws.Store.
func (s *Store) ReadEntitled(_ context.Context, q relay.ReplayQuery, buf []relay.Event) (relay.Page, []relay.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := relay.Page{Position: s.position()}
	end := min(s.head, q.After+int64(q.Span))
	p.ScannedTo = max(q.After, end)
	n := len(buf)
	for _, e := range s.events {
		if e.Seq <= q.After || e.Seq > end || !entitled(e, q.User, q.Roles) ||
			strings.HasPrefix(e.Topic, "outboxd.") || (q.Topics != nil && !slices.Contains(q.Topics, e.Topic)) {
			continue
		}
		buf = append(buf, e)
		if p.Bytes += len(e.Payload); q.MaxBytes > 0 && p.Bytes >= q.MaxBytes {
			p.ScannedTo = e.Seq
			break
		}
	}
	if q.SkipEmpty && len(buf) == n && p.ScannedTo < p.Head {
		to := p.Head
		for _, e := range s.events {
			if e.Seq > p.ScannedTo && entitled(e, q.User, q.Roles) {
				to = e.Seq - 1
				break
			}
		}
		p.Skipped, p.ScannedTo = to-p.ScannedTo, max(to, p.ScannedTo)
	}
	return p, buf, nil
}

func entitled(e relay.Event, user string, roles []string) bool {
	if e.Broadcast() || slices.Contains(e.Users, user) {
		return true
	}
	for _, r := range roles {
		if slices.Contains(e.Roles, r) {
			return true
		}
	}
	return false
}

// Status implements ws.Store.
func (s *Store) Status(context.Context) (relay.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.position()
	return relay.Status{HeadSeq: p.Head, OldestSeq: p.Oldest, Epoch: s.epoch}, nil
}

// Ping implements ws.Store.
func (s *Store) Ping(context.Context) error { return nil }

// Revoke records a revocation of user at unix second at.
func (s *Store) Revoke(user string, at int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revoked == nil {
		s.revoked = map[string]int64{}
	}
	s.revoked[user] = max(s.revoked[user], at)
}

// Revocations returns every recorded revocation (memstore keeps no clock).
func (s *Store) Revocations(context.Context, time.Duration) (map[string]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.revoked), nil
}
