package auth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestMain fails the run if goroutines of this package or of net/http (JWKS fetches,
// test servers) outlive the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// waitGoroutines polls until no goroutine runs code of this package or net/http, and
// returns the stacks of those still running at the deadline.
func waitGoroutines(timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "waitGoroutines") {
				continue
			}
			if strings.Contains(g, "internal/auth.") || strings.Contains(g, "net/http.") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

// testSecret is 35 bytes of recognisable text, so a leak in an error is easy to spot.
var testSecret = []byte("s3cr3t-NOWCONNECT-hs256-shared-key!")

var t0 = time.Unix(1_700_000_000, 0)

// clock is a settable Now hook.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock        { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// testKeys are generated once per test binary (RSA generation is slow under -race).
type testKeys struct {
	rsa1, rsa2 *rsa.PrivateKey
	ec1, ec2   *ecdsa.PrivateKey // P-256
	ec384      *ecdsa.PrivateKey
}

var keys = sync.OnceValue(func() testKeys {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var k testKeys
	var err error
	k.rsa1, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.ec1, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	return k
})

// baseClaims are valid at t0 for the default verifier.
func baseClaims(mod ...func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub": "agent-1",
		"aud": []string{"nowconnect"},
		"iat": t0.Unix(),
		"nbf": t0.Unix(),
		"exp": t0.Add(time.Hour).Unix(),
	}
	for _, m := range mod {
		m(c)
	}
	return c
}

func sign(tb testing.TB, m jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	tb.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return s
}

func writeFile(tb testing.TB, dir, name string, data []byte) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

func pkixPEM(tb testing.TB, pub any) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func certPEM(tb testing.TB, priv *ecdsa.PrivateKey) []byte {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "issuer"},
		NotBefore:    t0.Add(-time.Hour),
		NotAfter:     t0.Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func newVerifier(tb testing.TB, cfg VerifierConfig) *Verifier {
	tb.Helper()
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return t0 }
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		tb.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// verifyCase is one token against one verifier.
type verifyCase struct {
	name    string
	cfg     VerifierConfig
	token   string
	wantErr error  // nil: must verify
	wantSub string // checked when wantErr is nil
}

