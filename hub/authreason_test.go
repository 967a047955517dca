package hub

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/internal/auth"
)

var reasonSecret = []byte("hub-test-secret-0123456789abcdef")

func signed(t *testing.T, m jwt.SigningMethod, key []byte, c jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUnauthorizedReason: the 401 of /tunnel says why in fixed words (the
// verifier's sentinel), never with the token or a claim.
func TestUnauthorizedReason(t *testing.T) {
	now := time.Now()
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "agent-claim-value", "aud": "nowconnect", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if mod != nil {
			mod(c)
		}
		return c
	}
	hs := func(mod func(jwt.MapClaims)) string {
		return signed(t, jwt.SigningMethodHS256, reasonSecret, claims(mod))
	}
	tests := []struct {
		name   string
		header string
		issuer string // required by the verifier
		want   string
	}{
		{name: "no header", header: "", want: "missing bearer"},
		{name: "basic auth", header: "Basic YTpi", want: "missing bearer"},
		{name: "garbage", header: "Bearer not-a-jwt", want: "malformed"},
		{name: "control byte", header: "Bearer a\x01b", want: "malformed"},
		{name: "expired", header: "Bearer " + hs(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() }), want: "expired"},
		{name: "not yet valid", header: "Bearer " + hs(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() }), want: "not yet valid"},
		{name: "wrong audience", header: "Bearer " + hs(func(c jwt.MapClaims) { c["aud"] = "someone-else" }), want: "wrong audience"},
		{name: "wrong issuer", header: "Bearer " + hs(func(c jwt.MapClaims) { c["iss"] = "issuer-claim-value" }), issuer: "the-idp", want: "wrong issuer"},
		{name: "bad signature", header: "Bearer " + signed(t, jwt.SigningMethodHS256, []byte("another-secret-0123456789abcdefgh"), claims(nil)), want: "bad signature"},
		{name: "method", header: "Bearer " + signed(t, jwt.SigningMethodHS384, reasonSecret, claims(nil)), want: "signing method not accepted"},
		{name: "no sub", header: "Bearer " + hs(func(c jwt.MapClaims) { delete(c, "sub") }), want: "no subject"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: reasonSecret, Issuer: tc.issuer})
			if err != nil {
				t.Fatal(err)
			}
			h, err := New(Config{Control: "127.0.0.1:0", Verifier: v,
				Listeners: []Listener{{Name: "l", Bind: "127.0.0.1:0", Connector: "c"}},
				Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			resp := h.Route(&engine.Request{Method: "GET", Path: "/tunnel", Upgrade: true, Authorization: []byte(tc.header),
				RemoteAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5}})
			if resp.Decide == nil {
				t.Fatal("no decision off the loop")
			}
			resp = resp.Decide()
			if resp.Status != 401 || string(resp.Body) != "unauthorized: "+tc.want+"\n" {
				t.Fatalf("%d %q, want 401 %q", resp.Status, resp.Body, "unauthorized: "+tc.want)
			}
			tok := strings.TrimPrefix(tc.header, "Bearer ")
			for _, leak := range []string{"claim-value", "someone-else", tok} {
				if len(leak) > 3 && bytes.Contains(resp.Body, []byte(leak)) {
					t.Fatalf("body %q carries %q", resp.Body, leak)
				}
			}
		})
	}
}

// TestAuthReasonKinds: every sentinel of internal/auth has its words; an
// error of another verifier is just "refused".
func TestAuthReasonKinds(t *testing.T) {
	for err, want := range map[error]string{
		auth.ErrUnknownKey:   "unknown key",
		auth.ErrTooLong:      "malformed",
		auth.ErrBadSubject:   "bad subject",
		auth.ErrBadClaims:    "invalid claims",
		auth.ErrInvalidToken: "invalid token",
		io.EOF:               "refused",
	} {
		if got := authReason(err); got != want {
			t.Errorf("authReason(%v) = %q, want %q", err, got, want)
		}
	}
}
