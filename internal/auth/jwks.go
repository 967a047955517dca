package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// JWKS limits and timing.
const (
	// JWKSTimeout bounds one fetch of the key set (the default client's timeout).
	JWKSTimeout = 5 * time.Second
	// JWKSMaxAge is how long a fetched key set is used before it is fetched again.
	JWKSMaxAge = 5 * time.Minute
	// JWKSMinInterval is the shortest time between two fetches: a token with an unknown
	// kid, or a failed fetch, triggers a new fetch only this long after the previous one,
	// so tokens with made-up kids cannot hammer the IdP.
	JWKSMinInterval = 10 * time.Second
	// JWKSMaxBytes bounds the key set document.
	JWKSMaxBytes = 1 << 20
	// JWKSMaxKeys bounds the keys kept from one key set; the rest are ignored.
	JWKSMaxKeys = 64
)

// jwksCache holds the keys of one JWKS URL. Verify calls keysFor from any goroutine; a
// fetch runs on the calling goroutine and blocks it for at most JWKSTimeout.
type jwksCache struct {
	// Set at construction.
	url     string // as configured
	safeURL string // scheme://host/path, for error texts
	client  *http.Client
	now     func() time.Time

	fetchMu sync.Mutex // held across one fetch, so that fetches never overlap

	mu          sync.Mutex // guards the fields below
	keys        []pubKey   // last good key set; kept when a later fetch fails
	fetchedAt   time.Time  // when keys were fetched
	attempted   bool       // a fetch has been tried
	lastAttempt time.Time  // when the last fetch was tried
	lastErr     error      // error of the last fetch; nil after a success
}

// checkJWKSURL accepts https URLs, and http URLs on a loopback host only (plain HTTP
// elsewhere would let anyone on the path substitute the keys). It returns the URL's
// printable form without user info and query.
func checkJWKSURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", errors.New("auth: jwks url is not an absolute URL")
	}
	safe := u.Scheme + "://" + u.Host + u.EscapedPath()
	switch u.Scheme {
	case "https":
	case "http":
		host := u.Hostname()
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return "", fmt.Errorf("auth: jwks url %s: plain http is allowed only on loopback; use https", safe)
		}
	default:
		return "", fmt.Errorf("auth: jwks url %s: scheme must be https", safe)
	}
	return safe, nil
}

// keysFor returns the keys that may verify a token signed with alg whose header names
// kid (empty: any key), fetching the key set first when it is due. It returns an error
// wrapping ErrInvalidToken when no key fits.
func (c *jwksCache) keysFor(alg, kid string) ([]pubKey, error) {
	keys, due := c.lookup(c.now(), alg, kid)
	if due {
		c.fetchMu.Lock()
		// Another caller may have fetched while this one waited.
		if keys, due = c.lookup(c.now(), alg, kid); due {
			c.fetchLocked(context.Background())
			keys, _ = c.lookup(c.now(), alg, kid)
		}
		c.fetchMu.Unlock()
	}
	if len(keys) > 0 {
		return keys, nil
	}
	c.mu.Lock()
	err, empty := c.lastErr, len(c.keys) == 0
	c.mu.Unlock()
	if err != nil && empty {
		return nil, fmt.Errorf("%w: key set not available: %w", ErrInvalidToken, err)
	}
	return nil, errNoKey
}

// lookup returns the cached keys for alg and kid, and whether a fetch is due: none was
// tried yet, or the last one is JWKSMinInterval old and the set is older than
// JWKSMaxAge, empty, or does not know kid.
func (c *jwksCache) lookup(now time.Time, alg, kid string) (keys []pubKey, due bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kidKnown := kid == ""
	for _, k := range c.keys {
		if kid != "" && k.kid == kid {
			kidKnown = true
		}
		if (kid == "" || k.kid == kid) && k.fits(alg) {
			keys = append(keys, k)
		}
	}
	if !c.attempted {
		return keys, true
	}
	if now.Sub(c.lastAttempt) < JWKSMinInterval {
		return keys, false
	}
	return keys, len(c.keys) == 0 || !kidKnown || now.Sub(c.fetchedAt) >= JWKSMaxAge
}

