package ws

import (
	"sync"
	"sync/atomic"
	"time"
)

// hubMetrics are the hub's counters: the single source for /ws/stats (and
// for the Prometheus exporter, which reads them through Observer).
type hubMetrics struct {
	connects      atomic.Int64
	messagesSent  atomic.Int64 // event and notification frames queued
	broadcasts    atomic.Int64 // test broadcasts
	sendErrors    atomic.Int64
	lastBroadcast atomic.Int64 // unix nanoseconds; 0 = never
	catchUps      atomic.Int64 // live queue full → catch-up from table
	pagesMemory   atomic.Int64 // catch-up pages served from recent frames
	pagesTable    atomic.Int64 // catch-up pages read from the table
	resyncs       atomic.Int64
	subscribes    atomic.Int64 // subscribe messages applied
	malformed     atomic.Int64 // rows relayed with a column that could not be decoded

	mu         sync.Mutex
	drops      map[string]int64 // closes by reason
	rejections map[string]int64 // refused connects by reason
	errors     map[string]int64 // send errors by reason
	refreshed  map[string]int64 // refreshes by outcome
	topics     sync.Map         // topic → *atomic.Int64 of frames queued
	topicsN    atomic.Int32     // distinct topics in topics
	maxTopics  int32
}

// TopicOther is the metric label of every topic past MetricsTopicsMax:
// topics like order.123 are valid, and one series each would grow without
// bound.
const TopicOther = "other"

func newHubMetrics(maxTopics int) *hubMetrics {
	return &hubMetrics{drops: map[string]int64{}, rejections: map[string]int64{}, errors: map[string]int64{}, refreshed: map[string]int64{},
		maxTopics: int32(maxTopics)}
}

// queued counts n frames of topic handed to sessions.
func (m *hubMetrics) queued(topic string, n int) {
	if n == 0 {
		return
	}
	m.messagesSent.Add(int64(n))
	c, ok := m.topics.Load(topic)
	if !ok {
		// The first MetricsTopicsMax topics seen get a series of their own
		// (the app's event types); the rest share "other".
		if m.topicsN.Add(1) > m.maxTopics {
			m.topicsN.Add(-1)
			topic = TopicOther
		}
		var loaded bool
		if c, loaded = m.topics.LoadOrStore(topic, new(atomic.Int64)); loaded && topic != TopicOther {
			m.topicsN.Add(-1) // another goroutine stored it first
		}
	}
	c.(*atomic.Int64).Add(int64(n))
}

func (m *hubMetrics) topicCounts() map[string]int64 {
	out := map[string]int64{}
	m.topics.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}
func (m *hubMetrics) catchUp() { m.catchUps.Add(1) }
func (m *hubMetrics) resync()  { m.resyncs.Add(1) }

func (m *hubMetrics) bump(into map[string]int64, reason string) {
	m.mu.Lock()
	into[reason]++
	m.mu.Unlock()
}

func (m *hubMetrics) drop(reason string) { m.bump(m.drops, reason) }

// refreshes counts in-band token refreshes by outcome: ok, invalid_token,
// sub_mismatch.
func (m *hubMetrics) refreshes(outcome string) { m.bump(m.refreshed, outcome) }
func (m *hubMetrics) reject(reason string)     { m.bump(m.rejections, reason) }
func (m *hubMetrics) sendError(reason string) {
	m.sendErrors.Add(1)
	m.bump(m.errors, reason)
}

func (m *hubMetrics) broadcast(sent int) {
	m.broadcasts.Add(1)
	m.queued(TypeNotification, sent)
	m.lastBroadcast.Store(time.Now().UnixNano())
}

// MetricsSnapshot is the seed's stats.metrics object.
type MetricsSnapshot struct {
	TotalMessagesSent int64   `json:"total_messages_sent"`
	TotalBroadcasts   int64   `json:"total_broadcasts"`
	TotalSendErrors   int64   `json:"total_send_errors"`
	LastBroadcastAt   *string `json:"last_broadcast_at"`
}

func (m *hubMetrics) snapshot() MetricsSnapshot {
	s := MetricsSnapshot{
		TotalMessagesSent: m.messagesSent.Load(),
		TotalBroadcasts:   m.broadcasts.Load(),
		TotalSendErrors:   m.sendErrors.Load(),
	}
	if ns := m.lastBroadcast.Load(); ns != 0 {
		t := formatTime(time.Unix(0, ns))
		s.LastBroadcastAt = &t
	}
	return s
}

// Counts returns copies of the per-reason counters: closes ("drops"),
// refused connects and send errors.
func (h *Hub) Counts() (drops, rejections, sendErrors map[string]int64) {
	m := h.metrics
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := func(src map[string]int64) map[string]int64 {
		out := make(map[string]int64, len(src))
		for k, v := range src {
			out[k] = v
		}
		return out
	}
	return cp(m.drops), cp(m.rejections), cp(m.errors)
}
