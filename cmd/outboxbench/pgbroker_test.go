package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/grupogad/outboxd/internal/dbtest"
)

// centrifugoBinary is the peer built by scripts/ensure-centrifugo.sh (make
// test-deps).
func centrifugoBinary(t *testing.T) string {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join("..", "..", ".tools", "bin", "centrifugo"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Centrifugo v6.9.1 is required: scripts/ensure-centrifugo.sh builds it into .tools/bin (make test-deps): %v", err)
	}
	return bin
}

// The stream-broker peer as the benchmark sets it up: Centrifugo creates
// its schema; a cf_stream_publish in a committed transaction reaches a
// subscribed client with the next offset, one in a rolled-back transaction
// never does.
func TestStreamBrokerPeer(t *testing.T) {
	db := dbtest.NewEmpty(t)
	e := &benchEnv{o: options{centrifugo: centrifugoBinary(t), adminURL: dbtest.AdminURL(), dbName: db.Name}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := e.startCentrifugoStream(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	defer c.stop()
	for _, rel := range []string{"cf_stream", "cf_stream_meta", "cf_stream_shard_lock"} {
		if db.Int64(t, `SELECT count(*) FROM pg_class WHERE relname = $1`, rel) != 1 {
			t.Fatalf("Centrifugo did not create %s", rel)
		}
	}
	cl, err := c.dial(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.conn.Close()
	publish := func(p int, commit bool) {
		t.Helper()
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := streamPublish(ctx, tx, time.Now().UnixNano(), p, ""); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	publish(1, true)
	publish(999, false)
	publish(2, true)
	if top, err := c.position(ctx, db.Pool); err != nil || top != 2 {
		t.Fatalf("top offset %d (%v), want 2", top, err)
	}
	waitDelivered([]*client{cl}, 2, 30*time.Second, 30*time.Second)
	last, distinct, dups, gaps, _, _ := cl.snapshot()
	if last != 2 || distinct != 2 || dups != 0 || gaps != 0 || cl.outOfOrder() != 0 {
		t.Fatalf("client: last %d, %d distinct, %d dups, %d gaps", last, distinct, dups, gaps)
	}
	// What the client got is the committed data: the rolled-back
	// publication's row never existed.
	var rolledBack int64
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM cf_stream WHERE data->>'p' = '999'`).Scan(&rolledBack); err != nil || rolledBack != 0 {
		t.Fatalf("rolled-back publication stored: %d (%v)", rolledBack, err)
	}
	var data []byte
	if err := db.Pool.QueryRow(ctx, `SELECT data::text FROM cf_stream WHERE channel_offset = 2`).Scan(&data); err != nil || !bytes.Contains(data, []byte(`"p": 2`)) {
		t.Fatalf("offset 2 holds %s (%v)", data, err)
	}
}
