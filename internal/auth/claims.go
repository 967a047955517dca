package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// tokenClaims is the JSON payload of an agent token.
//
//	{"sub":"agent-1","aud":["nowconnect"],"iss":"…","iat":…,"nbf":…,"exp":…,"jti":"…",
//	 "connectors":["ldap","ad"]}        // or "connectors":"ldap,ad"
type tokenClaims struct {
	jwt.RegisteredClaims
	Connectors connectorList `json:"connectors,omitempty"`
}

// connectorList is the `connectors` claim. It decodes from a JSON array of strings or
// from one comma-separated string; names are trimmed and empty names dropped. An absent
// or null claim decodes to nil (any connector); a present but empty one to an empty
// non-nil list (no connector). It encodes as an array.
type connectorList []string

var errConnectorsType = errors.New("connectors claim is neither a string nor an array of strings")

// UnmarshalJSON implements json.Unmarshaler.
func (l *connectorList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" {
		*l = nil
		return nil
	}
	var raw []string
	switch b[0] {
	case '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return errConnectorsType
		}
		raw = strings.Split(s, ",")
	case '[':
		if err := json.Unmarshal(b, &raw); err != nil {
			return errConnectorsType
		}
	default:
		return errConnectorsType
	}
	out := make(connectorList, 0, len(raw))
	for _, name := range raw {
		if name = strings.TrimSpace(name); name != "" {
			out = append(out, name)
		}
	}
	*l = out
	return nil
}

// validSubject reports whether sub is usable as an agent id: at most MaxSubjectLen bytes
// of valid UTF-8 without control characters.
func validSubject(sub string) bool {
	if len(sub) > MaxSubjectLen || !utf8.ValidString(sub) {
		return false
	}
	for _, r := range sub {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// The errors Verify returns. They are fixed values so that their text can never carry
// token bytes, and so that a refused token costs no allocation for the error.
var (
	errTooLong      = wrapInvalid("token too long")
	errMalformed    = wrapInvalid("malformed token")
	errAlg          = wrapInvalid("signing method not accepted")
	errSignature    = wrapInvalid("signature does not verify")
	errNoKey        = wrapInvalid("no key matches the token")
	errNotYetValid  = wrapInvalid("token not valid yet")
	errBadClaims    = wrapInvalid("invalid claims")
	errBadSubject   = wrapInvalid("sub is not a valid agent id")
	errBearerSyntax = wrapInvalid("malformed bearer token")
)

func wrapInvalid(reason string) error {
	return &reasonError{sentinel: ErrInvalidToken, reason: reason}
}

// reasonError is a sentinel with a fixed reason: "auth: invalid token: bad signature".
type reasonError struct {
	sentinel error
	reason   string
}

func (e *reasonError) Error() string { return e.sentinel.Error() + ": " + e.reason }
func (e *reasonError) Unwrap() error { return e.sentinel }

// mapError turns an error of jwt.Parser.ParseWithClaims into one of ours. tok is what the
// parser returned (possibly nil), tc the claims it decoded (complete when the error is
// about claims). Nothing of err's text is kept: the jwt library quotes decoded header and
// claim fragments in some of its messages.
func (v *Verifier) mapError(tok *jwt.Token, tc *tokenClaims, err error) error {
	// Our own keyfunc errors come back wrapped in jwt.ErrTokenUnverifiable.
	var ke *keyError
	if errors.As(err, &ke) {
		return ke.err
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return errMalformed
	case tok != nil && tok.Method != nil && !v.algAllowed(tok.Method.Alg()):
		return errAlg
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// Unknown or missing alg (the parser found no signing method for it).
		return errAlg
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return errSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return ErrExpired
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ErrAudience
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ErrIssuer
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return errNotYetValid
	// A required claim that is absent fails with ErrTokenRequiredClaimMissing alone.
	case len(tc.Audience) == 0:
		return ErrAudience
	case v.issuer != "" && tc.Issuer == "":
		return ErrIssuer
	default:
		return errBadClaims
	}
}

// keyError carries one of our errors out of the keyfunc through the jwt parser.
type keyError struct{ err error }

func (e *keyError) Error() string { return e.err.Error() }
