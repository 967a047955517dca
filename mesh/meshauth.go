package mesh

import (
	"fmt"
	"time"

	"github.com/nowconnect/nowconnect/internal/auth"
)

// Mesh tokens: how a hub proves it is a hub of this deployment on /mesh when TLS
// does not (an ingress terminates mTLS in front of the control port, seed 003). Hubs
// share ha.mesh.secret_file; a dialing hub mints a token from it for every dial and
// sends it as "Authorization: Bearer <token>" on the upgrade; the accepting hub
// verifies it. A token is an HS256 JWT made and checked by internal/auth, like the
// agents' tokens, with claims
//
//	{"sub":"<replica id of the dialer>","aud":["nowconnect-mesh"],"iat":…,"nbf":…,"exp":…,"jti":…}
//
// Its own audience keeps the two kinds apart even where an operator reuses one
// secret: an agent's token (aud "nowconnect") never opens /mesh, and a mesh token
// never opens /tunnel. exp is at most MeshTokenTTL after iat: a captured token is
// worthless within minutes. The signature is compared in constant time (hmac.Equal,
// inside golang-jwt). Errors never contain the token or the secret.

// MeshAudience is the aud of mesh tokens.
const MeshAudience = "nowconnect-mesh"

// MeshTokenTTL is the lifetime of the tokens a hub mints, and the longest lifetime a
// hub accepts (beyond the clock skew allowed).
const MeshTokenTTL = 5 * time.Minute

// meshTokenLeeway is the clock skew allowed between hubs on exp and nbf.
const meshTokenLeeway = 30 * time.Second

// MintMeshToken returns a mesh token for replica, valid for ttl (0 < ttl ≤
// MeshTokenTTL), signed with secret (at least 32 bytes).
func MintMeshToken(secret []byte, replica string, ttl time.Duration) (string, error) {
	if ttl <= 0 || ttl > MeshTokenTTL {
		return "", fmt.Errorf("%w: mesh token ttl %v, must be in (0, %v]", ErrMeshAuth, ttl, MeshTokenTTL)
	}
	if err := CheckReplicaID(replica); err != nil {
		return "", fmt.Errorf("%w: mesh token for replica %q: %v", ErrMeshAuth, replica, err)
	}
	return auth.Mint(secret, replica, nil, ttl, MeshAudience)
}

// meshVerifier checks mesh tokens. Safe for concurrent use.
type meshVerifier struct {
	v   *auth.Verifier
	now func() time.Time
}

func newMeshVerifier(secret []byte, now func() time.Time) (*meshVerifier, error) {
	if now == nil {
		now = time.Now
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{
		HS256Secret: secret,
		Audience:    MeshAudience,
		Leeway:      meshTokenLeeway,
		Now:         now,
	})
	if err != nil {
		return nil, err
	}
	return &meshVerifier{v: v, now: now}, nil
}

// verify checks the value of an Authorization header and returns the replica the
// token names.
func (mv *meshVerifier) verify(authorization []byte) (string, error) {
	tok, err := auth.BearerToken(authorization)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrMeshAuth, err)
	}
	c, err := mv.v.Verify(string(tok))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrMeshAuth, err)
	}
	switch {
	case c.ExpiresAt.IsZero():
		return "", fmt.Errorf("%w: mesh token without exp", ErrMeshAuth)
	case c.ExpiresAt.After(mv.now().Add(MeshTokenTTL + meshTokenLeeway)):
		return "", fmt.Errorf("%w: mesh token valid for more than %v", ErrMeshAuth, MeshTokenTTL)
	}
	if err := CheckReplicaID(c.AgentID); err != nil {
		return "", fmt.Errorf("%w: mesh token sub is not a replica id: %v", ErrMeshAuth, err)
	}
	return c.AgentID, nil
}
