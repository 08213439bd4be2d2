package ws

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
)

// catchUpMemory bounds the bytes table catch-ups hold at once: all of
// them (Config.CatchUpMemory), and one user's (a quarter of it), so that
// one user's many sessions cannot take it all. A page holds its
// reservation only while it is read and encoded (client.pageFromTable).
type catchUpMemory struct {
	all     *semaphore.Weighted
	perUser int64

	mu    sync.Mutex
	users map[string]*userMemory
}

type userMemory struct {
	sem  *semaphore.Weighted
	refs int
}

func newCatchUpMemory(total int) *catchUpMemory {
	return &catchUpMemory{all: semaphore.NewWeighted(int64(total)), perUser: max(int64(total)/4, 1), users: map[string]*userMemory{}}
}

// acquire reserves n bytes (at most perUser) for user, its share first,
// and returns the release; it fails only when ctx ends.
func (m *catchUpMemory) acquire(ctx context.Context, user string, n int64) (func(), error) {
	n = min(n, m.perUser)
	m.mu.Lock()
	u := m.users[user]
	if u == nil {
		u = &userMemory{sem: semaphore.NewWeighted(m.perUser)}
		m.users[user] = u
	}
	u.refs++
	m.mu.Unlock()
	done := func() {
		m.mu.Lock()
		if u.refs--; u.refs == 0 {
			delete(m.users, user)
		}
		m.mu.Unlock()
	}
	if err := u.sem.Acquire(ctx, n); err != nil {
		done()
		return nil, err
	}
	if err := m.all.Acquire(ctx, n); err != nil {
		u.sem.Release(n)
		done()
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			m.all.Release(n)
			u.sem.Release(n)
			done()
		})
	}, nil
}