// verifyCases covers HS256, RS256 and ES256 with keys written as PEM files.
func verifyCases(t *testing.T) []verifyCase {
	k := keys()
	dir := t.TempDir()
	rsaFile := writeFile(t, dir, "rsa.pem", pkixPEM(t, &k.rsa1.PublicKey))
	rsaPKCS1 := writeFile(t, dir, "rsa1.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa1.PublicKey)}))
	ecFile := writeFile(t, dir, "ec.pem", pkixPEM(t, &k.ec1.PublicKey))
	ecCert := writeFile(t, dir, "ec.crt", certPEM(t, k.ec1))
	load := func(files ...string) [][]byte {
		var out [][]byte
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return out
	}
	rsaPEM := load(rsaFile)[0]
	hs := VerifierConfig{HS256Secret: testSecret}
	rs := VerifierConfig{PublicKeyPEMs: load(rsaFile)}
	es := VerifierConfig{PublicKeyPEMs: load(ecFile)}
	both := VerifierConfig{HS256Secret: testSecret, PublicKeyPEMs: load(rsaPKCS1, ecCert)}
	hs256 := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, testSecret, "", c) }
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, baseClaims()).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	// alg "none" with an HS256 signature glued on.
	noneSigned := none + strings.Split(hs256(baseClaims()), ".")[2]

	return []verifyCase{
		// HS256
		{name: "hs256 ok", cfg: hs, token: hs256(baseClaims()), wantSub: "agent-1"},
		{name: "hs256 wrong secret", cfg: hs, token: sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-000"), "", baseClaims()), wantErr: ErrInvalidToken},
		{name: "hs256 expired", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { c["exp"] = t0.Add(-time.Minute).Unix() })), wantErr: ErrExpired},
		{name: "hs256 expired within leeway", cfg: VerifierConfig{HS256Secret: testSecret, Leeway: 2 * time.Minute}, token: hs256(baseClaims(func(c jwt.MapClaims) { c["exp"] = t0.Add(-time.Minute).Unix() })), wantSub: "agent-1"},
		{name: "hs256 no exp", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { delete(c, "exp") })), wantSub: "agent-1"},
		{name: "hs256 not yet valid", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { c["nbf"] = t0.Add(time.Hour).Unix() })), wantErr: ErrInvalidToken},
		{name: "hs256 wrong aud", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { c["aud"] = "someone-else" })), wantErr: ErrAudience},
		{name: "hs256 no aud", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { delete(c, "aud") })), wantErr: ErrAudience},
		{name: "hs256 aud as string", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { c["aud"] = "nowconnect" })), wantSub: "agent-1"},
		{name: "hs256 custom aud", cfg: VerifierConfig{HS256Secret: testSecret, Audience: "gw"}, token: hs256(baseClaims(func(c jwt.MapClaims) { c["aud"] = "gw" })), wantSub: "agent-1"},
		{name: "hs256 wrong issuer", cfg: VerifierConfig{HS256Secret: testSecret, Issuer: "https://idp"}, token: hs256(baseClaims(func(c jwt.MapClaims) { c["iss"] = "https://evil" })), wantErr: ErrIssuer},
		{name: "hs256 missing issuer", cfg: VerifierConfig{HS256Secret: testSecret, Issuer: "https://idp"}, token: hs256(baseClaims()), wantErr: ErrIssuer},
		{name: "hs256 right issuer", cfg: VerifierConfig{HS256Secret: testSecret, Issuer: "https://idp"}, token: hs256(baseClaims(func(c jwt.MapClaims) { c["iss"] = "https://idp" })), wantSub: "agent-1"},
		{name: "hs256 missing sub", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { delete(c, "sub") })), wantErr: ErrNoSubject},
		{name: "hs256 empty sub", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { c["sub"] = "" })), wantErr: ErrNoSubject},
		{name: "hs256 sub with newline", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { c["sub"] = "agent\nforged log line" })), wantErr: ErrInvalidToken},
		{name: "hs256 sub not a string", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { c["sub"] = 42 })), wantErr: ErrInvalidToken},
		{name: "hs256 connectors not strings", cfg: hs, token: hs256(baseClaims(func(c jwt.MapClaims) { c["connectors"] = 7 })), wantErr: ErrInvalidToken},
		{name: "hs384 refused", cfg: hs, token: sign(t, jwt.SigningMethodHS384, testSecret, "", baseClaims()), wantErr: ErrInvalidToken},
		{name: "alg none", cfg: hs, token: none, wantErr: ErrInvalidToken},
		{name: "alg none with signature", cfg: hs, token: noneSigned, wantErr: ErrInvalidToken},
		{name: "alg unknown", cfg: hs, token: "eyJhbGciOiJYWFgiLCJ0eXAiOiJKV1QifQ." + strings.Split(hs256(baseClaims()), ".")[1] + ".c2ln", wantErr: ErrInvalidToken},
		{name: "malformed", cfg: hs, token: "not-a-jwt-at-all", wantErr: ErrInvalidToken},
		{name: "malformed base64", cfg: hs, token: "!!!.###.$$$", wantErr: ErrInvalidToken},
		{name: "malformed json", cfg: hs, token: "eyJ9.eyJ9.c2ln", wantErr: ErrInvalidToken},
		{name: "too long", cfg: hs, token: strings.Repeat("a", MaxTokenLen+1), wantErr: ErrInvalidToken},
		{name: "empty", cfg: hs, token: "", wantErr: ErrNoToken},
		{name: "tampered payload", cfg: hs, token: func() string {
			p := strings.Split(hs256(baseClaims()), ".")
			forged := strings.Split(hs256(baseClaims(func(c jwt.MapClaims) { c["sub"] = "admin" })), ".")
			return p[0] + "." + forged[1] + "." + p[2]
		}(), wantErr: ErrInvalidToken},

		// Algorithm confusion: HMAC over the public key's PEM bytes.
		{name: "confusion: hs256 keyed with rsa pem, rsa only", cfg: rs, token: sign(t, jwt.SigningMethodHS256, rsaPEM, "", baseClaims()), wantErr: ErrInvalidToken},
		{name: "confusion: hs256 keyed with rsa pem, secret and rsa", cfg: both, token: sign(t, jwt.SigningMethodHS256, rsaPEM, "", baseClaims()), wantErr: ErrInvalidToken},
		{name: "confusion: rs256 token, secret only", cfg: hs, token: sign(t, jwt.SigningMethodRS256, k.rsa1, "", baseClaims()), wantErr: ErrInvalidToken},

		// RS256 / ES256 from PEM.
		{name: "rs256 ok", cfg: rs, token: sign(t, jwt.SigningMethodRS256, k.rsa1, "", baseClaims()), wantSub: "agent-1"},
		{name: "rs512 ok", cfg: rs, token: sign(t, jwt.SigningMethodRS512, k.rsa1, "", baseClaims()), wantSub: "agent-1"},
		{name: "rs256 pkcs1 pem ok", cfg: both, token: sign(t, jwt.SigningMethodRS256, k.rsa1, "", baseClaims()), wantSub: "agent-1"},
		{name: "rs256 other key", cfg: rs, token: sign(t, jwt.SigningMethodRS256, k.rsa2, "", baseClaims()), wantErr: ErrInvalidToken},
		{name: "rs256 expired", cfg: rs, token: sign(t, jwt.SigningMethodRS256, k.rsa1, "", baseClaims(func(c jwt.MapClaims) { c["exp"] = t0.Add(-time.Second).Unix() })), wantErr: ErrExpired},
		{name: "ps256 refused", cfg: rs, token: sign(t, jwt.SigningMethodPS256, k.rsa1, "", baseClaims()), wantErr: ErrInvalidToken},
		{name: "es256 ok", cfg: es, token: sign(t, jwt.SigningMethodES256, k.ec1, "", baseClaims()), wantSub: "agent-1"},
		{name: "es256 from certificate ok", cfg: both, token: sign(t, jwt.SigningMethodES256, k.ec1, "", baseClaims()), wantSub: "agent-1"},
		{name: "es256 other key", cfg: es, token: sign(t, jwt.SigningMethodES256, k.ec2, "", baseClaims()), wantErr: ErrInvalidToken},
		{name: "es384 against p256 key", cfg: es, token: sign(t, jwt.SigningMethodES384, k.ec384, "", baseClaims()), wantErr: ErrInvalidToken},
		{name: "es256 wrong aud", cfg: es, token: sign(t, jwt.SigningMethodES256, k.ec1, "", baseClaims(func(c jwt.MapClaims) { c["aud"] = "x" })), wantErr: ErrAudience},
		{name: "rs256 against ec key", cfg: es, token: sign(t, jwt.SigningMethodRS256, k.rsa1, "", baseClaims()), wantErr: ErrInvalidToken},
	}
}