// fetchLocked fetches the key set and records the outcome. c.fetchMu must be held.
func (c *jwksCache) fetchLocked(ctx context.Context) error {
	keys, err := c.get(ctx)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempted, c.lastAttempt = true, now
	if err != nil {
		c.lastErr = fmt.Errorf("jwks %s: %w", c.safeURL, err)
		return c.lastErr
	}
	c.keys, c.fetchedAt, c.lastErr = keys, now, nil
	return nil
}

// get does one HTTP GET of the key set and parses it.
func (c *jwksCache) get(ctx context.Context) ([]pubKey, error) {
	ctx, cancel := context.WithTimeout(ctx, JWKSTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, errors.New("cannot build request")
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		// *url.Error repeats the full URL (with its query); keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10)) //nolint:errcheck // best effort, lets the connection be reused
		return nil, fmt.Errorf("HTTP status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, JWKSMaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > JWKSMaxBytes {
		return nil, fmt.Errorf("key set larger than %d bytes", JWKSMaxBytes)
	}
	return parseJWKS(body)
}

// jwk is one key of a JSON Web Key Set (RFC 7517), with the members we use.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`   // RSA modulus
	E   string `json:"e"`   // RSA exponent
	Crv string `json:"crv"` // EC curve
	X   string `json:"x"`   // EC point
	Y   string `json:"y"`
}

// parseJWKS keeps the RSA and EC signature keys of a key set, up to JWKSMaxKeys. Keys of
// other types (notably "oct": a symmetric key must never verify tokens here), encryption
// keys, keys for methods we refuse and malformed keys are skipped. A set with no usable
// key is an error.
func parseJWKS(body []byte) ([]pubKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, errors.New("key set is not valid JSON")
	}
	var keys []pubKey
	for _, j := range set.Keys {
		if len(keys) == JWKSMaxKeys {
			break
		}
		if j.Use != "" && j.Use != "sig" {
			continue
		}
		if j.Alg != "" && !slices.Contains(rsaAlgs, j.Alg) && !slices.Contains(ecAlgs, j.Alg) {
			continue
		}
		var key any
		switch j.Kty {
		case "RSA":
			if k := rsaFromJWK(j); k != nil {
				key = k
			}
		case "EC":
			if k := ecFromJWK(j); k != nil {
				key = k
			}
		}
		if key == nil {
			continue
		}
		if _, err := checkKey(key); err != nil {
			continue
		}
		k := pubKey{kid: j.Kid, alg: j.Alg, key: key}
		if len(k.algs()) == 0 || (k.alg != "" && !k.fits(k.alg)) {
			continue // e.g. "alg":"ES384" on a P-256 key
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("key set has no usable RSA or EC signing key")
	}
	return keys, nil
}

// b64 decodes base64url with or without padding.
func b64(s string) ([]byte, bool) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	return b, err == nil && len(b) > 0
}

func rsaFromJWK(j jwk) *rsa.PublicKey {
	n, ok1 := b64(j.N)
	e, ok2 := b64(j.E)
	if !ok1 || !ok2 || len(e) > 4 {
		return nil
	}
	var exp uint64
	for _, c := range e {
		exp = exp<<8 | uint64(c)
	}
	if exp < 3 || exp > math.MaxInt32 {
		return nil
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(exp)}
}

func ecFromJWK(j jwk) *ecdsa.PublicKey {
	var curve elliptic.Curve
	switch j.Crv {
	case "P-256":
		curve = elliptic.P256()
	case "P-384":
		curve = elliptic.P384()
	case "P-521":
		curve = elliptic.P521()
	default:
		return nil
	}
	x, ok1 := b64(j.X)
	y, ok2 := b64(j.Y)
	size := (curve.Params().BitSize + 7) / 8
	if !ok1 || !ok2 || len(x) > size || len(y) > size {
		return nil
	}
	// Uncompressed SEC 1 point: 0x04 || X || Y, each left-padded to the field size.
	pt := make([]byte, 1+2*size)
	pt[0] = 4
	copy(pt[1+size-len(x):1+size], x)
	copy(pt[1+2*size-len(y):], y)
	key, err := ecdsa.ParseUncompressedPublicKey(curve, pt) // checks the point is on the curve
	if err != nil {
		return nil
	}
	return key
}
