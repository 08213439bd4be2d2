package ws

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// AuthConfig says how tokens are checked.
type AuthConfig struct {
	// SecretKey enables HS256.
	SecretKey string
	// JWKSURL enables RS256 and ES256 with keys from a JWK Set.
	JWKSURL string
	// Issuer and Audience, when set, must match the iss and aud claims.
	Issuer   string
	Audience string
	// RequireExp refuses tokens without exp.
	RequireExp bool
	// Leeway tolerates clock skew on exp, nbf and iat (LeewayDefault).
	Leeway time.Duration
	// MaxTTL bounds a token's lifetime (JWT_MAX_TTL, MaxTTLDefault): exp −
	// iat, or exp − now for a token without iat. Revocations are kept this
	// long (relay.RetentionConfig.RevocationTTL).
	MaxTTL time.Duration
	// JWKSClient overrides the HTTP client used for JWKSURL (tests).
	JWKSClient *http.Client
}

// LeewayDefault is the clock skew tolerated on time claims.
const LeewayDefault = 30 * time.Second

// MaxTTLDefault is AuthConfig.MaxTTL's default: the longest development
// token outboxd mints (outboxd token, /ws/_test/token) lives 24 h.
const MaxTTLDefault = 24 * time.Hour

// Claims is what a validated token says about its holder.
type Claims struct {
	UserID  string
	Roles   []string
	Expires time.Time // zero when the token has no exp
	Issued  time.Time // zero when the token has no iat
}

type tokenClaims struct {
	jwt.RegisteredClaims
	Role  string   `json:"role,omitempty"`
	Roles []string `json:"roles,omitempty"`
}

// claimTypeError is a claim whose JSON type is not the one RFC 7519 (or
// outboxd, for role and roles) gives it.
type claimTypeError struct{ claim, want string }

func (e *claimTypeError) Error() string { return "token claim " + e.claim + " is not " + e.want }

// UnmarshalJSON checks the claims' JSON types before decoding them: jwt
// reads a NumericDate through json.Number, which also takes a string
// ("exp": "9999999999"), and a string where an array belongs is a token
// minted wrong, not one to guess at.
func (tc *tokenClaims) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	for claim, want := range map[string]byte{"exp": '0', "iat": '0', "nbf": '0', "sub": '"', "iss": '"', "role": '"', "roles": '['} {
		v, ok := raw[claim]
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case want == '0' && (len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9'))):
			return &claimTypeError{claim, "a number"}
		case want == '"' && (len(v) == 0 || v[0] != '"'):
			return &claimTypeError{claim, "a string"}
		case want == '[' && (len(v) == 0 || v[0] != '['):
			return &claimTypeError{claim, "an array of strings"}
		}
	}
	type plain tokenClaims
	return json.Unmarshal(b, (*plain)(tc))
}

// Authenticator validates JWTs. Algorithms are pinned: HS256 only with a
// secret, RS256/ES256 only with a JWKS; "none" never passes.
type Authenticator struct {
	cfg     AuthConfig
	parser  *jwt.Parser
	jwks    keyfunc.Keyfunc
	methods []string
}

// NewAuthenticator builds an Authenticator. ctx bounds the JWKS refresh
// goroutine: cancel it to stop refreshing.
func NewAuthenticator(ctx context.Context, cfg AuthConfig) (*Authenticator, error) {
	if cfg.SecretKey == "" && cfg.JWKSURL == "" {
		return nil, errors.New("ws: auth needs SECRET_KEY or JWKS_URL")
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = LeewayDefault
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = MaxTTLDefault
	}
	a := &Authenticator{cfg: cfg}
	if cfg.SecretKey != "" {
		a.methods = append(a.methods, jwt.SigningMethodHS256.Alg())
	}
	if cfg.JWKSURL != "" {
		noErr := true
		kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
			Client:                    cfg.JWKSClient,
			HTTPTimeout:               5 * time.Second,
			RateLimitWaitMax:          time.Second,
			RefreshInterval:           10 * time.Minute,
			RefreshUnknownKID:         rate.NewLimiter(rate.Every(30*time.Second), 1),
			NoErrorReturnFirstHTTPReq: &noErr,
		})
		if err != nil {
			return nil, fmt.Errorf("ws: JWKS %s: %w", cfg.JWKSURL, err)
		}
		a.jwks = kf
		a.methods = append(a.methods, jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg())
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(a.methods), jwt.WithLeeway(cfg.Leeway), jwt.WithIssuedAt()}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.RequireExp {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	a.parser = jwt.NewParser(opts...)
	return a, nil
}

func (a *Authenticator) keyFor(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		switch t.Method.Alg() {
		case jwt.SigningMethodHS256.Alg():
			if a.cfg.SecretKey == "" {
				return nil, errors.New("HS256 is not enabled")
			}
			return []byte(a.cfg.SecretKey), nil
		default:
			if a.jwks == nil {
				return nil, fmt.Errorf("%s is not enabled", t.Method.Alg())
			}
			return a.jwksKey(ctx, t)
		}
	}
}

// jwksKey returns the JWKS key(s) that may verify t: a key marked for
// another use ("use": "enc"), for another algorithm ("alg"), or of a type
// that does not fit t's algorithm never verifies, with or without a kid.
func (a *Authenticator) jwksKey(ctx context.Context, t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	store := a.jwks.Storage()
	if kid, ok := t.Header[jwkset.HeaderKID].(string); ok {
		j, err := store.KeyRead(ctx, kid)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", kid, err)
		}
		key, ok := verificationKey(j, alg)
		if !ok {
			return nil, fmt.Errorf("key %q may not verify %s signatures", kid, alg)
		}
		return key, nil
	}
	all, err := store.KeyReadAll(ctx)
	if err != nil {
		return nil, err
	}
	var set jwt.VerificationKeySet
	for _, j := range all {
		if key, ok := verificationKey(j, alg); ok {
			set.Keys = append(set.Keys, key)
		}
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("no JWKS key may verify %s signatures", alg)
	}
	return set, nil
}

