package server

import (
	"os"
	"regexp"
	"testing"

	"github.com/grupogad/outboxd/relay"
	"github.com/grupogad/outboxd/ws"
)

// Every setting is in the README's configuration table, and where the
// table gives a default as a literal, it is the one the binary uses (the
// envDefault tags of Config, the only place the binary's defaults are
// written).
func TestReadmeTableMatchesDefaults(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)*) \\| ([^|]*) \\|")
	backticked := regexp.MustCompile("`([^`]*)`")
	documented := map[string]string{} // var → the default cell's literal, "" if not one
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		vars := backticked.FindAllStringSubmatch(m[1], -1)
		defs := backticked.FindAllStringSubmatch(m[2], -1)
		for i, v := range vars {
			d := ""
			if len(defs) == len(vars) {
				d = defs[i][1]
			}
			documented[v[1]] = d
		}
	}
	vars := Variables()
	if len(vars) < 50 {
		t.Fatalf("only %d variables found in Config", len(vars))
	}
	for _, v := range vars {
		name, def, hasDef := v.Name, v.Default, v.HasDefault
		doc, ok := documented[name]
		switch {
		case !ok:
			t.Errorf("%s is not in the README's configuration table", name)
		case def == "0" && documented[doc] != "" || def == "0" && isVar(doc):
			// 0 stands for a value derived from another setting, which
			// the README names (MAX_OPEN_CONNS: MAX_CONNECTIONS + 1024).
		case hasDef && doc != "" && doc != def:
			t.Errorf("%s: README says `%s`, the binary's default is %q", name, doc, def)
		}
	}
}

// The packages' own defaults (for callers of the library) are the
// binary's, so that a test or tool wiring the packages behaves as outboxd.
func TestPackageDefaultsAreTheBinarys(t *testing.T) {
	cfg, err := LoadConfig(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	for name, pair := range map[string][2]any{
		"HEARTBEAT_INTERVAL":      {cfg.HeartbeatInterval, ws.HeartbeatIntervalDefault},
		"WS_SEND_BUFFER":          {cfg.WSSendBuffer, ws.SendBufferDefault},
		"WS_SEND_BUFFER_BYTES":    {cfg.WSSendBufferBytes, ws.SendBufferBytesDefault},
		"WS_MAX_MESSAGE_SIZE":     {cfg.WSMaxMessageSize, int64(ws.MaxMessageSizeDefault)},
		"CATCHUP_PAGE_BYTES":      {cfg.CatchUpPageBytes, ws.CatchUpPageBytesDefault},
		"CATCHUP_MEMORY":          {cfg.CatchUpMemory, ws.CatchUpMemoryDefault},
		"REPLAY_MAX":              {cfg.ReplayMax, int64(ws.ReplayMaxDefault)},
		"METRICS_TOPICS_MAX":      {cfg.MetricsTopicsMax, ws.MetricsTopicsMaxDefault},
		"JWT_MAX_TTL":             {cfg.JWTMaxTTL, ws.MaxTTLDefault},
		"RELAY_BATCH_SIZE":        {cfg.RelayBatchSize, relay.BatchSizeDefault},
		"RELAY_POLL_INTERVAL":     {cfg.RelayPollInterval, relay.PollIntervalDefault},
		"RELAY_MIN_POLL_INTERVAL": {cfg.RelayMinPollInterval, relay.MinPollIntervalDefault},
		"RELAY_BATCH_BYTES":       {cfg.RelayBatchBytes, relay.TailBatchBytesDefault},
		"OUTBOX_RETENTION":        {cfg.OutboxRetention, relay.RetentionDefault},
	} {
		if pair[0] != pair[1] {
			t.Errorf("%s: the binary's default %v, the package's %v", name, pair[0], pair[1])
		}
	}
}

func isVar(s string) bool { return regexp.MustCompile(`^[A-Z][A-Z0-9_]+$`).MatchString(s) }