func TestVerify(t *testing.T) {
	for _, tc := range verifyCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			v := newVerifier(t, tc.cfg)
			c, err := v.Verify(tc.token)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.AgentID != tc.wantSub {
					t.Fatalf("AgentID = %q, want %q", c.AgentID, tc.wantSub)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Verify error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// assertNoLeak fails if msg contains the token, one of its segments, or the secret.
func assertNoLeak(t *testing.T, msg, token string) {
	t.Helper()
	if token != "" && strings.Contains(msg, token) {
		t.Fatalf("error %q contains the token", msg)
	}
	for _, part := range strings.Split(token, ".") {
		if len(part) >= 8 && strings.Contains(msg, part) {
			t.Fatalf("error %q contains token segment %q", msg, part)
		}
		// Nor a decoded fragment of the header or payload.
		if dec, err := base64.RawURLEncoding.DecodeString(part); err == nil && len(dec) >= 8 && strings.Contains(msg, string(dec)) {
			t.Fatalf("error %q contains a decoded token segment", msg)
		}
	}
	if strings.Contains(msg, string(testSecret)) {
		t.Fatalf("error %q contains the secret", msg)
	}
}

func TestVerifyErrorsNeverLeak(t *testing.T) {
	n := 0
	for _, tc := range verifyCases(t) {
		if tc.wantErr == nil {
			continue
		}
		v := newVerifier(t, tc.cfg)
		_, err := v.Verify(tc.token)
		if err == nil {
			t.Fatalf("%s: verified", tc.name)
		}
		assertNoLeak(t, err.Error(), tc.token)
		n++
	}
	if n < 20 {
		t.Fatalf("only %d failing cases checked", n)
	}
}

func TestConnectorsClaim(t *testing.T) {
	v := newVerifier(t, VerifierConfig{HS256Secret: testSecret})
	for _, tc := range []struct {
		name  string
		claim any // nil: absent
		want  []string
	}{
		{name: "absent", claim: nil, want: nil},
		{name: "array", claim: []string{"ldap", "ad"}, want: []string{"ldap", "ad"}},
		{name: "string", claim: "ldap, ad ,,gc", want: []string{"ldap", "ad", "gc"}},
		{name: "single string", claim: "ldap", want: []string{"ldap"}},
		{name: "empty array", claim: []string{}, want: []string{}},
		{name: "empty string", claim: "", want: []string{}},
		{name: "null", claim: json.RawMessage("null"), want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := baseClaims()
			if tc.claim != nil {
				c["connectors"] = tc.claim
			}
			got, err := v.Verify(sign(t, jwt.SigningMethodHS256, testSecret, "", c))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Connectors, tc.want) {
				t.Fatalf("Connectors = %#v, want %#v", got.Connectors, tc.want)
			}
		})
	}
}

