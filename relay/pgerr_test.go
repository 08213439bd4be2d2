package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestErrorsAreClassifiedHonestly(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		loss bool
	}{
		{context.DeadlineExceeded, false},
		{fmt.Errorf("relay: read: %w", context.DeadlineExceeded), false},
		{context.Canceled, false},
		{&pgconn.PgError{Code: "57014"}, false}, // statement timeout
		{&pgconn.PgError{Code: "23505"}, false}, // unique violation
		{&net.OpError{Op: "read", Err: timeoutErr{}}, false},
		{&pgconn.PgError{Code: "57P01"}, true}, // terminated by administrator
		{&pgconn.PgError{Code: "08006"}, true},
		{io.EOF, true},
		{fmt.Errorf("x: %w", syscall.ECONNRESET), true},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{errors.New("conn closed"), true},
		{errors.New("something else entirely"), false},
	} {
		if got := isConnLoss(c.err); got != c.loss {
			t.Errorf("%v: loss %v, want %v", c.err, got, c.loss)
		}
	}
}
