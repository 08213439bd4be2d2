// Package pgconfig holds the PostgreSQL session settings outboxd runs with,
// shared by the binary and the tests so that both use the same.
package pgconfig

import (
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
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

// ApplyPooled is Apply for connections through a transaction pooler
// (PgBouncer in transaction mode, with its default settings): the pooler
// refuses startup parameters other than a few (application_name among
// them) and may hand each transaction a different server session, so
//
//   - no statement_timeout, idle_in_transaction_session_timeout or jit at
//     startup: the sequencer sets them with SET LOCAL in its transaction
//     (relay.SequencerConfig.Pooled), every query has its own deadline,
//     and docs/deployment.md sets them on the sidecar's role;
//   - no named prepared statements (PgBouncer 1.18 does not track them):
//     QueryExecModeExec, one round trip with an unnamed statement, unless
//     the URL names another default_query_exec_mode.
//
// url is the connection string, to see what it already sets.
func ApplyPooled(cfg *pgxpool.Config, url string) {
	rp := cfg.ConnConfig.RuntimeParams
	if _, ok := rp["application_name"]; !ok {
		rp["application_name"] = "outboxd"
	}
	if !strings.Contains(url, "default_query_exec_mode") {
		cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	if cfg.MaxConns < 8 {
		cfg.MaxConns = 8
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > 5*time.Second {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
}

// LocalSettingsSQL applies Apply's session settings to one transaction
// (SET LOCAL), for a connection through a pooler.
const LocalSettingsSQL = `SELECT set_config('statement_timeout', '30000', true),
  set_config('idle_in_transaction_session_timeout', '30000', true), set_config('jit', 'off', true)`
