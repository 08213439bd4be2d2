package relay

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		// Re-executed as a child sequencer by TestSequencerKilledMidBatch.
		os.Exit(runHelperSequencer())
	}
	goleak.VerifyTestMain(m)
}
