// Package pgconfig holds the PostgreSQL session settings outboxd runs with,
// shared by the binary and the tests so that both use the same.
package pgconfig

import (
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Apply applies the session settings every outboxd connection
// needs, keeping any the DATABASE_URL already sets:
//
//   - statement_timeout and idle_in_transaction_session_timeout (30 s): a
//     sequencer that hangs or is partitioned away must not hold the relay
//     lock for ever; PostgreSQL ends its transaction and another replica
//     takes over.
//   - jit=off: outboxd runs only short statements, and a misestimated plan
//     (tiny tables are often never analyzed) would otherwise JIT-compile a
//     0.1 ms query for 100 ms or more.
//   - application_name=outboxd, to find its sessions in pg_stat_activity.
func Apply(cfg *pgxpool.Config) {
	rp := cfg.ConnConfig.RuntimeParams
	for k, v := range map[string]string{
		"application_name":                    "outboxd",
		"statement_timeout":                   "30000",
		"idle_in_transaction_session_timeout": "30000",
		"jit":                                 "off",
	} {
		if _, ok := rp[k]; !ok {
			rp[k] = v
		}
	}
	if cfg.MaxConns < 8 {
		cfg.MaxConns = 8
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > 5*time.Second {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
}