func TestClaimsAllows(t *testing.T) {
	for _, tc := range []struct {
		name       string
		connectors []string
		connector  string
		want       bool
	}{
		{name: "nil allows all", connectors: nil, connector: "ldap", want: true},
		{name: "listed", connectors: []string{"ldap", "ad"}, connector: "ad", want: true},
		{name: "not listed", connectors: []string{"ldap"}, connector: "ad", want: false},
		{name: "case sensitive", connectors: []string{"ldap"}, connector: "LDAP", want: false},
		{name: "empty allows none", connectors: []string{}, connector: "ldap", want: false},
	} {
		if got := (Claims{AgentID: "a", Connectors: tc.connectors}).Allows(tc.connector); got != tc.want {
			t.Errorf("%s: Allows(%q) = %v, want %v", tc.name, tc.connector, got, tc.want)
		}
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		header  string
		want    string
		wantErr error
	}{
		{header: "Bearer abc.def.ghi", want: "abc.def.ghi"},
		{header: "bearer abc", want: "abc"},
		{header: "BEARER   abc  ", want: "abc"},
		{header: "\tBearer\tabc", want: "abc"},
		{header: "Bearer abc==", want: "abc=="},
		{header: "", wantErr: ErrNoToken},
		{header: "   ", wantErr: ErrNoToken},
		{header: "Bearer", wantErr: ErrNoToken},
		{header: "Bearer    ", wantErr: ErrNoToken},
		{header: "Bearerabc", wantErr: ErrNoToken},
		{header: "Basic dXNlcjpwYXNz", wantErr: ErrNoToken},
		{header: "Token abc", wantErr: ErrNoToken},
		{header: "Bearer abc def", wantErr: ErrInvalidToken},
		{header: "Bearer abc\x00", wantErr: ErrInvalidToken},
	} {
		got, err := BearerToken([]byte(tc.header))
		if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
			t.Errorf("BearerToken(%q) error = %v, want %v", tc.header, err, tc.wantErr)
			continue
		}
		if string(got) != tc.want {
			t.Errorf("BearerToken(%q) = %q, want %q", tc.header, got, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "abc") {
			t.Errorf("BearerToken(%q) error %q quotes the header", tc.header, err)
		}
	}
	if _, err := BearerToken(nil); !errors.Is(err, ErrNoToken) {
		t.Errorf("BearerToken(nil) = %v", err)
	}
}

