// Package pgcluster starts PostgreSQL clusters of a test's own — a primary
// and streaming standbys of it — with Debian's server binaries, in
// temporary folders, on free ports of 127.0.0.1, and removes them after
// the test. The machine's own cluster and its configuration are left
// alone. Run as root, the binaries run as the postgres user (PostgreSQL
// refuses to run as root).
//
// Tests that use it start clusters of their own: they run serially (not
// t.Parallel), since the host has few cores.
package pgcluster

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// BinDir is where the server binaries are: PG_BINDIR, else Debian's
// PostgreSQL 15.
func BinDir() string {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// T is what a cluster needs of its user: a *testing.T, or outboxbench's
// stand-in.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Cluster is one running cluster.
type Cluster struct {
	Dir  string
	Port int
	t    T
}

// settings make a throwaway cluster fast (no fsync: it is removed after
// the test) and able to stream to standbys.
const settings = `
listen_addresses = '127.0.0.1'
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 8
hot_standby = on
shared_buffers = 64MB
max_connections = 200
log_min_messages = warning
`

// StartPrimary creates and starts a new cluster; extraConf is appended
// to its postgresql.conf (and so its standbys').
func StartPrimary(t T, extraConf ...string) *Cluster {
	t.Helper()
	c := newCluster(t, "primary")
	c.run("initdb", "-D", c.data(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	c.configure(extraConf...)
	c.Start()
	return c
}

// StartStandby creates a streaming standby of c (pg_basebackup -R) and
// starts it.
func (c *Cluster) StartStandby() *Cluster {
	c.t.Helper()
	s := newCluster(c.t, "standby")
	s.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres",
		"-D", s.data(), "-R", "-X", "stream", "-c", "fast", "--no-sync")
	s.configure()
	s.Start()
	return s
}

func newCluster(t T, name string) *Cluster {
	t.Helper()
	for _, bin := range []string{"initdb", "pg_ctl", "pg_basebackup", "postgres"} {
		if _, err := os.Stat(filepath.Join(BinDir(), bin)); err != nil {
			t.Fatalf("pgcluster: PostgreSQL server binaries are required (apt-get install postgresql-15, or PG_BINDIR): %v", err)
		}
	}
	dir, err := os.MkdirTemp("", "outboxd-pg-"+name+"-")
	if err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
	c := &Cluster{Dir: dir, Port: freePort(t), t: t}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgcluster: running as root needs a postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatalf("pgcluster: %v", err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
	t.Cleanup(func() {
		c.stop("immediate")
		_ = os.RemoveAll(dir)
	})
	return c
}

func (c *Cluster) data() string { return filepath.Join(c.Dir, "data") }

// configure appends the settings, this cluster's port and socket folder
// (later lines win over what pg_basebackup copied from the primary).
func (c *Cluster) configure(extra ...string) {
	conf := settings + strings.Join(extra, "\n") + fmt.Sprintf("\nport = %d\nunix_socket_directories = '%s'\n", c.Port, c.Dir)
	f, err := os.OpenFile(filepath.Join(c.data(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		c.t.Fatalf("pgcluster: %v", err)
	}
	defer f.Close()
	if _, err := f.WriteString(conf); err != nil {
		c.t.Fatalf("pgcluster: %v", err)
	}
}

// URL is a connection string to database db ("" for postgres).
func (c *Cluster) URL(db string) string {
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// Start starts the cluster and waits until it accepts connections.
func (c *Cluster) Start() {
	c.t.Helper()
	c.run("pg_ctl", "-D", c.data(), "-l", filepath.Join(c.Dir, "log"), "-w", "-t", "60", "start")
}

// Stop stops the cluster (fast shutdown).
func (c *Cluster) Stop() {
	c.t.Helper()
	if err := c.stop("fast"); err != nil {
		c.t.Fatalf("pgcluster: stop: %v", err)
	}
}

func (c *Cluster) stop(mode string) error {
	if _, err := os.Stat(filepath.Join(c.data(), "postmaster.pid")); err != nil {
		return nil // not running
	}
	_, err := c.output("pg_ctl", "-D", c.data(), "-m", mode, "-w", "-t", "60", "stop")
	return err
}

// Exec runs sql on database db of the cluster.
func (c *Cluster) Exec(db, sql string, args ...any) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL(db))
	if err != nil {
		c.t.Fatalf("pgcluster: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		c.t.Fatalf("pgcluster: %s: %v", sql, err)
	}
}

// Log is the server's log so far.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "log"))
	return string(b)
}

func (c *Cluster) run(bin string, args ...string) {
	c.t.Helper()
	if out, err := c.output(bin, args...); err != nil {
		c.t.Fatalf("pgcluster: %s %s: %v\n%s\n%s", bin, strings.Join(args, " "), err, out, c.Log())
	}
}

func (c *Cluster) output(bin string, args ...string) (string, error) {
	path := filepath.Join(BinDir(), bin)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = c.Dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func freePort(t T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// WaitReplayed waits until standby s has replayed everything primary c
// had written when called.
func (s *Cluster) WaitReplayed(c *Cluster, d time.Duration) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	pc, err := pgx.Connect(ctx, c.URL(""))
	if err != nil {
		s.t.Fatalf("pgcluster: %v", err)
	}
	defer pc.Close(context.Background())
	var lsn string
	if err := pc.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn); err != nil {
		s.t.Fatalf("pgcluster: %v", err)
	}
	sc, err := pgx.Connect(ctx, s.URL(""))
	if err != nil {
		s.t.Fatalf("pgcluster: %v", err)
	}
	defer sc.Close(context.Background())
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var done bool
		if err := sc.QueryRow(ctx, `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, lsn).Scan(&done); err != nil {
			s.t.Fatalf("pgcluster: standby has not replayed %s: %v", lsn, err)
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			s.t.Fatalf("pgcluster: standby has not replayed %s within %s", lsn, d)
		case <-tick.C:
		}
	}
}
