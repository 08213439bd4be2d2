package ws

import (
	"testing"

	"github.com/grupogad/outboxd/outbox"
	"github.com/grupogad/outboxd/stream"
)

// The producer library is a module of its own and states the table's
// limits again: they must be the stream's.
func TestProducerLibraryAgreesOnLimits(t *testing.T) {
	if outbox.MaxPayloadBytes != stream.MaxPayloadBytes || outbox.ReservedTopicPrefix != stream.ReservedTopicPrefix {
		t.Fatalf("outbox: %d %q; stream: %d %q", outbox.MaxPayloadBytes, outbox.ReservedTopicPrefix, stream.MaxPayloadBytes, stream.ReservedTopicPrefix)
	}
}