func TestBearerTokenNoAlloc(t *testing.T) {
	h := []byte("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln")
	if n := testing.AllocsPerRun(100, func() {
		if _, err := BearerToken(h); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("BearerToken allocates %v times", n)
	}
}

func TestMint(t *testing.T) {
	tok, err := Mint(testSecret, "agent-7", []string{"ldap", "ad"}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{HS256Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentID != "agent-7" || !slices.Equal(c.Connectors, []string{"ldap", "ad"}) {
		t.Fatalf("claims = %+v", c)
	}
	if d := time.Until(c.ExpiresAt); d < 58*time.Minute || d > time.Hour+time.Second {
		t.Fatalf("ExpiresAt %v is not about an hour away", c.ExpiresAt)
	}

	// The payload: aud is an array, jti is random, iat and nbf are set.
	var payload map[string]any
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &payload); err != nil {
		t.Fatal(err)
	}
	if aud, ok := payload["aud"].([]any); !ok || len(aud) != 1 || aud[0] != "nowconnect" {
		t.Fatalf("aud = %#v, want [\"nowconnect\"]", payload["aud"])
	}
	for _, k := range []string{"iat", "nbf", "exp", "jti", "sub", "connectors"} {
		if _, ok := payload[k]; !ok {
			t.Errorf("payload has no %s: %s", k, raw)
		}
	}
	tok2, err := Mint(testSecret, "agent-7", nil, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := v.Verify(tok2)
	if err != nil {
		t.Fatal(err)
	}
	if !c2.ExpiresAt.IsZero() || c2.Connectors != nil {
		t.Fatalf("ttl 0, no connectors: claims = %+v", c2)
	}
	if strings.Contains(string(mustDecode(t, tok2)), `"exp"`) || strings.Contains(string(mustDecode(t, tok2)), `"connectors"`) {
		t.Fatalf("ttl 0 token has exp or connectors: %s", mustDecode(t, tok2))
	}
	if jti := payload["jti"]; jti == nil || jti == mustClaims(t, tok2)["jti"] {
		t.Fatalf("jti not random: %v", jti)
	}

	// Expiry through the Now hook.
	late := newVerifier(t, VerifierConfig{HS256Secret: testSecret, Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
	if _, err := late.Verify(tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("two hours later: %v, want ErrExpired", err)
	}

	// Custom audience.
	tok3, err := Mint(testSecret, "agent-7", nil, time.Minute, "gateway-2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok3); !errors.Is(err, ErrAudience) {
		t.Fatalf("audience gateway-2 against default: %v, want ErrAudience", err)
	}
	v2, _ := NewVerifier(VerifierConfig{HS256Secret: testSecret, Audience: "gateway-2"})
	if _, err := v2.Verify(tok3); err != nil {
		t.Fatalf("audience gateway-2: %v", err)
	}

	// Bad input.
	for name, f := range map[string]func() error{
		"short secret":  func() error { _, err := Mint([]byte("short"), "a", nil, 0, ""); return err },
		"empty agent":   func() error { _, err := Mint(testSecret, "", nil, 0, ""); return err },
		"agent ctrl":    func() error { _, err := Mint(testSecret, "a\tb", nil, 0, ""); return err },
		"empty conn":    func() error { _, err := Mint(testSecret, "a", []string{""}, 0, ""); return err },
		"comma in conn": func() error { _, err := Mint(testSecret, "a", []string{"a,b"}, 0, ""); return err },
	} {
		err := f()
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if strings.Contains(err.Error(), string(testSecret)) {
			t.Errorf("%s: error contains the secret", name)
		}
	}
}

func mustDecode(t *testing.T, tok string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(mustDecode(t, tok), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLoadVerifier(t *testing.T) {
	k := keys()
	dir := t.TempDir()
	secretFile := writeFile(t, dir, "secret", append(slices.Clone(testSecret), '\r', '\n'))
	rsaFile := writeFile(t, dir, "rsa.pem", pkixPEM(t, &k.rsa1.PublicKey))
	ecFile := writeFile(t, dir, "ec.crt", certPEM(t, k.ec1))

	v, err := LoadVerifier(secretFile, []string{rsaFile, ecFile}, "", "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Mint(testSecret, "agent-1", nil, time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("secret from file (newline trimmed): %v", err)
	}
	// LoadVerifier has no Now hook: these tokens are valid around the real clock.
	current := func(c jwt.MapClaims) {
		now := time.Now()
		c["iat"], c["nbf"], c["exp"] = now.Unix(), now.Unix(), now.Add(time.Hour).Unix()
	}
	for _, tok := range []string{
		sign(t, jwt.SigningMethodRS256, k.rsa1, "", baseClaims(current)),
		sign(t, jwt.SigningMethodES256, k.ec1, "", baseClaims(current)),
	} {
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("key from file: %v", err)
		}
	}

	missing := filepath.Join(dir, "does-not-exist.pem")
	_, err = LoadVerifier("", []string{rsaFile, missing}, "", "", "", 0)
	if err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing key file: %v, want an error naming %s", err, missing)
	}
	if strings.Count(err.Error(), missing) != 1 {
		t.Errorf("error names the file more than once: %v", err)
	}
	missingSecret := filepath.Join(dir, "no-secret")
	if _, err := LoadVerifier(missingSecret, nil, "", "", "", 0); err == nil || !strings.Contains(err.Error(), missingSecret) {
		t.Fatalf("missing secret file: %v", err)
	}

	// Bad contents: the file is named, its contents are not quoted.
	garbage := writeFile(t, dir, "garbage.pem", []byte("TOPSECRETGARBAGE\n"))
	if _, err := LoadVerifier("", []string{garbage}, "", "", "", 0); err == nil || !strings.Contains(err.Error(), garbage) || strings.Contains(err.Error(), "TOPSECRETGARBAGE") {
		t.Fatalf("garbage key file: %v", err)
	}
	der, _ := x509.MarshalECPrivateKey(k.ec1)
	privFile := writeFile(t, dir, "priv.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if _, err := LoadVerifier("", []string{privFile}, "", "", "", 0); err == nil || !strings.Contains(err.Error(), "private key") {
		t.Fatalf("private key file: %v", err)
	}
	shortSecret := writeFile(t, dir, "short", []byte("tiny-SECRETVALUE\n"))
	if _, err := LoadVerifier(shortSecret, nil, "", "", "", 0); err == nil || !strings.Contains(err.Error(), shortSecret) || strings.Contains(err.Error(), "SECRETVALUE") {
		t.Fatalf("short secret: %v", err)
	}
	if _, err := LoadVerifier("", nil, "", "", "", 0); err == nil {
		t.Fatal("no key source: no error")
	}
}

func TestNewVerifierErrors(t *testing.T) {
	for name, cfg := range map[string]VerifierConfig{
		"no source":       {},
		"short secret":    {HS256Secret: []byte("short")},
		"negative leeway": {HS256Secret: testSecret, Leeway: -time.Second},
		"bad pem":         {PublicKeyPEMs: [][]byte{[]byte("nope")}},
		"jwks plain http": {JWKSURL: "http://idp.example.com/jwks"},
		"jwks ftp":        {JWKSURL: "ftp://127.0.0.1/jwks"},
		"jwks relative":   {JWKSURL: "/jwks"},
	} {
		if _, err := NewVerifier(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	for _, u := range []string{"https://idp.example.com/jwks", "http://127.0.0.1:1/jwks", "http://localhost/x", "http://[::1]:80/"} {
		if _, err := NewVerifier(VerifierConfig{JWKSURL: u}); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
}

// jwksServer serves a key set that the test swaps, and counts requests.
type jwksServer struct {
	*httptest.Server
	body   atomic.Pointer[[]byte]
	status atomic.Int32
	hits   atomic.Int32
}

func newJWKSServer(t *testing.T, tls bool) *jwksServer {
	s := &jwksServer{}
	s.status.Store(http.StatusOK)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if code := int(s.status.Load()); code != http.StatusOK {
			http.Error(w, "boom", code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(*s.body.Load())
	})
	if tls {
		s.Server = httptest.NewTLSServer(h)
	} else {
		s.Server = httptest.NewServer(h)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(t *testing.T, keys ...map[string]string) {
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	s.body.Store(&b)
}

func rsaJWK(kid string, k *rsa.PublicKey) map[string]string {
	return map[string]string{
		"kty": "RSA", "kid": kid, "use": "sig",
		"n": base64.RawURLEncoding.EncodeToString(k.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes()),
	}
}

func ecJWK(t *testing.T, kid string, k *ecdsa.PublicKey) map[string]string {
	b, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	size := (len(b) - 1) / 2
	return map[string]string{
		"kty": "EC", "kid": kid, "crv": k.Curve.Params().Name,
		"x": base64.RawURLEncoding.EncodeToString(b[1 : 1+size]),
		"y": base64.RawURLEncoding.EncodeToString(b[1+size:]),
	}
}

func TestJWKSRotation(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, false)
	srv.serve(t, rsaJWK("k1", &k.rsa1.PublicKey))
	clk := newClock(t0)
	v := newVerifier(t, VerifierConfig{JWKSURL: srv.URL + "/jwks", Now: clk.Now})

	tok1 := sign(t, jwt.SigningMethodRS256, k.rsa1, "k1", baseClaims())
	tok2 := sign(t, jwt.SigningMethodES256, k.ec1, "k2", baseClaims())
	check := func(step, tok string, wantErr error, wantHits int32) {
		t.Helper()
		_, err := v.Verify(tok)
		if wantErr == nil && err != nil || !errors.Is(err, wantErr) {
			t.Fatalf("%s: Verify = %v, want %v", step, err, wantErr)
		}
		if err != nil {
			assertNoLeak(t, err.Error(), tok)
		}
		if got := srv.hits.Load(); got != wantHits {
			t.Fatalf("%s: %d fetches, want %d", step, got, wantHits)
		}
	}

	check("first use fetches", tok1, nil, 1)
	for range 5 {
		check("cached", tok1, nil, 1)
	}
	// A token without kid tries every key of its kind.
	check("no kid", sign(t, jwt.SigningMethodRS256, k.rsa1, "", baseClaims()), nil, 1)
	check("kid names a key of another kind", sign(t, jwt.SigningMethodES256, k.ec1, "k1", baseClaims()), ErrInvalidToken, 1)

	// Rotation: the IdP now publishes only k2.
	srv.serve(t, ecJWK(t, "k2", &k.ec1.PublicKey))
	clk.Advance(time.Second)
	check("unknown kid, too soon to refetch", tok2, ErrInvalidToken, 1)
	clk.Advance(JWKSMinInterval)
	check("unknown kid refetches", tok2, nil, 2)
	check("new key cached", tok2, nil, 2)
	check("old kid gone, too soon to refetch", tok1, ErrInvalidToken, 2)

	// Both published; the set is refetched once it is JWKSMaxAge old even for a known kid.
	srv.serve(t, rsaJWK("k1", &k.rsa1.PublicKey), ecJWK(t, "k2", &k.ec1.PublicKey))
	clk.Advance(JWKSMaxAge)
	check("max age refetches", tok2, nil, 3)
	check("old kid back", tok1, nil, 3)

	// The IdP fails: the last good set is kept, and retries wait JWKSMinInterval.
	srv.status.Store(http.StatusInternalServerError)
	clk.Advance(JWKSMaxAge)
	check("failed refetch keeps old keys", tok1, nil, 4)
	check("no retry storm", tok2, nil, 4)
	check("no retry for unknown kid either", sign(t, jwt.SigningMethodRS256, k.rsa2, "k9", baseClaims()), ErrInvalidToken, 4)
	srv.status.Store(http.StatusOK)
	clk.Advance(JWKSMinInterval)
	check("retry after interval", tok1, nil, 5)

	// Claims are still checked for JWKS keys.
	check("jwks expired", sign(t, jwt.SigningMethodRS256, k.rsa1, "k1", baseClaims(func(c jwt.MapClaims) { c["exp"] = t0.Unix() })), ErrExpired, 5)
	// An HS256 token is refused even if the set published a symmetric key.
	hs := sign(t, jwt.SigningMethodHS256, testSecret, "k1", baseClaims())
	check("hs256 with jwks only", hs, ErrInvalidToken, 5)
}

func TestJWKSSkipsUnsafeKeys(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, false)
	srv.serve(t,
		map[string]string{"kty": "oct", "kid": "sym", "k": base64.RawURLEncoding.EncodeToString(testSecret)},
		map[string]string{"kty": "RSA", "kid": "enc", "use": "enc", "n": rsaJWK("", &k.rsa2.PublicKey)["n"], "e": "AQAB"},
		map[string]string{"kty": "RSA", "kid": "bad", "n": "!!!", "e": "AQAB"},
		ecJWK(t, "offcurve", &k.ec2.PublicKey),
		func() map[string]string { m := rsaJWK("only256", &k.rsa1.PublicKey); m["alg"] = "RS256"; return m }(),
	)
	// Corrupt the off-curve key's y.
	b := *srv.body.Load()
	var set struct{ Keys []map[string]string }
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	set.Keys[3]["y"] = set.Keys[3]["x"]
	srv.serve(t, set.Keys...)

	v := newVerifier(t, VerifierConfig{JWKSURL: srv.URL, HS256Secret: nil})
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa1, "only256", baseClaims())); err != nil {
		t.Fatalf("RS256 with alg-restricted key: %v", err)
	}
	for name, tok := range map[string]string{
		"alg restriction":    sign(t, jwt.SigningMethodRS384, k.rsa1, "only256", baseClaims()),
		"oct key":            sign(t, jwt.SigningMethodHS256, testSecret, "sym", baseClaims()),
		"encryption key":     sign(t, jwt.SigningMethodRS256, k.rsa2, "enc", baseClaims()),
		"point not on curve": sign(t, jwt.SigningMethodES256, k.ec2, "offcurve", baseClaims()),
	} {
		if _, err := v.Verify(tok); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: %v, want ErrInvalidToken", name, err)
		}
	}
}

func TestJWKSUnavailable(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, false)
	url := srv.URL + "/jwks?tenant=QUERYSECRET"
	srv.Close() // nothing listens there any more
	clk := newClock(t0)
	v := newVerifier(t, VerifierConfig{JWKSURL: url, Now: clk.Now})
	tok := sign(t, jwt.SigningMethodRS256, k.rsa1, "k1", baseClaims())
	_, err := v.Verify(tok)
	if !errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), "key set not available") {
		t.Fatalf("Verify = %v, want key set not available", err)
	}
	assertNoLeak(t, err.Error(), tok)
	if strings.Contains(err.Error(), "QUERYSECRET") {
		t.Fatalf("error %q quotes the URL's query", err)
	}
	if err := v.RefreshKeys(context.Background()); err == nil {
		t.Fatal("RefreshKeys: no error")
	}
}

func TestJWKSOverTLS(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, true)
	srv.serve(t, ecJWK(t, "e1", &k.ec384.PublicKey))
	v := newVerifier(t, VerifierConfig{JWKSURL: srv.URL, HTTPClient: srv.Client()})
	if err := v.RefreshKeys(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodES384, k.ec384, "e1", baseClaims())); err != nil {
		t.Fatal(err)
	}
	if srv.hits.Load() != 1 {
		t.Fatalf("%d fetches, want 1 (RefreshKeys warmed the cache)", srv.hits.Load())
	}
}

