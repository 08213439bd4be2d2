package ws

import (
	"fmt"
	"testing"
)

func TestRecentFrames(t *testing.T) {
	t.Parallel()
	alice := &client{userID: "alice", roles: []string{"LEVEL_1"}}
	r := newRecentFrames(5, 1000)
	if _, _, ok := r.after(0, 10, alice.userID, alice.roles, nil, nil); ok {
		t.Fatal("empty cache claims coverage")
	}
	add := func(seq int64, size int, users, roles []string) {
		r.add(recentItem{seq: seq, topic: "t", frame: make([]byte, size), users: users, roles: roles})
	}
	for seq := int64(1); seq <= 7; seq++ {
		switch seq {
		case 4:
			add(seq, 10, []string{"bob"}, nil) // not for alice
		case 5:
			add(seq, 10, nil, []string{"LEVEL_1"})
		default:
			add(seq, 10, nil, nil)
		}
	}
	// Count bound: 5 events kept, seqs 3..7.
	if _, _, ok := r.after(1, 10, alice.userID, alice.roles, nil, nil); ok {
		t.Fatal("seq 2 was evicted: the table must be read")
	}
	got, to, ok := r.after(2, 10, alice.userID, alice.roles, nil, nil)
	if !ok || to != 7 || fmt.Sprint(seqsOf(got)) != "[3 5 6 7]" {
		t.Fatalf("after 2: %v to %d ok %v", seqsOf(got), to, ok)
	}
	// The span bounds a page.
	got, to, _ = r.after(2, 2, alice.userID, alice.roles, nil, nil)
	if to != 4 || fmt.Sprint(seqsOf(got)) != "[3]" {
		t.Fatalf("span 2: %v to %d", seqsOf(got), to)
	}
	if _, _, ok := r.after(7, 10, alice.userID, alice.roles, nil, nil); ok {
		t.Fatal("nothing after the newest: not covered")
	}
	// A gap restarts the cache.
	add(10, 10, nil, nil)
	if _, _, ok := r.after(6, 10, alice.userID, alice.roles, nil, nil); ok {
		t.Fatal("coverage across a gap")
	}
	// Byte bound: 1000 bytes hold three 300-byte frames.
	for seq := int64(11); seq <= 14; seq++ {
		add(seq, 300, nil, nil)
	}
	if got, to, ok := r.after(11, 10, alice.userID, alice.roles, nil, nil); !ok || to != 14 || len(got) != 3 {
		t.Fatalf("byte bound: %v to %d ok %v", seqsOf(got), to, ok)
	}
	if r.bytes > 1000 {
		t.Fatalf("%d bytes kept", r.bytes)
	}
}

func seqsOf(items []recentItem) []int64 {
	out := make([]int64, len(items))
	for i, it := range items {
		out[i] = it.seq
	}
	return out
}
