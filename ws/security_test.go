package ws

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/grupogad/outboxd/outbox"
)

// A producer cannot forge the relay's columns: the INSERT fails naming the
// column, and the stream goes on gap-free.
func TestRelayOwnsSeqAndDeliveredAt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	cl := e.connect("", "u1")
	e.emit(ev("task_event", 1, nil, nil))
	for _, forged := range []struct{ sql, column string }{
		{`INSERT INTO outbox.events (topic, payload, seq) VALUES ('x', '{}', 3)`, "seq"},
		{`INSERT INTO outbox.events (topic, payload, seq) VALUES ('x', '{}', 9223372036854775000)`, "seq"},
		{`INSERT INTO outbox.events (topic, payload, delivered_at) VALUES ('x', '{}', now())`, "delivered_at"},
	} {
		_, err := e.db.Pool.Exec(context.Background(), forged.sql)
		if err == nil || !strings.Contains(err.Error(), "outbox.events."+forged.column+" is") {
			t.Fatalf("%s: %v", forged.sql, err)
		}
	}
	e.emit(ev("task_event", 2, nil, nil), ev("task_event", 3, nil, nil))
	if fs := cl.events(3, 5*time.Second); fs[0].Seq != 1 || fs[1].Seq != 2 || fs[2].Seq != 3 {
		t.Fatalf("seqs %d %d %d", fs[0].Seq, fs[1].Seq, fs[2].Seq)
	}
}

// Empty targets are empty sets: SQL and Go reach nobody with them, live
// and on replay; only NULL users AND NULL roles broadcast.
func TestEmptyTargetsReachNobody(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	cl := e.connect("", "u1", "LEVEL_1")
	for _, q := range []string{
		`SELECT outbox.emit('t', '{}', users => '{}', roles => NULL)`,
		`SELECT outbox.emit('t', '{}', users => NULL, roles => '{}')`,
		`SELECT outbox.emit('t', '{}', users => '{}', roles => '{}')`,
	} {
		e.db.Exec(t, q)
	}
	e.emit(outbox.Event{Topic: "t", Data: map[string]int{}, Users: []string{}},
		outbox.Event{Topic: "t", Data: map[string]int{}, Roles: []string{}},
		outbox.Event{Topic: "t", Data: map[string]int{}})
	e.db.Exec(t, `SELECT outbox.emit('marker', '{}')`) // NULL, NULL: everyone
	f := cl.events(1, 5*time.Second)[0]
	if f.Type != "marker" || f.Seq != 7 {
		t.Fatalf("first event %s #%d, want the marker #7: an empty target reached the client", f.Type, f.Seq)
	}
	// The same on replay, from the table and from memory.
	again := e.connect("since=0", "u1", "LEVEL_1")
	if f := again.events(1, 5*time.Second)[0]; f.Type != "marker" {
		t.Fatalf("replayed %s #%d first", f.Type, f.Seq)
	}
	e.hub.recent.reset()
	table := e.connect("since=0", "u1", "LEVEL_1")
	if f := table.events(1, 5*time.Second)[0]; f.Type != "marker" {
		t.Fatalf("replayed from the table %s #%d first", f.Type, f.Seq)
	}
}

// Every client frame counts against the message rate, pings included.
func TestPingFloodIsClosed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{Limits: Limits{MessageRate: 20, MessageBurst: 40}}})
	cl := e.connect("", "u1")
	for range 200 {
		if err := cl.conn.WriteControl(websocket.PingMessage, []byte("x"), time.Now().Add(time.Second)); err != nil {
			break // closed under us: fine
		}
	}
	if code, err := cl.closed(10 * time.Second); code != ClosePolicy.Code {
		t.Fatalf("closed with %d (%v), want %d", code, err, ClosePolicy.Code)
	}
	if d, _, _ := e.hub.Counts(); d["message_rate"] != 1 {
		t.Fatalf("drops %v", d)
	}
}

// The token may travel as a subprotocol; the server answers outboxd.v1.
func TestTokenInSubprotocol(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	proto := func(tok string) http.Header {
		return http.Header{"Sec-WebSocket-Protocol": {Subprotocol + ", " + SubprotocolTokenPrefix + tok}}
	}
	cl, resp, err := e.dial("", dialOpts{header: proto(e.token("u1", "LEVEL_1"))})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != Subprotocol {
		t.Fatalf("subprotocol %q, want %q", got, Subprotocol)
	}
	if f := cl.next(5 * time.Second); f.Type != TypeWelcome {
		t.Fatalf("first frame %+v", f)
	}
	expired, _ := MintHS256(testSecret, "u1", nil, -time.Hour)
	for _, bad := range []string{expired, "not-a-jwt", ""} {
		_, resp, err := e.dial("", dialOpts{header: proto(bad)})
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("token %q: %v %v", bad, err, resp)
		}
	}
}