func TestJWKSConcurrent(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, false)
	srv.serve(t, rsaJWK("k1", &k.rsa1.PublicKey))
	v := newVerifier(t, VerifierConfig{JWKSURL: srv.URL})
	tok := sign(t, jwt.SigningMethodRS256, k.rsa1, "k1", baseClaims())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := v.Verify(tok)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("%d fetches for concurrent first use, want 1", n)
	}
}

// knownErrorTexts is every text Verify can return without a JWKS.
func knownErrorTexts() map[string]bool {
	m := map[string]bool{}
	for _, e := range []error{ErrNoToken, ErrExpired, ErrAudience, ErrIssuer, ErrNoSubject,
		errTooLong, errMalformed, errAlg, errSignature, errNoKey, errNotYetValid, errBadClaims, errBadSubject} {
		m[e.Error()] = true
	}
	return m
}

func FuzzVerify(f *testing.F) {
	f.Add(sign(f, jwt.SigningMethodHS256, testSecret, "", baseClaims()))
	f.Add(sign(f, jwt.SigningMethodHS256, testSecret, "kid", baseClaims(func(c jwt.MapClaims) { c["connectors"] = "a,b" })))
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.")
	f.Add("a.b.c")
	f.Add("")
	v := newVerifier(f, VerifierConfig{HS256Secret: testSecret})
	known := knownErrorTexts()
	f.Fuzz(func(t *testing.T, tok string) {
		_, err := v.Verify(tok)
		if err != nil && !known[err.Error()] {
			t.Fatalf("unexpected error text %q", err)
		}
	})
}

