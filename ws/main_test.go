package ws

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// keyfunc's HTTP client keeps idle keep-alive connections to the
		// test JWKS server until the transport is closed.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}
