package auth

// Kinds of ErrInvalidToken, for a caller that tells a refused agent why in
// a few fixed words (the hub's 401 body): errors.Is(err, auth.ErrBadSignature).
// They are the values Verify and BearerToken already return; each wraps
// ErrInvalidToken.
var (
	ErrMalformed    = errMalformed    // not a JWT (or its header or claims do not decode)
	ErrBearerSyntax = errBearerSyntax // whitespace or control bytes in the bearer token
	ErrTooLong      = errTooLong      // longer than MaxTokenLen
	ErrMethod       = errAlg          // a signing method that is not accepted
	ErrBadSignature = errSignature    // the signature does not verify
	ErrUnknownKey   = errNoKey        // no configured key fits the token (kid, alg)
	ErrNotYetValid  = errNotYetValid  // nbf in the future
	ErrBadClaims    = errBadClaims    // other invalid claims
	ErrBadSubject   = errBadSubject   // sub is not a usable agent id
)
