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
