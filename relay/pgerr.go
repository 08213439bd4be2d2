package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// isConnLoss reports whether err means the connection, not the statement,
// was lost: the server terminated it or restarted, or the network broke.
// A timeout or a cancelled context is NOT a lost connection: under load a
// statement may take longer than its timeout, and resetting every
// connection then would stall the relay exactly when it is busiest.
func isConnLoss(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// 08: connection exception; 57P01-57P03: admin shutdown, crash
		// shutdown, cannot connect now. (57014, query_canceled, is a
		// statement timeout: not a loss.)
		return strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P")
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, net.ErrClosed):
		return true
	case errors.As(err, &netErr):
		return !netErr.Timeout()
	}
	// A closed pgconn says so in words only.
	return strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "closed pool")
}

// recoverPool drops the pool's idle connections after a connection loss:
// when the server restarts or terminates backends, every idle connection is
// dead too, and trying them one by one would stretch recovery over several
// backoff rounds. Any other error leaves the pool alone.
func recoverPool(pool *pgxpool.Pool, err error, logger *slog.Logger) {
	if isConnLoss(err) {
		logger.Warn("database connection lost: resetting the pool", "err", err)
		pool.Reset()
	}
}
