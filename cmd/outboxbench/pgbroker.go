package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The second peer: Centrifugo v6.9.1 with its PostgreSQL stream broker
// (broker type postgres, internal/pgstreambroker): Centrifugo creates its
// schema itself at start (cf_stream, cf_stream_meta, cf_stream_shard_lock
// and the cf_stream_publish function), wakes its outbox worker with
// NOTIFY (use_notify), and keeps a history large enough that every client
// can recover the whole workload. Producers call cf_stream_publish in
// their own transaction, as the last statement before COMMIT, as its
// documentation advises; clients follow the channel by the publication
// offset (per channel, with an epoch), which is checked for loss,
// duplicates and order as outboxd's seq is.
//
// How it orders: cf_stream_publish takes a row lock on one of num_shards
// (8) shard rows and on the channel's meta row, both held until the
// producer commits, and notifies (PostgreSQL serialises NOTIFYing commits
// at one lock): producers publishing to one channel wait for each other.

const (
	streamChannel     = "bench"
	streamHistorySize = 200000
	streamHistoryTTL  = "1h"
)

// offsetKey numbers the stream broker's publications.
var offsetKey = []byte(`"offset":`)

type centrifugoStream struct{ *centrifugo }

func (e *benchEnv) startCentrifugoStream(ctx context.Context, pool *pgxpool.Pool) (*centrifugoStream, error) {
	cfg := centrifugoBase()
	client := cfg["client"].(map[string]any)
	client["recovery_max_publication_limit"] = streamHistorySize
	client["history_max_publication_limit"] = streamHistorySize
	// A recovery of the whole history is one connect reply of several
	// MB: past the default 1 MiB queue the client is cut as slow (3008).
	client["queue_max_size"] = 256 << 20
	// and written within the default 1 s, or the connection is closed.
	cfg["websocket"] = map[string]any{"write_timeout": "60s"}
	cfg["broker"] = map[string]any{
		"enabled": true, "type": "postgres",
		"postgres": map[string]any{"dsn": e.dbURL(), "use_notify": true, "num_shards": 8},
	}
	cfg["channel"] = map[string]any{"without_namespace": map[string]any{
		"history_size": streamHistorySize, "history_ttl": streamHistoryTTL, "force_recovery": true,
	}}
	c, err := e.runCentrifugo(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// Centrifugo creates its schema at start; wait for the function.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ok bool
		err := pool.QueryRow(ctx, `SELECT to_regproc('cf_stream_publish') IS NOT NULL AND to_regclass('cf_stream_meta') IS NOT NULL`).Scan(&ok)
		if err == nil && ok {
			return &centrifugoStream{c}, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.stop()
			return nil, fmt.Errorf("centrifugo's stream broker schema not created: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dial connects client i subscribed to the channel (by its token).
func (c *centrifugoStream) dial(ctx context.Context, i int) (*client, error) {
	return c.dialWith(ctx, i, offsetKey)
}

// position is the channel's top offset (0 before its first publication).
func (c *centrifugoStream) position(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var top int64
	err := pool.QueryRow(ctx, `SELECT coalesce(max(top_offset), 0) FROM cf_stream_meta WHERE channel = $1`, streamChannel).Scan(&top)
	return top, err
}

// inserter publishes in the producer's transaction with cf_stream_publish;
// the data carries the insert time.
func (c *centrifugoStream) inserter() insertFunc {
	return func(ctx context.Context, tx pgx.Tx, producer int, t int64, pad string) error {
		return streamPublish(ctx, tx, t, producer, pad)
	}
}

func streamPublish(ctx context.Context, tx pgx.Tx, t int64, producer int, pad string) error {
	_, err := tx.Exec(ctx, `SELECT cf_stream_publish($1::text, jsonb_build_object('t', $2::bigint, 'p', $3::int, 'pad', $4::text),
  p_history_ttl => $5::interval, p_history_size => $6::int)`,
		streamChannel, t, producer, pad, streamHistoryTTL, streamHistorySize)
	return err
}

var _ server = (*centrifugoStream)(nil)
