package ws

import (
	"container/heap"
	"time"
)

// expiryHeap orders clients by token expiry: one sweeper closes them with
// 4001, instead of a timer per session. Guarded by Hub.mu. Each client knows
// its position (heapIdx) so a disconnect removes it at once.
type expiryHeap []*client

func (e expiryHeap) Len() int           { return len(e) }
func (e expiryHeap) Less(i, j int) bool { return e[i].exp.Before(e[j].exp) }
func (e expiryHeap) Swap(i, j int) {
	e[i], e[j] = e[j], e[i]
	e[i].heapIdx, e[j].heapIdx = i, j
}
func (e *expiryHeap) Push(x any) {
	c := x.(*client)
	c.heapIdx = len(*e)
	*e = append(*e, c)
}
func (e *expiryHeap) Pop() any {
	old := *e
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*e = old[:len(old)-1]
	c.heapIdx = -1
	return c
}

func (e *expiryHeap) add(c *client) {
	if !c.exp.IsZero() {
		heap.Push(e, c)
	}
}

func (e *expiryHeap) remove(c *client) {
	if c.heapIdx >= 0 && c.heapIdx < e.Len() && (*e)[c.heapIdx] == c {
		heap.Remove(e, c.heapIdx)
	}
}

// popExpired removes and returns clients whose token expired by now.
func (e *expiryHeap) popExpired(now time.Time) []*client {
	var out []*client
	for e.Len() > 0 && !(*e)[0].exp.After(now) {
		out = append(out, heap.Pop(e).(*client))
	}
	return out
}
