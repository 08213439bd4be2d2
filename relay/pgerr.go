package relay

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// isConnLoss reports whether err means the connection, not the statement,
// failed: the server terminated it, restarted, or the network broke.
func isConnLoss(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P")
	}
	// Anything else that is not a statement error (EOF, reset, refused,
	// timeout while connecting) is a lost connection.
	return true
}

// recoverPool drops the pool's idle connections after a connection loss:
// when the server restarts or terminates backends, every idle connection is
// dead too, and trying them one by one would stretch recovery over several
// backoff rounds.
func recoverPool(pool *pgxpool.Pool, err error) {
	if isConnLoss(err) {
		pool.Reset()
	}
}
