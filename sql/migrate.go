// Package outboxsql (folder sql/) holds outboxd's schema migrations, embedded in the binary and
// applied with goose. Each version is one file, NNNNN_name.sql, with an Up and
// a Down section. The version table lives in the public schema
// (outboxd_schema_version) so that migrating down to zero leaves nothing of
// the outbox schema behind. A PostgreSQL session lock serialises replicas that
// migrate at the same time.
package outboxsql

import (
	"context"
	"crypto/sha256"
	stdsql "database/sql"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var migrations embed.FS

// Fingerprint is a hash of every embedded migration (names and contents):
// equal fingerprints, equal schemas. Test helpers key migrated template
// databases by it.
func Fingerprint() string {
	h := sha256.New()
	entries, _ := fs.ReadDir(migrations, ".") // the embedded root always reads
	for _, e := range entries {
		b, _ := fs.ReadFile(migrations, e.Name())
		fmt.Fprintf(h, "%s\x00%d\x00", e.Name(), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// VersionTable is the name of goose's version table.
const VersionTable = "outboxd_schema_version"

// Migrator applies the embedded migrations.
type Migrator struct {
	db       *stdsql.DB
	provider *goose.Provider
}

// NewMigrator returns a Migrator working through pool. Close it after use.
func NewMigrator(pool *pgxpool.Pool, logger *slog.Logger) (*Migrator, error) {
	db := stdlib.OpenDBFromPool(pool)
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, errorsJoinClose(fmt.Errorf("migrate: session locker: %w", err), db)
	}
	opts := []goose.ProviderOption{
		goose.WithTableName(VersionTable),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	}
	if logger != nil {
		opts = append(opts, goose.WithSlog(logger))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations, opts...)
	if err != nil {
		return nil, errorsJoinClose(fmt.Errorf("migrate: %w", err), db)
	}
	return &Migrator{db: db, provider: p}, nil
}

func errorsJoinClose(err error, db *stdsql.DB) error {
	if cerr := db.Close(); cerr != nil {
		return fmt.Errorf("%w (close: %v)", err, cerr)
	}
	return err
}

// Up applies every pending migration and returns the versions applied.
func (m *Migrator) Up(ctx context.Context) ([]int64, error) {
	res, err := m.provider.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate up: %w", err)
	}
	out := make([]int64, 0, len(res))
	for _, r := range res {
		out = append(out, r.Source.Version)
	}
	return out, nil
}

// Down rolls back the newest applied migration and returns its version
// (0 when nothing was applied).
func (m *Migrator) Down(ctx context.Context) (int64, error) {
	res, err := m.provider.Down(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate down: %w", err)
	}
	if res == nil || res.Source == nil {
		return 0, nil
	}
	return res.Source.Version, nil
}

// Status describes one migration: its version, file and whether it is applied.
type Status struct {
	Version int64
	Path    string
	Applied bool
}

// Status lists every embedded migration and whether it is applied.
func (m *Migrator) Status(ctx context.Context) ([]Status, error) {
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate status: %w", err)
	}
	out := make([]Status, 0, len(st))
	for _, s := range st {
		out = append(out, Status{Version: s.Source.Version, Path: s.Source.Path, Applied: s.State == goose.StateApplied})
	}
	return out, nil
}

// Close releases the database handle (not the pool).
func (m *Migrator) Close() error { return m.db.Close() }

// Up is a convenience: migrate pool to the newest version.
func Up(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	m, err := NewMigrator(pool, logger)
	if err != nil {
		return err
	}
	_, err = m.Up(ctx)
	if cerr := m.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
