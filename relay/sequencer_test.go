package relay

import (
	"testing"
	"time"
)

// The pause after a partial batch follows the batch's wall time: twice it,
// never below MinPollInterval (a quiet host keeps its latency) and never
// above three times it (a slow batch does not stall the next for long).
func TestPauseAfterFollowsBatchTime(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name  string
		cfg   SequencerConfig
		batch time.Duration
		want  time.Duration
	}{
		{"quiet host: the floor", SequencerConfig{}, 800 * time.Microsecond, 2 * ms},
		{"busy: twice the batch", SequencerConfig{}, 3 * ms, 6 * ms},
		{"slow batch: three times the floor", SequencerConfig{}, 40 * ms, 6 * ms},
		{"a higher floor", SequencerConfig{MinPollInterval: 5 * ms}, 1 * ms, 5 * ms},
		{"a higher floor, a busy host", SequencerConfig{MinPollInterval: 5 * ms}, 6 * ms, 12 * ms},
		{"short PollInterval caps it", SequencerConfig{PollInterval: 4 * ms}, 3 * ms, 4 * ms},
		{"PollInterval below the floor: the floor wins", SequencerConfig{MinPollInterval: 5 * ms, PollInterval: 3 * ms}, 3 * ms, 5 * ms},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.setDefaults()
			if got := c.cfg.pauseAfter(c.batch); got != c.want {
				t.Errorf("pauseAfter(%s) = %s, want %s", c.batch, got, c.want)
			}
		})
	}
}

func TestLingerCeilingFollowsTheGap(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name string
		cfg  SequencerConfig
		gap  time.Duration
		want time.Duration
	}{
		{"gap unknown: LingerPoll", SequencerConfig{}, 0, 10 * ms},
		{"every 10 ms: the floor", SequencerConfig{}, 10 * ms, 2 * ms},
		{"every 40 ms: an eighth", SequencerConfig{}, 40 * ms, 5 * ms},
		{"a few a second: LingerPoll", SequencerConfig{}, 200 * ms, 10 * ms},
		{"a higher floor", SequencerConfig{MinPollInterval: 4 * ms}, 10 * ms, 4 * ms},
		{"a shorter LingerPoll", SequencerConfig{LingerPoll: 3 * ms}, 40 * ms, 3 * ms},
		{"woken by producers: LingerPoll", SequencerConfig{WakeWhenIdle: true}, 10 * ms, 10 * ms},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.setDefaults()
			if got := c.cfg.lingerCeiling(c.gap); got != c.want {
				t.Errorf("lingerCeiling(%s) = %s, want %s", c.gap, got, c.want)
			}
		})
	}
}

func TestNextGapAveragesWithinLinger(t *testing.T) {
	var cfg SequencerConfig
	cfg.setDefaults()
	ms := time.Millisecond
	t0 := time.Now()
	if got := cfg.nextGap(0, time.Time{}, t0); got != 0 {
		t.Fatalf("first rows: gap %s, want 0 (unknown)", got)
	}
	if got := cfg.nextGap(0, t0, t0.Add(12*ms)); got != 12*ms {
		t.Fatalf("second rows: gap %s, want 12ms", got)
	}
	// A quarter of the way from 12 ms to 20 ms.
	if got := cfg.nextGap(12*ms, t0, t0.Add(20*ms)); got != 14*ms {
		t.Fatalf("running average: %s, want 14ms", got)
	}
	if got := cfg.nextGap(14*ms, t0, t0.Add(cfg.Linger)); got != 0 {
		t.Fatalf("after a quiet spell of Linger: %s, want 0 (forgotten)", got)
	}
}
