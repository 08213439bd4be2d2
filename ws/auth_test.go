package ws

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwksServer serves an RSA and an EC public key as a JWK Set.
func jwksServer(t *testing.T, rsaKey *rsa.PrivateKey, ecKey *ecdsa.PrivateKey) *httptest.Server {
	t.Helper()
	set := map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "rsa1", "alg": "RS256", "use": "sig",
			"n": b64(rsaKey.N.Bytes()), "e": b64(big.NewInt(int64(rsaKey.E)).Bytes())},
		{"kty": "EC", "kid": "ec1", "alg": "ES256", "use": "sig", "crv": "P-256",
			"x": b64(ecKey.X.FillBytes(make([]byte, 32))), "y": b64(ecKey.Y.FillBytes(make([]byte, 32)))},
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func sign(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAuthMatrix(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks := jwksServer(t, rsaKey, ecKey)
	e := newEnv(t, envOpts{
		auth: &AuthConfig{SecretKey: testSecret, JWKSURL: jwks.URL, Issuer: "gad", Audience: "ops", RequireExp: true,
			JWKSClient: jwks.Client()},
		cfg: Config{AllowedOrigins: []string{"https://ops.example"}},
	})
	now := time.Now()
	good := func() jwt.MapClaims {
		return jwt.MapClaims{"sub": "u1", "role": "LEVEL_1", "iss": "gad", "aud": "ops", "exp": now.Add(time.Hour).Unix()}
	}
	with := func(k string, v any) jwt.MapClaims {
		c := good()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(&rsaKey.PublicKey))})
	noneTok := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", good())
	hs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", c) }

	refused := []struct{ name, token, detail string }{
		{"missing", "", "token missing"},
		{"malformed", "not.a.jwt", "malformed"},
		{"garbage", strings.Repeat("x", 100), "malformed"},
		{"bad signature", sign(t, jwt.SigningMethodHS256, []byte("another-secret-0123456789"), "", good()), "signature invalid"},
		{"alg none", noneTok, "algorithm not accepted"},
		{"HS/RS confusion", sign(t, jwt.SigningMethodHS256, pubPEM, "rsa1", good()), "signature invalid"},
		{"RS256 unknown key", sign(t, jwt.SigningMethodRS256, must(rsa.GenerateKey(rand.Reader, 2048)), "other", good()), "unverifiable"},
		{"HS384 not pinned", sign(t, jwt.SigningMethodHS384, []byte(testSecret), "", good()), "algorithm not accepted"},
		{"expired", hs(with("exp", now.Add(-time.Hour).Unix())), "expired"},
		{"no exp", hs(with("exp", nil)), "no exp"},
		{"not yet valid", hs(with("nbf", now.Add(time.Hour).Unix())), "not valid yet"},
		{"wrong issuer", hs(with("iss", "evil")), "issuer"},
		{"wrong audience", hs(with("aud", "someone-else")), "audience"},
		{"missing sub", hs(with("sub", nil)), "no sub"},
		{"blank sub", hs(with("sub", "  ")), "no sub"},
		{"role not a string", hs(with("role", 7)), "claim role is not a string"},
		{"too long", strings.Repeat("a", MaxTokenBytes+1), "longer"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			_, resp, err := e.dial("token="+url.QueryEscape(c.token), dialOpts{})
			if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("dial: %v, response %v; want 401", err, resp)
			}
			var body httpError
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if body.Error != "invalid_token" || !strings.Contains(body.Detail, c.detail) {
				t.Fatalf("body %+v; want invalid_token mentioning %q", body, c.detail)
			}
			if c.token != "" && len(c.token) > 20 && strings.Contains(body.Detail, c.token[:20]) {
				t.Fatal("error echoes the token")
			}
		})
	}
	if n := e.connections(); n != 0 {
		t.Fatalf("%d sessions after refused tokens", n)
	}

	accepted := []struct {
		name   string
		token  string
		header bool
		roles  []string
	}{
		{"HS256 query", hs(good()), false, []string{"LEVEL_1"}},
		{"HS256 bearer", hs(with("roles", []string{"admin", "LEVEL_1"})), true, []string{"LEVEL_1", "admin"}},
		{"RS256 from JWKS", sign(t, jwt.SigningMethodRS256, rsaKey, "rsa1", good()), false, []string{"LEVEL_1"}},
		{"ES256 from JWKS", sign(t, jwt.SigningMethodES256, ecKey, "ec1", with("role", nil)), true, []string{}},
	}
	for _, c := range accepted {
		t.Run(c.name, func(t *testing.T) {
			o := dialOpts{}
			q := "token=" + url.QueryEscape(c.token)
			if c.header {
				o.header = http.Header{"Authorization": {"Bearer " + c.token}}
				q = ""
			}
			cl, resp, err := e.dial(q, o)
			if err != nil {
				t.Fatalf("dial: %v %v", err, resp)
			}
			w := cl.next(5 * time.Second)
			var d WelcomeData
			if err := json.Unmarshal(w.Data, &d); err != nil || w.Type != TypeWelcome {
				t.Fatalf("welcome %+v %v", w, err)
			}
			if d.UserID != "u1" || strings.Join(d.Roles, ",") != strings.Join(c.roles, ",") || d.HeartbeatInterval != 30 {
				t.Fatalf("welcome data %+v", d)
			}
			_ = cl.conn.Close()
		})
	}

	t.Run("foreign origin", func(t *testing.T) {
		_, resp, err := e.dial("token="+url.QueryEscape(hs(good())), dialOpts{header: http.Header{"Origin": {"https://evil.example"}}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("dial: %v %v; want 403", err, resp)
		}
	})
	t.Run("allowed origin", func(t *testing.T) {
		cl, _, err := e.dial("token="+url.QueryEscape(hs(good())), dialOpts{header: http.Header{"Origin": {"https://ops.example"}}})
		if err != nil {
			t.Fatal(err)
		}
		_ = cl.conn.Close()
	})
}

// Without a secret, HS256 is not even considered: the HS/RS confusion
// attack signs with the public key as an HMAC secret.
func TestAuthJWKSOnlyRefusesHS256(t *testing.T) {
	t.Parallel()
	rsaKey := must(rsa.GenerateKey(rand.Reader, 2048))
	ecKey := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	jwks := jwksServer(t, rsaKey, ecKey)
	a, err := NewAuthenticator(t.Context(), AuthConfig{JWKSURL: jwks.URL, JWKSClient: jwks.Client()})
	if err != nil {
		t.Fatal(err)
	}
	pubDER := must(x509.MarshalPKIXPublicKey(&rsaKey.PublicKey))
	tok := sign(t, jwt.SigningMethodHS256, pubDER, "rsa1", jwt.MapClaims{"sub": "u", "exp": time.Now().Add(time.Hour).Unix()})
	if _, err := a.Validate(t.Context(), tok); err == nil {
		t.Fatal("HS256 accepted without SECRET_KEY")
	}
	if _, err := a.Mint("u", nil, time.Minute); err == nil {
		t.Fatal("Mint without a secret")
	}
	ok := sign(t, jwt.SigningMethodRS256, rsaKey, "rsa1", jwt.MapClaims{"sub": "u"})
	if c, err := a.Validate(t.Context(), ok); err != nil || c.UserID != "u" || !c.Expires.IsZero() {
		t.Fatalf("RS256 without exp and RequireExp=false: %+v %v", c, err)
	}
	if _, err := NewAuthenticator(t.Context(), AuthConfig{}); err == nil {
		t.Fatal("authenticator without keys")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
