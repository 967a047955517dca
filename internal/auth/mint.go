package auth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Mint makes an HS256 token for operators without an IdP: sub=agentID,
// aud=["nowconnect"] (or [audience] if non-empty), iat and nbf = now, exp = now+ttl
// (ttl <= 0: no exp), the connectors claim (a JSON array) when connectors is not empty,
// and a random jti. secret must be at least MinSecretLen bytes. Errors never contain the
// secret.
func Mint(secret []byte, agentID string, connectors []string, ttl time.Duration, audience string) (string, error) {
	if len(secret) < MinSecretLen {
		return "", fmt.Errorf("auth: mint: secret is %d bytes; need at least %d", len(secret), MinSecretLen)
	}
	if agentID == "" {
		return "", errors.New("auth: mint: empty agent id")
	}
	if !validSubject(agentID) {
		return "", fmt.Errorf("auth: mint: agent id must be at most %d bytes of printable UTF-8", MaxSubjectLen)
	}
	for _, c := range connectors {
		if strings.TrimSpace(c) != c || c == "" || strings.Contains(c, ",") {
			return "", fmt.Errorf("auth: mint: bad connector name %q (empty, padded, or with a comma)", c)
		}
	}
	if audience == "" {
		audience = DefaultAudience
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("auth: mint: jti: %w", err)
	}
	now := time.Now()
	tc := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   agentID,
			Audience:  jwt.ClaimStrings{audience},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ID:        base64.RawURLEncoding.EncodeToString(id[:]),
		},
	}
	if ttl > 0 {
		tc.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	}
	if len(connectors) > 0 {
		tc.Connectors = connectorList(connectors)
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, tc).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("auth: mint: sign: %w", err)
	}
	return s, nil
}