func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer\t x", "", "Basic x", "Bearer a b"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, h []byte) {
		tok, err := BearerToken(h)
		if err != nil {
			if tok != nil || (!errors.Is(err, ErrNoToken) && !errors.Is(err, ErrInvalidToken)) {
				t.Fatalf("BearerToken(%q) = %q, %v", h, tok, err)
			}
			return
		}
		if len(tok) == 0 || bytes.ContainsAny(tok, " \t\r\n") || !bytes.Contains(h, tok) {
			t.Fatalf("BearerToken(%q) = %q", h, tok)
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	k := keys()
	for _, bc := range []struct {
		name string
		cfg  VerifierConfig
		tok  string
	}{
		{name: "HS256", cfg: VerifierConfig{HS256Secret: testSecret}, tok: sign(b, jwt.SigningMethodHS256, testSecret, "", baseClaims())},
		{name: "RS256", cfg: VerifierConfig{PublicKeyPEMs: [][]byte{pkixPEM(b, &k.rsa1.PublicKey)}}, tok: sign(b, jwt.SigningMethodRS256, k.rsa1, "", baseClaims())},
		{name: "ES256", cfg: VerifierConfig{PublicKeyPEMs: [][]byte{pkixPEM(b, &k.ec1.PublicKey)}}, tok: sign(b, jwt.SigningMethodES256, k.ec1, "", baseClaims())},
		{name: "HS256-bad-signature", cfg: VerifierConfig{HS256Secret: testSecret}, tok: sign(b, jwt.SigningMethodHS256, []byte("another-secret-another-secret-000"), "", baseClaims())},
	} {
		b.Run(bc.name, func(b *testing.B) {
			v := newVerifier(b, bc.cfg)
			_, wantErr := v.Verify(bc.tok)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(bc.tok); (err == nil) != (wantErr == nil) {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkBearerToken(b *testing.B) {
	h := []byte("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := BearerToken(h); err != nil {
			b.Fatal(err)
		}
	}
}