// The development broadcast checks Origin like /ws/connect; with any
// origin allowed, a browser's POST must come from the server's own.
func TestBroadcastRefusesCrossSite(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{cfg: Config{AllowedOrigins: []string{"https://app.example"}}})
	dev := newEnv(t, envOpts{})
	post := func(e *env, origin, contentType, body string) int {
		t.Helper()
		req, _ := http.NewRequest("POST", e.srv.URL+"/ws/_test/broadcast", strings.NewReader(body))
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		e                *env
		origin, ct, body string
		want             int
	}{
		{e, "https://evil.example", "text/plain", `{}`, http.StatusForbidden},
		{e, "https://app.example", "application/json", `{"title":"x"}`, http.StatusOK},
		{e, "", "", "", http.StatusOK}, // curl: no Origin
		{dev, "https://evil.example", "text/plain", `{}`, http.StatusForbidden},
		{dev, dev.srv.URL, "application/json", `{}`, http.StatusOK}, // the demo page
		{dev, "", "", `{"title":"x"}`, http.StatusOK},
	} {
		if got := post(c.e, c.origin, c.ct, c.body); got != c.want {
			t.Errorf("Origin %q to %s: %d, want %d", c.origin, c.e.srv.URL, got, c.want)
		}
	}
}

// JWKS keys for another use or algorithm never verify, kid or no kid.
func TestJWKSKeysOnlyVerifyWhatTheyAreFor(t *testing.T) {
	t.Parallel()
	sigKey := must(rsa.GenerateKey(rand.Reader, 2048))
	encKey := must(rsa.GenerateKey(rand.Reader, 2048))
	ecKey := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	rsaJWK := func(k *rsa.PrivateKey, kid, use string) map[string]string {
		m := map[string]string{"kty": "RSA", "kid": kid, "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
		if use != "" {
			m["use"] = use
		}
		return m
	}
	set := map[string]any{"keys": []map[string]string{
		rsaJWK(sigKey, "sig1", ""), rsaJWK(encKey, "enc1", "enc"),
		{"kty": "EC", "kid": "ec1", "alg": "ES256", "crv": "P-256",
			"x": b64(ecKey.X.FillBytes(make([]byte, 32))), "y": b64(ecKey.Y.FillBytes(make([]byte, 32)))},
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(set) }))
	defer srv.Close()
	a, err := NewAuthenticator(t.Context(), AuthConfig{JWKSURL: srv.URL, JWKSClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{"sub": "u", "exp": time.Now().Add(time.Hour).Unix()}
	for _, c := range []struct {
		name string
		tok  string
		ok   bool
	}{
		{"signing key, kid", sign(t, jwt.SigningMethodRS256, sigKey, "sig1", claims), true},
		{"signing key, no kid", sign(t, jwt.SigningMethodRS256, sigKey, "", claims), true},
		{"EC key, kid", sign(t, jwt.SigningMethodES256, ecKey, "ec1", claims), true},
		{"encryption key, kid", sign(t, jwt.SigningMethodRS256, encKey, "enc1", claims), false},
		{"encryption key, no kid", sign(t, jwt.SigningMethodRS256, encKey, "", claims), false},
		{"RS256 naming the EC key", sign(t, jwt.SigningMethodRS256, sigKey, "ec1", claims), false},
	} {
		if _, err := a.Validate(t.Context(), c.tok); (err == nil) != c.ok {
			t.Errorf("%s: err %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

// A role literally named "none" is not the series of sessions without a
// role, and /ws/stats can hide role names.
func TestRoleNamedNoneAndHiddenRoles(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	e := newEnv(t, envOpts{cfg: Config{MeterProvider: mp, HideRoleNames: true}})
	e.connect("", "u1", "none")
	e.connect("", "u2")
	e.connect("", "u3")
	fams := scrape(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if got := value(fams, "outboxd_ws_connections_by_role", "role", "none"); got != 1 {
		t.Errorf(`role="none": %v, want 1`, got)
	}
	if got := value(fams, "outboxd_ws_connections_by_role", "no_role", "true"); got != 2 {
		t.Errorf(`no_role="true": %v, want 2`, got)
	}
	st := e.stats()["stats"].(map[string]any)
	if by := st["connections_by_role"].(map[string]any); len(by) != 0 || st["total_connections"] != 3.0 {
		t.Errorf("stats with hidden roles: %v", st)
	}
	// Two reads within a second share one database read.
	first := e.hub.Stats(t.Context())
	at := e.hub.status.at
	e.hub.Stats(t.Context())
	if e.hub.status.at != at || first.Relay.Epoch == "" {
		t.Error("the relay status was read twice within its TTL")
	}
}
