package ws

import (
	"fmt"
	"sync"
	"testing"
)

// Topics like order.123 are valid: past MetricsTopicsMax distinct topics,
// the rest share one series, whatever the concurrency.
func TestTopicSeriesAreBounded(t *testing.T) {
	t.Parallel()
	m := newHubMetrics(3)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 100 {
				m.queued(fmt.Sprintf("order.%d", (i+w)%50), 1)
			}
		})
	}
	wg.Wait()
	counts := m.topicCounts()
	if len(counts) != 4 || counts[TopicOther] == 0 {
		t.Fatalf("%d series %v, want 3 topics and %q", len(counts), counts, TopicOther)
	}
	var total int64
	for _, n := range counts {
		total += n
	}
	if total != 400 {
		t.Fatalf("%d frames counted, want 400", total)
	}
}
