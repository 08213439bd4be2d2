package ws

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// revocations caches outbox.revocations (migration 00010): user → the unix
// second before which that user's tokens are refused. The hub loads them
// at Start and learns of new ones from each outbox.disconnect control row,
// in seq order, so every replica — one started later too — refuses the
// same tokens. Entries older than the longest token lifetime accepted
// (JWT_MAX_TTL) are forgotten: no token issued before them is still valid.
type revocations struct {
	mu     sync.RWMutex
	byUser map[string]int64
}

// load replaces the cache with what the store holds.
func (r *revocations) load(ctx context.Context, s Store, maxAge time.Duration) error {
	m, err := s.Revocations(ctx, maxAge)
	if err != nil {
		return fmt.Errorf("ws: revocations: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byUser = m
	return nil
}

// add records that users were revoked at unix second at.
func (r *revocations) add(users []string, at int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byUser == nil {
		r.byUser = map[string]int64{}
	}
	for _, u := range users {
		r.byUser[u] = max(r.byUser[u], at)
	}
}

// expire forgets revocations older than maxAge.
func (r *revocations) expire(now time.Time, maxAge time.Duration) {
	cutoff := now.Add(-maxAge).Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	for u, at := range r.byUser {
		if at < cutoff {
			delete(r.byUser, u)
		}
	}
}

// refuses reports why a token of user, issued at iat (zero: no iat) and
// expiring at exp (zero: no exp), is refused, or "" if it is not: a
// revoked user's token must carry both, and be issued in the revocation's
// second or later. Whole seconds, no leeway: the producers' clock (the
// database's, which stamps the revocation) and the token issuer's must
// agree.
func (r *revocations) refuses(user string, iat, exp time.Time) string {
	r.mu.RLock()
	at, ok := r.byUser[user]
	r.mu.RUnlock()
	switch {
	case !ok:
		return ""
	case iat.IsZero() || exp.IsZero():
		return "token revoked: this user was disconnected, and a token without iat and exp cannot show it was issued since; ask the app for a new one"
	case iat.Unix() < at:
		return fmt.Sprintf("token revoked: issued before this user was disconnected (%s); ask the app for a new one", time.Unix(at, 0).UTC().Format(time.RFC3339))
	}
	return ""
}
