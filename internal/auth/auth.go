// Package auth verifies the JWT bearer tokens that premise agents present on the hub's
// /tunnel WebSocket upgrade, and mints HS256 tokens for operators without an IdP.
//
// Flow on the hub:
//
//	hdr := <value of the Authorization header of the upgrade request>
//	tok, err := auth.BearerToken(hdr)      // ErrNoToken → 401
//	claims, err := verifier.Verify(string(tok)) // any error → 401, log err (never the token)
//	claims.AgentID                         // the `sub` claim
//	claims.Allows(connector)               // the optional `connectors` claim
//
// Key sources and the signing methods (JWT "alg") each one enables:
//
//	HS256Secret    HS256 only, verified with the secret only
//	PublicKeyPEMs  RS256/RS384/RS512 for RSA keys, ES256/ES384/ES512 for P-256/P-384/P-521 keys
//	JWKSURL        the RS* and ES* methods above, keys selected by "kid"
//
// Every other method ("none", HS384, PS256, EdDSA, …) is refused. A token signed with an
// HMAC method is never checked against public-key material, and a token signed with an
// RSA/ECDSA method is never checked against the secret (no algorithm confusion).
//
// Error texts are built only from fixed strings of this package (and, for JWKS fetch
// failures, the JWKS host and path): they never contain the token, any part of it, or the
// secret, so they are safe to log.
package auth

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"time"
)

// Sentinel errors. Every error returned by Verify wraps exactly one of them.
var (
	ErrNoToken      = errors.New("auth: no bearer token")
	ErrInvalidToken = errors.New("auth: invalid token") // bad signature, malformed, wrong alg, not yet valid, no key
	ErrExpired      = errors.New("auth: token expired")
	ErrAudience     = errors.New("auth: wrong audience")
	ErrIssuer       = errors.New("auth: wrong issuer")
	ErrNoSubject    = errors.New("auth: token has no sub")
)

// Limits.
const (
	// DefaultAudience is the aud value required when VerifierConfig.Audience is empty,
	// and the aud that Mint writes when its audience argument is empty.
	DefaultAudience = "nowconnect"

	// MinSecretLen is the shortest HS256 secret accepted (RFC 7518 §3.2: a key at least
	// as long as the hash output, 256 bits).
	MinSecretLen = 32

	// MaxTokenLen bounds the token Verify will parse; longer tokens are refused before
	// any decoding.
	MaxTokenLen = 16 << 10

	// MaxSubjectLen bounds the `sub` claim (the agent id ends up in logs, metric labels
	// and registry keys).
	MaxSubjectLen = 256
)

// Claims are the verified facts a token carries about an agent.
type Claims struct {
	AgentID    string    // the `sub` claim
	Connectors []string  // the `connectors` claim; nil = any connector, empty non-nil = none
	ExpiresAt  time.Time // the `exp` claim; zero if the token has none
}

// Allows reports whether the claims permit serving connector name (nil Connectors = all).
func (c Claims) Allows(connector string) bool {
	if c.Connectors == nil {
		return true
	}
	return slices.Contains(c.Connectors, connector)
}

// bearerPrefix is the auth-scheme of RFC 6750, compared case-insensitively.
const bearerPrefix = "bearer"

// BearerToken extracts the token from an Authorization header value ("Bearer x",
// case-insensitive scheme, any run of spaces or tabs after it). It returns ErrNoToken when
// the value is empty, uses another scheme, or carries an empty token, and ErrInvalidToken
// when the token contains whitespace or control bytes. The result aliases header; it does
// not allocate.
func BearerToken(header []byte) ([]byte, error) {
	h := bytes.Trim(header, " \t")
	if len(h) <= len(bearerPrefix) || !strings.EqualFold(string(h[:len(bearerPrefix)]), bearerPrefix) {
		return nil, ErrNoToken
	}
	if c := h[len(bearerPrefix)]; c != ' ' && c != '\t' {
		return nil, ErrNoToken // e.g. "Bearerx" is another scheme
	}
	tok := bytes.TrimLeft(h[len(bearerPrefix):], " \t")
	if len(tok) == 0 {
		return nil, ErrNoToken
	}
	for _, c := range tok {
		if c <= ' ' || c == 0x7f {
			return nil, errBearerSyntax
		}
	}
	return tok, nil
}
