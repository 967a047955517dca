package hub

import (
	"errors"

	"github.com/nowconnect/nowconnect/internal/auth"
)

// authReasons classify a refused tunnel token in a few fixed words, for the
// body of the 401 ("unauthorized: expired") that the agent logs. Only these
// words leave the hub: never the token, a claim, or the verifier's text.
// More specific kinds come first (each of the invalid-token kinds also wraps
// auth.ErrInvalidToken).
var authReasons = []struct {
	err    error
	reason string
}{
	{auth.ErrNoToken, "missing bearer"},
	{auth.ErrExpired, "expired"},
	{auth.ErrNotYetValid, "not yet valid"},
	{auth.ErrAudience, "wrong audience"},
	{auth.ErrIssuer, "wrong issuer"},
	{auth.ErrBadSignature, "bad signature"},
	{auth.ErrUnknownKey, "unknown key"},
	{auth.ErrMethod, "signing method not accepted"},
	{auth.ErrMalformed, "malformed"},
	{auth.ErrBearerSyntax, "malformed"},
	{auth.ErrTooLong, "malformed"},
	{auth.ErrNoSubject, "no subject"},
	{auth.ErrBadSubject, "bad subject"},
	{auth.ErrBadClaims, "invalid claims"},
	{auth.ErrInvalidToken, "invalid token"}, // e.g. the key set could not be fetched
}

// authReason returns the fixed classification of a verifier error, or
// "refused" for an error of another verifier.
func authReason(err error) string {
	for _, r := range authReasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "refused"
}

// unauthorizedBody is the 401 body for a refused tunnel token.
func unauthorizedBody(err error) []byte {
	return []byte("unauthorized: " + authReason(err) + "\n")
}
