package relay

import "errors"

// ErrLockHeld is returned by Sequencer.SequenceOnce when another sequencer
// holds the relay_state lock.
var ErrLockHeld = errors.New("relay: another sequencer holds the lock")
