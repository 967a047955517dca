package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// VerifierConfig says which tokens a Verifier accepts. At least one key source
// (HS256Secret, PublicKeyPEMs, JWKSURL) must be set.
type VerifierConfig struct {
	// HS256Secret enables HS256 with this shared secret (at least MinSecretLen bytes).
	// Default: none (HS256 refused).
	HS256Secret []byte
	// PublicKeyPEMs enable RS256/RS384/RS512 (RSA keys of at least 2048 bits) and
	// ES256/ES384/ES512 (P-256/P-384/P-521 keys). Each entry holds one or more PEM blocks
	// of type "PUBLIC KEY", "RSA PUBLIC KEY" or "CERTIFICATE". Default: none.
	PublicKeyPEMs [][]byte
	// JWKSURL enables the RS* and ES* methods with the keys of this JSON Web Key Set,
	// selected by the token's "kid". https, or http on a loopback host. The set is fetched
	// on first use, reused for JWKSMaxAge, and fetched again earlier for an unknown kid
	// (at most every JWKSMinInterval). Default: none.
	JWKSURL string
	// HTTPClient fetches JWKSURL (e.g. with a private CA). Default: a client with a
	// JWKSTimeout timeout.
	HTTPClient *http.Client
	// Audience is the aud value a token must carry. Default: DefaultAudience ("nowconnect").
	Audience string
	// Issuer, when non-empty, is the iss value a token must carry. Default: not checked.
	Issuer string
	// Leeway is the clock skew allowed on exp and nbf. Default: 0.
	Leeway time.Duration
	// Now is the clock, for tests. Default: time.Now.
	Now func() time.Time
}

// Verifier checks agent tokens. It is safe for concurrent use.
type Verifier struct {
	// Set at construction, read-only after.
	secret  any         // HS256 key as []byte, boxed once; nil = HS256 refused
	static  []pubKey    // keys from PublicKeyPEMs
	jwks    *jwksCache  // nil without JWKSURL
	methods []string    // accepted signing methods
	issuer  string      // required iss, "" = not checked
	parser  *jwt.Parser // holds methods, audience, issuer, leeway and clock
	keyfunc jwt.Keyfunc // v.key, bound once
}

// NewVerifier checks cfg and builds a Verifier. It does not fetch the JWKS; call
// RefreshKeys to do so before the first Verify.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	v := &Verifier{}
	if cfg.HS256Secret != nil {
		if len(cfg.HS256Secret) < MinSecretLen {
			return nil, fmt.Errorf("auth: HS256 secret is %d bytes; need at least %d", len(cfg.HS256Secret), MinSecretLen)
		}
		v.secret = bytes.Clone(cfg.HS256Secret) // caller may reuse its slice
		v.methods = append(v.methods, algHS256)
	}
	for i, p := range cfg.PublicKeyPEMs {
		keys, err := parsePublicKeys(p)
		if err != nil {
			return nil, fmt.Errorf("auth: public key %d: %w", i+1, err)
		}
		v.static = append(v.static, keys...)
	}
	for _, k := range v.static {
		for _, a := range k.algs() {
			if !slices.Contains(v.methods, a) {
				v.methods = append(v.methods, a)
			}
		}
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	if cfg.JWKSURL != "" {
		safe, err := checkJWKSURL(cfg.JWKSURL)
		if err != nil {
			return nil, err
		}
		client := cfg.HTTPClient
		if client == nil {
			client = &http.Client{Timeout: JWKSTimeout}
		}
		v.jwks = &jwksCache{url: cfg.JWKSURL, safeURL: safe, client: client, now: now}
		for _, a := range append(slices.Clone(rsaAlgs), ecAlgs...) {
			if !slices.Contains(v.methods, a) {
				v.methods = append(v.methods, a)
			}
		}
	}
	if len(v.methods) == 0 {
		return nil, errors.New("auth: no key source: set an HS256 secret, public keys or a JWKS URL")
	}
	if cfg.Leeway < 0 {
		return nil, errors.New("auth: leeway must not be negative")
	}
	aud := cfg.Audience
	if aud == "" {
		aud = DefaultAudience
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.methods),
		jwt.WithAudience(aud),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(now),
		jwt.WithStrictDecoding(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
		v.issuer = cfg.Issuer
	}
	v.parser = jwt.NewParser(opts...)
	v.keyfunc = v.key
	return v, nil
}

