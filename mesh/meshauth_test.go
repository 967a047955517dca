package mesh

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/auth"
)

// TestMeshTokens: a minted token verifies and names its replica; an agent token
// (aud nowconnect), another secret, an expired token, one without exp or living
// longer than MeshTokenTTL, and a non-bearer header are refused, without quoting the
// token.
func TestMeshTokens(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now()
	clock := now
	v, err := newMeshVerifier(secret, func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	tok, err := MintMeshToken(secret, "hub-b", MeshTokenTTL)
	if err != nil {
		t.Fatal(err)
	}
	if peer, err := v.verify([]byte("Bearer " + tok)); err != nil || peer != "hub-b" {
		t.Fatalf("verify = %q, %v", peer, err)
	}
	mint := func(secret []byte, sub string, ttl time.Duration, aud string) string {
		s, err := auth.Mint(secret, sub, nil, ttl, aud)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tc := range []struct {
		name  string
		hdr   string
		later time.Duration
		is    error
	}{
		{"agent token", "Bearer " + mint(secret, "hub-b", time.Minute, ""), 0, auth.ErrAudience},
		{"other secret", "Bearer " + mint([]byte("another secret of 32 bytes or so"), "hub-b", time.Minute, MeshAudience), 0, auth.ErrInvalidToken},
		{"expired", "Bearer " + tok, MeshTokenTTL + time.Minute, auth.ErrExpired},
		{"no exp", "Bearer " + mint(secret, "hub-b", 0, MeshAudience), 0, ErrMeshAuth},
		{"lives too long", "Bearer " + mint(secret, "hub-b", time.Hour, MeshAudience), 0, ErrMeshAuth},
		{"sub not a replica id", "Bearer " + mint(secret, "hub b", time.Minute, MeshAudience), 0, ErrMeshAuth},
		{"basic auth", "Basic aHViOmI=", 0, auth.ErrNoToken},
		{"empty", "", 0, auth.ErrNoToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock = now.Add(tc.later)
			_, err := v.verify([]byte(tc.hdr))
			if !errors.Is(err, ErrMeshAuth) || !errors.Is(err, tc.is) {
				t.Errorf("verify: %v, want ErrMeshAuth and %v", err, tc.is)
			}
			if tok := strings.TrimPrefix(tc.hdr, "Bearer "); len(tok) > 8 && strings.Contains(err.Error(), tok) {
				t.Error("the error quotes the token")
			}
		})
	}
	for _, ttl := range []time.Duration{0, -time.Second, MeshTokenTTL + time.Second} {
		if _, err := MintMeshToken(secret, "hub-b", ttl); !errors.Is(err, ErrMeshAuth) {
			t.Errorf("MintMeshToken(ttl %v) = %v", ttl, err)
		}
	}
	if _, err := MintMeshToken(secret, "hub|b", time.Minute); !errors.Is(err, ErrMeshAuth) {
		t.Errorf("MintMeshToken of a bad replica id = %v", err)
	}
}
