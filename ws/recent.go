package ws

import (
	"slices"
	"sync"
)

// recentFrames keeps the newest dispatched events, encoded, so that a
// session that falls a little behind (a burst, a slow moment) catches up
// from memory instead of reading the table again on its own: with many
// lagging sessions, those reads would multiply by the number of sessions.
// Seqs in it are contiguous (Dispatch delivers every seq in order). Bounded
// by count and by bytes; older events come from the table.
type recentFrames struct {
	mu       sync.RWMutex
	items    []recentItem // ring, oldest at start
	start    int
	n        int
	bytes    int
	maxBytes int
}

type recentItem struct {
	seq   int64
	topic string
	frame []byte
	users []string
	roles []string
}

// Bounds of the cache of recent frames.
const (
	recentMaxEvents = 8192
	recentMaxBytes  = 4 << 20
)

func newRecentFrames(maxEvents, maxBytes int) *recentFrames {
	return &recentFrames{items: make([]recentItem, maxEvents), maxBytes: maxBytes}
}

func (r *recentFrames) at(i int) *recentItem { return &r.items[(r.start+i)%len(r.items)] }

// add appends the next event (its seq follows the newest, or the cache
// restarts at it).
func (r *recentFrames) add(it recentItem) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n > 0 && it.seq != r.at(r.n-1).seq+1 {
		r.n, r.bytes = 0, 0 // not contiguous: start over
	}
	for r.n > 0 && (r.n == len(r.items) || r.bytes+len(it.frame) > r.maxBytes) {
		old := r.at(0)
		r.bytes -= len(old.frame)
		*old = recentItem{}
		r.start = (r.start + 1) % len(r.items)
		r.n--
	}
	if len(it.frame) > r.maxBytes {
		return
	}
	*r.at(r.n) = it
	r.n++
	r.bytes += len(it.frame)
}

// reset forgets every frame (the history changed: Hub.Rebase).
func (r *recentFrames) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.items)
	r.start, r.n, r.bytes = 0, 0, 0
}

// after appends to buf the frames for user with roles (entitled, and in
// topics unless nil) with seq in (after, after+span],
// if the cache holds seq after+1; it returns the last seq it covered, or
// ok=false when the table must be read instead.
func (r *recentFrames) after(after int64, span int, user string, roles, topics []string, buf []recentItem) (_ []recentItem, scannedTo int64, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.n == 0 {
		return buf, 0, false
	}
	oldest, newest := r.at(0).seq, r.at(r.n-1).seq
	if after+1 < oldest || after >= newest {
		return buf, 0, false
	}
	scannedTo = min(newest, after+int64(span))
	for i := int(after + 1 - oldest); i < r.n; i++ {
		it := r.at(i)
		if it.seq > scannedTo {
			break
		}
		if it.frame != nil && entitled(user, roles, it.users, it.roles) && (topics == nil || slices.Contains(topics, it.topic)) {
			buf = append(buf, *it)
		}
	}
	return buf, scannedTo, true
}

// entitled mirrors the table's filter: a broadcast (both targets nil), or
// the user or one of its roles among the targets.
func entitled(user string, userRoles, users, roles []string) bool {
	if users == nil && roles == nil {
		return true
	}
	if slices.Contains(users, user) {
		return true
	}
	for _, r := range userRoles {
		if slices.Contains(roles, r) {
			return true
		}
	}
	return false
}
