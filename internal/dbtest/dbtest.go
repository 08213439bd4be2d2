// Package dbtest gives each test its own PostgreSQL database, migrated to the
// newest schema, so that tests run in parallel against a real server without
// seeing each other's rows. The server comes from TEST_DATABASE_URL (default:
// the local server as user postgres). Databases are dropped when the test ends.
//
// A migrated database is cloned from a template (CREATE DATABASE …
// TEMPLATE), one per fingerprint of the migrations (outboxsql.Fingerprint),
// built once by whichever test process gets there first under an advisory
// lock, and kept across runs: a test does not run nine migrations, and a
// change to a migration gets a template of its own.
package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grupogad/outboxd/internal/pgconfig"
	outboxsql "github.com/grupogad/outboxd/sql"
)

// DefaultURL is used when TEST_DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL returns the URL of the server tests create their databases on.
func AdminURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// DB is one test's database.
type DB struct {
	Name string
	URL  string
	Pool *pgxpool.Pool
}

// setupTimeout bounds creating, migrating and dropping a test database: a
// guard against a hang, not a measure of speed. Every test package creates
// and drops databases at once, and each DROP DATABASE forces a checkpoint;
// on a loaded CI host with a slow WAL flush migrating one database took
// over 30 s (TestBinaryExitStatusOnStartupFailure, in a clean-clone CI run).
const setupTimeout = 2 * time.Minute

// New creates a fresh database with the outbox schema migrated: a clone of
// the migrated template.
func New(t testing.TB) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	tmpl, err := template(ctx)
	if err != nil {
		t.Fatalf("dbtest: migrated template: %v", err)
	}
	return create(t, tmpl)
}

// NewEmpty creates a fresh database without running migrations.
func NewEmpty(t testing.TB) *DB {
	t.Helper()
	return create(t, "")
}

// templateLock serialises building templates across test processes (each
// package's tests are a process of their own).
const templateLock = `SELECT pg_advisory_lock(hashtext('outboxd dbtest template'))`

var (
	templateMu   sync.Mutex
	templateName string // built in this process, or found
)

// template returns the name of the migrated template database for this
// fingerprint of the migrations, building it if no process has.
func template(ctx context.Context) (string, error) {
	templateMu.Lock()
	defer templateMu.Unlock()
	if templateName != "" {
		return templateName, nil
	}
	name := "outboxd_template_" + outboxsql.Fingerprint()[:16]
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return "", fmt.Errorf("connect to %s (is PostgreSQL running?): %w", redact(AdminURL()), err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, templateLock); err != nil {
		return "", err
	}
	// The session lock goes with the connection.
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)`, name).Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		// Templates of other migrations are of no further use.
		rows, err := admin.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'outboxd\_template\_%' AND datname <> $1`, name)
		if err != nil {
			return "", err
		}
		old, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return "", err
		}
		for _, o := range old {
			_, _ = admin.Exec(ctx, "ALTER DATABASE "+o+" WITH IS_TEMPLATE false")
			_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+o+" WITH (FORCE)")
		}
		// Built under another name and renamed when complete, so that a
		// process killed halfway leaves no template that looks whole.
		building := name + "_building"
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+building+" WITH (FORCE)"); err != nil {
			return "", err
		}
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+building); err != nil {
			return "", err
		}
		if err := migrateDatabase(ctx, building); err != nil {
			return "", fmt.Errorf("migrate %s: %w", building, err)
		}
		for _, stmt := range []string{"ALTER DATABASE " + building + " RENAME TO " + name, "ALTER DATABASE " + name + " WITH IS_TEMPLATE true"} {
			if _, err := admin.Exec(ctx, stmt); err != nil {
				return "", err
			}
		}
	}
	templateName = name
	return name, nil
}

// migrateDatabase applies the migrations to the database name, through a
// pool of its own that is closed before the database is cloned.
func migrateDatabase(ctx context.Context, name string) error {
	u, err := url.Parse(AdminURL())
	if err != nil {
		return err
	}
	u.Path = "/" + name
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		return err
	}
	defer pool.Close()
	return outboxsql.Up(ctx, pool, nil)
}

// create makes a database for t, cloned from tmpl ("": empty), and drops
// it when t ends.
func create(t testing.TB, tmpl string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()

	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "outboxd_test_" + hex.EncodeToString(b[:])

	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("dbtest: connect to %s (is PostgreSQL running?): %v", redact(AdminURL()), err)
	}
	defer admin.Close(context.Background())
	stmt := "CREATE DATABASE " + name
	if tmpl != "" {
		stmt += " TEMPLATE " + tmpl
	}
	if _, err := admin.Exec(ctx, stmt); err != nil {
		t.Fatalf("dbtest: create database: %v", err)
	}

	u, err := url.Parse(AdminURL())
	if err != nil {
		t.Fatalf("dbtest: parse TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	db := &DB{Name: name, URL: u.String()}
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	pgconfig.Apply(cfg) // the settings outboxd itself runs with
	cfg.MaxConns = 16
	db.Pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("dbtest: pool: %v", err)
	}
	t.Cleanup(func() {
		db.Pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Errorf("dbtest: drop %s: %v", name, err)
			return
		}
		defer admin.Close(context.Background())
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dbtest: drop %s: %v", name, err)
		}
	})
	return db
}

// Exec runs sql on the test database and fails the test on error.
func (db *DB) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("dbtest: %s: %v", sql, err)
	}
}

// Int64 runs a query returning one bigint.
func (db *DB) Int64(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int64
	if err := db.Pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("dbtest: %s: %v", sql, err)
	}
	return n
}

// TerminateOthers kills every backend connected to the test database except
// the caller's, as an operator's pg_terminate_backend would, and returns how
// many it killed.
func (db *DB) TerminateOthers(t testing.TB) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var n int64
	err = admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid()`, db.Name).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// String names the database for messages.
func (db *DB) String() string { return fmt.Sprintf("dbtest(%s)", db.Name) }