// verificationKey returns j's public key if j may verify alg signatures.
func verificationKey(j jwkset.JWK, alg string) (any, bool) {
	m := j.Marshal()
	if m.USE != "" && m.USE != jwkset.UseSig {
		return nil, false
	}
	if m.ALG != "" && m.ALG.String() != alg {
		return nil, false
	}
	key := j.Key()
	if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
		key = pk.Public()
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		return k, alg == jwt.SigningMethodRS256.Alg()
	case *ecdsa.PublicKey:
		return k, alg == jwt.SigningMethodES256.Alg() && k.Curve == elliptic.P256()
	}
	return nil, false
}

// MaxTokenBytes bounds the token accepted, before any parsing.
const MaxTokenBytes = 8 << 10

// Validate checks raw and returns its claims, or an error that says why the
// token was refused (safe to show the client: it never echoes the token).
func (a *Authenticator) Validate(ctx context.Context, raw string) (Claims, error) {
	if raw == "" {
		return Claims{}, errors.New("token missing: pass it as the subprotocol outboxd.token.<JWT>, ?token= or Authorization: Bearer")
	}
	if len(raw) > MaxTokenBytes {
		return Claims{}, fmt.Errorf("token longer than %d bytes", MaxTokenBytes)
	}
	var tc tokenClaims
	if _, err := a.parser.ParseWithClaims(raw, &tc, a.keyFor(ctx)); err != nil {
		// jwt reports an algorithm outside the pinned list as a bad
		// signature; say what it is.
		if errors.Is(err, jwt.ErrTokenSignatureInvalid) && strings.Contains(err.Error(), "signing method") {
			return Claims{}, fmt.Errorf("token algorithm not accepted (accepted: %s)", strings.Join(a.methods, ", "))
		}
		if cte := (*claimTypeError)(nil); errors.As(err, &cte) {
			return Claims{}, cte
		}
		return Claims{}, describeJWTError(err)
	}
	if strings.TrimSpace(tc.Subject) == "" {
		return Claims{}, errors.New("token has no sub claim")
	}
	c := Claims{UserID: tc.Subject}
	if tc.ExpiresAt != nil {
		c.Expires = tc.ExpiresAt.Time
	}
	if tc.IssuedAt != nil {
		c.Issued = tc.IssuedAt.Time
	}
	if !c.Expires.IsZero() {
		from, what := c.Issued, "exp − iat"
		if from.IsZero() {
			from, what = time.Now(), "exp − now"
		}
		if life := c.Expires.Sub(from); life > a.cfg.MaxTTL {
			return Claims{}, fmt.Errorf("token lifetime (%s) over the %s accepted (JWT_MAX_TTL)", what, a.cfg.MaxTTL)
		}
	}
	roles := tc.Roles
	if tc.Role != "" {
		roles = append([]string{tc.Role}, roles...)
	}
	for _, r := range roles {
		if r != "" && !slices.Contains(c.Roles, r) {
			c.Roles = append(c.Roles, r)
		}
	}
	if c.Roles == nil {
		c.Roles = []string{}
	}
	return c, nil
}

func describeJWTError(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return errors.New("token malformed")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return errors.New("token signature invalid")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return errors.New("token unverifiable: algorithm not accepted or key unknown")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return errors.New("token has no exp claim")
	case errors.Is(err, jwt.ErrTokenExpired):
		return errors.New("token expired")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return errors.New("token not valid yet")
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return errors.New("token issued in the future")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return errors.New("token issuer not accepted")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return errors.New("token audience not accepted")
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		return errors.New("token claims invalid")
	}
	return errors.New("token invalid")
}

// MaxTTL is the longest token lifetime accepted (AuthConfig.MaxTTL).
func (a *Authenticator) MaxTTL() time.Duration { return a.cfg.MaxTTL }

// Mint signs an HS256 development token. It fails without a secret key.
func (a *Authenticator) Mint(sub string, roles []string, ttl time.Duration) (string, error) {
	return MintHS256(a.cfg.SecretKey, sub, roles, ttl)
}

// MintHS256 signs a token for sub with the given roles, valid for ttl.
func MintHS256(secret, sub string, roles []string, ttl time.Duration) (string, error) {
	if secret == "" {
		return "", errors.New("no SECRET_KEY to sign with")
	}
	now := time.Now()
	claims := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
	}
	switch len(roles) {
	case 0:
	case 1:
		claims.Role = roles[0]
	default:
		claims.Roles = roles
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
}

// Subprotocol is the WebSocket subprotocol outboxd speaks. A client may
// carry its token as a second one, SubprotocolTokenPrefix + JWT, which
// keeps it out of URLs and proxy access logs; the server answers with
// Subprotocol alone.
const (
	Subprotocol            = "outboxd.v1"
	SubprotocolTokenPrefix = "outboxd.token."
)

// tokenFromRequest reads the token from ?token=, Authorization: Bearer or
// the Sec-WebSocket-Protocol list; fromProtocol reports the last.
func tokenFromRequest(r *http.Request) (token string, fromProtocol bool) {
	if t := r.URL.Query().Get("token"); t != "" {
		return t, false
	}
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:]), false
	}
	for _, line := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(line, ",") {
			if t, ok := strings.CutPrefix(strings.TrimSpace(p), SubprotocolTokenPrefix); ok {
				return t, true
			}
		}
	}
	return "", false
}
