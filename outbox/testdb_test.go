package outbox_test

// The producer module's tests run against a real PostgreSQL, each in a
// database of its own with the outbox schema applied from the sidecar's
// migrations (../sql), read here without the sidecar's code: this module
// depends on pgx alone.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

type testDB struct {
	Pool *pgxpool.Pool
	URL  string
}

func adminURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

func newTestDB(t *testing.T) *testDB {
	t.Helper()
	ctx := context.Background()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := "outbox_lib_" + hex.EncodeToString(b)
	admin, err := pgx.Connect(ctx, adminURL())
	if err != nil {
		t.Fatalf("PostgreSQL is required (TEST_DATABASE_URL): %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(adminURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	db := &testDB{Pool: pool, URL: u.String()}
	t.Cleanup(func() {
		pool.Close()
		c, err := pgx.Connect(context.Background(), adminURL())
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	db.migrate(t)
	return db
}

// migrate applies the Up part of every ../sql/*.sql migration, one
// statement at a time (goose's StatementBegin/End blocks are one
// statement; elsewhere statements end with a semicolon at the end of a
// line).
func (db *testDB) migrate(t *testing.T) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "sql", "*.sql"))
	if err != nil || len(files) == 0 {
		t.Fatalf("migrations not found in ../sql: %v", err)
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, stmt := range upStatements(string(b)) {
			if _, err := db.Pool.Exec(context.Background(), stmt); err != nil {
				t.Fatalf("%s: %v\n%s", f, err, stmt)
			}
		}
	}
}

func upStatements(src string) []string {
	var out []string
	var cur strings.Builder
	up, block := false, false
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "-- +goose Up"):
			up = true
			continue
		case strings.HasPrefix(trimmed, "-- +goose Down"):
			flush()
			return out
		case strings.HasPrefix(trimmed, "-- +goose StatementBegin"):
			block = true
			continue
		case strings.HasPrefix(trimmed, "-- +goose StatementEnd"):
			block = false
			flush()
			continue
		case !up || strings.HasPrefix(trimmed, "--"):
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if !block && strings.HasSuffix(trimmed, ";") {
			flush()
		}
	}
	flush()
	return out
}

func (db *testDB) Int64(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