// LoadVerifier builds a Verifier from files: secretFile holds the HS256 secret (a
// trailing newline is trimmed; "" = none), publicKeyFiles hold PEM public keys or
// certificates. Errors name the file but never quote its contents.
func LoadVerifier(secretFile string, publicKeyFiles []string, jwksURL, audience, issuer string, leeway time.Duration) (*Verifier, error) {
	cfg := VerifierConfig{JWKSURL: jwksURL, Audience: audience, Issuer: issuer, Leeway: leeway}
	if secretFile != "" {
		b, err := readFile("secret", secretFile)
		if err != nil {
			return nil, err
		}
		b = bytes.TrimRight(b, "\r\n")
		if len(b) < MinSecretLen {
			return nil, fmt.Errorf("auth: secret file %s: secret is %d bytes; need at least %d", secretFile, len(b), MinSecretLen)
		}
		cfg.HS256Secret = b
	}
	for _, name := range publicKeyFiles {
		b, err := readFile("public key", name)
		if err != nil {
			return nil, err
		}
		if _, err := parsePublicKeys(b); err != nil {
			return nil, fmt.Errorf("auth: public key file %s: %w", name, err)
		}
		cfg.PublicKeyPEMs = append(cfg.PublicKeyPEMs, b)
	}
	return NewVerifier(cfg)
}

// readFile reads name, naming it once in the error.
func readFile(what, name string) ([]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("auth: %s file %s: %w", what, name, err)
	}
	return b, nil
}

// RefreshKeys fetches the JWKS now, whatever the cache's age (startup warm-up, health
// checks). It returns nil when no JWKS URL is configured. Safe for concurrent use.
func (v *Verifier) RefreshKeys(ctx context.Context) error {
	if v.jwks == nil {
		return nil
	}
	v.jwks.fetchMu.Lock()
	defer v.jwks.fetchMu.Unlock()
	return v.jwks.fetchLocked(ctx)
}

// Verify checks token's signature, method, audience, issuer, exp and nbf, and returns its
// claims. Every error wraps one of the package's sentinels and its text never contains
// the token, any part of it, or the secret. With a JWKS URL, Verify may block for up to
// JWKSTimeout while it fetches the key set: call it off any event loop. Safe for
// concurrent use.
func (v *Verifier) Verify(token string) (Claims, error) {
	if token == "" {
		return Claims{}, ErrNoToken
	}
	if len(token) > MaxTokenLen {
		return Claims{}, errTooLong
	}
	var tc tokenClaims
	tok, err := v.parser.ParseWithClaims(token, &tc, v.keyfunc)
	if err != nil {
		return Claims{}, v.mapError(tok, &tc, err)
	}
	sub := tc.Subject
	if sub == "" {
		return Claims{}, ErrNoSubject
	}
	if !validSubject(sub) {
		return Claims{}, errBadSubject
	}
	c := Claims{AgentID: sub, Connectors: []string(tc.Connectors)}
	if tc.ExpiresAt != nil {
		c.ExpiresAt = tc.ExpiresAt.Time
	}
	return c, nil
}

// algAllowed reports whether alg is one of the accepted signing methods.
func (v *Verifier) algAllowed(alg string) bool { return slices.Contains(v.methods, alg) }

// key is the jwt.Keyfunc: it picks the verification key(s) for the token's method. The
// parser has already refused methods not in v.methods. HS256 gets the secret and nothing
// else; RS* and ES* get only public keys of the matching kind (and curve), so one kind of
// key material never verifies another kind of token.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	if alg == algHS256 {
		if v.secret == nil {
			return nil, &keyError{errAlg}
		}
		return v.secret, nil
	}
	kid, _ := t.Header["kid"].(string)
	var set jwt.VerificationKeySet
	for _, k := range v.static {
		if k.fits(alg) {
			set.Keys = append(set.Keys, k.key)
		}
	}
	if v.jwks != nil {
		keys, err := v.jwks.keysFor(alg, kid)
		if err != nil && len(set.Keys) == 0 {
			return nil, &keyError{err}
		}
		for _, k := range keys {
			set.Keys = append(set.Keys, k.key)
		}
	}
	if len(set.Keys) == 0 {
		return nil, &keyError{errNoKey}
	}
	return set, nil
}

// VerifyBearer checks the value of an Authorization header ("Bearer
// <jwt>") and returns the agent id (sub) and the connectors the token
// permits (nil = any). It is what the hub asks of a tunnel upgrade.
func (v *Verifier) VerifyBearer(header []byte) (agentID string, connectors []string, err error) {
	tok, err := BearerToken(header)
	if err != nil {
		return "", nil, err
	}
	c, err := v.Verify(string(tok))
	if err != nil {
		return "", nil, err
	}
	return c.AgentID, c.Connectors, nil
}
