package agent

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

var tokenSecret = []byte("agent-test-secret-0123456789abcdef")

func mint(t *testing.T, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint(tokenSecret, "agent-1", nil, ttl, "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fakeJWT builds header.payload.sig with the given JSON payload.
func fakeJWT(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"HS256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestTokenExpiry(t *testing.T) {
	minted := mint(t, 90*time.Minute)
	tests := []struct {
		name string
		tok  string
		want int64 // unix seconds; 0: none
	}{
		{name: "minted", tok: minted, want: time.Now().Add(90 * time.Minute).Unix()},
		{name: "minted without exp", tok: mint(t, 0), want: 0},
		{name: "integer", tok: fakeJWT(`{"sub":"a","exp":1900000000}`), want: 1900000000},
		{name: "fraction", tok: fakeJWT(`{"exp":1900000000.75}`), want: 1900000000},
		{name: "padded payload", tok: strings.Replace(fakeJWT(`{"exp":1900000000}`), ".c2ln", "==.c2ln", 1), want: 1900000000},
		{name: "quoted exp, as golang-jwt reads it", tok: fakeJWT(`{"exp":"1900000000"}`), want: 1900000000},
		{name: "word exp", tok: fakeJWT(`{"exp":"soon"}`), want: 0},
		{name: "negative", tok: fakeJWT(`{"exp":-5}`), want: 0},
		{name: "absurd", tok: fakeJWT(`{"exp":1e300}`), want: 0},
		{name: "null", tok: fakeJWT(`{"exp":null}`), want: 0},
		{name: "not JSON", tok: fakeJWT(`exp`), want: 0},
		{name: "two parts", tok: "a.b", want: 0},
		{name: "opaque", tok: "s3cret-token-value", want: 0},
		{name: "bad base64", tok: "a.!!!.c", want: 0},
		{name: "empty", tok: "", want: 0},
	}
	for _, tc := range tests {
		exp, ok := tokenExpiry(tc.tok)
		got := int64(0)
		if ok {
			got = exp.Unix()
		}
		// Mint and this test read the clock a moment apart.
		if math.Abs(float64(got-tc.want)) > 1 || ok != (tc.want != 0) {
			t.Errorf("%s: tokenExpiry = %d %v, want %d", tc.name, got, ok, tc.want)
		}
	}
}

// logRecords returns the JSON log records with msg.
func logRecords(t *testing.T, logs, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line not JSON: %q", sc.Text())
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestTokenExpiringWarning: a token expiring within a day is warned about
// at the attempt and by the hourly check (here every 20 ms), once per
// token and never with the token; the metric carries its exp, 0 for a
// token without one.
func TestTokenExpiringWarning(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{})
	logs := &testenv.SyncBuffer{}
	soon := mint(t, 2*time.Hour)
	var cur atomic.Pointer[string]
	cur.Store(&soon)
	cfg := testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, logs)
	cfg.Token = soon
	cfg.TokenSource = func() (string, error) { return *cur.Load(), nil }
	set := metrics.NewSet()
	cfg.Metrics = set
	a := newAgent(t, cfg)
	a.tokenEvery = 20 * time.Millisecond
	runAgent(t, a)
	hub.nextPeer(t)
	waitFor(t, "connected", a.Connected)
	expSoon, _ := tokenExpiry(soon)
	series := "nowconnect_agent_token_expiry_timestamp_seconds"
	if got := testenv.Metric(t, set.WritePrometheus, series); got != float64(expSoon.Unix()) {
		t.Fatalf("%s = %v, want %d", series, got, expSoon.Unix())
	}
	warned := logRecords(t, logs.String(), "token_expiring")
	if len(warned) != 1 {
		t.Fatalf("%d token_expiring lines, want 1:\n%s", len(warned), logs)
	}
	if w := warned[0]; w["level"] != "WARN" || w["expires_at"] != expSoon.UTC().Format(time.RFC3339) || w["expired"] != false {
		t.Fatalf("token_expiring = %v", w)
	}

	// The file is rotated to another short token: the hourly check warns
	// about it (once), without a reconnect.
	other := mint(t, 3*time.Hour)
	cur.Store(&other)
	expOther, _ := tokenExpiry(other)
	waitFor(t, "second warning", func() bool { return len(logRecords(t, logs.String(), "token_expiring")) == 2 })
	waitFor(t, "metric follows", func() bool { return testenv.Metric(t, set.WritePrometheus, series) == float64(expOther.Unix()) })

	// A token for 3 days: no warning; without exp: the metric says 0.
	far := mint(t, 72*time.Hour)
	cur.Store(&far)
	expFar, _ := tokenExpiry(far)
	waitFor(t, "metric follows", func() bool { return testenv.Metric(t, set.WritePrometheus, series) == float64(expFar.Unix()) })
	forever := mint(t, 0)
	cur.Store(&forever)
	waitFor(t, "metric 0", func() bool { return testenv.Metric(t, set.WritePrometheus, series) == 0 })
	if n := len(logRecords(t, logs.String(), "token_expiring")); n != 2 {
		t.Fatalf("%d token_expiring lines, want 2", n)
	}
	if a.Connects() != 1 {
		t.Fatalf("%d connects: the check must not reconnect", a.Connects())
	}
	for _, tok := range []string{soon, other, far, forever} {
		if strings.Contains(logs.String(), tok) || strings.Contains(logs.String(), tok[strings.LastIndex(tok, ".")+1:]) {
			t.Fatal("a token was logged")
		}
	}
}

// TestTokenSourceRotation: the TokenSource is asked at every attempt; a
// tunnel refused with 401 retries as soon as the source gives another
// token, although its backoff is a minute.
func TestTokenSourceRotation(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{rejectAuth: "Bearer old-token"})
	logs := &testenv.SyncBuffer{}
	var cur atomic.Pointer[string]
	old, fresh := "old-token", "fresh-token"
	cur.Store(&old)
	var asked atomic.Int32
	cfg := testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, logs)
	cfg.Token = "startup-token"
	cfg.TokenSource = func() (string, error) { asked.Add(1); return *cur.Load(), nil }
	cfg.ReconnectMin, cfg.ReconnectMax = time.Minute, time.Minute
	a := newAgent(t, cfg)
	runAgent(t, a)
	waitFor(t, "refused once", func() bool { return hub.rejected.Load() == 1 })
	cur.Store(&fresh)
	start := time.Now()
	hub.nextPeer(t)
	waitFor(t, "connected", a.Connected)
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("reconnected %v after the rotation", d)
	}
	hub.mu.Lock()
	auths := strings.Join(hub.auths, ",")
	hub.mu.Unlock()
	if auths != "Bearer fresh-token" {
		t.Fatalf("accepted upgrades carried %q", auths)
	}
	if asked.Load() < 2 {
		t.Fatalf("token source asked %d times", asked.Load())
	}
	if l := logs.String(); strings.Contains(l, old) || strings.Contains(l, fresh) {
		t.Fatal("token logged")
	}
}

// TestTokenSourceFailure: a failing source falls back to the last good
// token (Config.Token at first), and says so without the token.
func TestTokenSourceFailure(t *testing.T) {
	logs := &testenv.SyncBuffer{}
	cfg := testConfig([]string{"ws://127.0.0.1:1/tunnel"}, map[string]string{"ldap": "127.0.0.1:1"}, logs)
	cfg.TokenSource = func() (string, error) { return "", fmt.Errorf("token file is empty: /x/token") }
	a := newAgent(t, cfg)
	if got := a.token(a.log); got != testToken {
		t.Fatalf("token() = %q, want Config.Token", got)
	}
	if !strings.Contains(logs.String(), "token unreadable, using the previous one") || strings.Contains(logs.String(), testToken) {
		t.Fatalf("logs:\n%s", logs)
	}
}

// TestRetryBackoff: with the default bounds a refused tunnel waits longer
// each time up to 30 s (not 1/s forever); a tunnel that stayed up for
// stableAfter starts again from ReconnectMin, a shorter one does not.
func TestRetryBackoff(t *testing.T) {
	top := func(n int64) int64 { return n - 1 }
	r := retry{lo: DefaultReconnectMin, hi: DefaultReconnectMax, rnd: top}
	var got []time.Duration
	for range 8 {
		got = append(got, r.next(0))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second,
		30 * time.Second, 30 * time.Second, 30 * time.Second}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ceilings %v, want %v", got, want)
	}
	if d := r.next(stableAfter - time.Second); d != 30*time.Second {
		t.Fatalf("after a short session: %v, want the backoff kept", d)
	}
	if d := r.next(stableAfter); d != time.Second {
		t.Fatalf("after a stable session: %v, want a fresh start", d)
	}
	if d := r.next(0); d != 2*time.Second {
		t.Fatalf("next refusal: %v", d)
	}

	// With real jitter, a long 401 loop waits ~15 s on average.
	rr := retry{lo: DefaultReconnectMin, hi: DefaultReconnectMax, rnd: mrand.Int64N}
	var sum time.Duration
	for i := range 60 {
		d := rr.next(0)
		if d < DefaultReconnectMin || d > DefaultReconnectMax {
			t.Fatalf("attempt %d: %v out of bounds", i, d)
		}
		if i >= 10 {
			sum += d
		}
	}
	if mean := sum / 50; mean < 5*time.Second {
		t.Fatalf("mean wait in a 401 loop %v, want well above 1s", mean)
	}
}

// TestRefusalReason: the agent logs the hub's reason from a refusal's
// body: at most 256 bytes, printable ASCII only; "token refused" for a
// 401/403 without one.
func TestRefusalReason(t *testing.T) {
	resp := func(status, body string, hdr ...string) io.Reader {
		h := strings.Join(hdr, "\r\n")
		if h != "" {
			h += "\r\n"
		}
		return strings.NewReader(fmt.Sprintf("HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s", status, h, len(body), body))
	}
	long := strings.Repeat("x", 1000)
	tests := []struct {
		name string
		in   io.Reader
		want string
	}{
		{name: "hub", in: resp("401 Unauthorized", "unauthorized: expired\n", "Content-Type: text/plain"), want: "unauthorized: expired"},
		{name: "control bytes", in: resp("403 Forbidden", "bad\x1b[31m\x00 \xffname\r\n\tx"), want: "bad[31m name x"},
		{name: "long", in: resp("401 Unauthorized", long), want: long[:maxRefusalLen]},
		{name: "empty", in: resp("401 Unauthorized", ""), want: ""},
		{name: "garbage", in: strings.NewReader("not http\r\n\r\n"), want: ""},
		{name: "close-delimited", in: strings.NewReader("HTTP/1.0 503 Service Unavailable\r\n\r\nshutting down\n"), want: "shutting down"},
	}
	for _, tc := range tests {
		if got := refusalReason(tc.in); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestRefusalLogged: real sockets: a hub that answers the upgrade with a
// 401 and a reason, then one with a bare 403.
func TestRefusalLogged(t *testing.T) {
	checkLeaks(t)
	bodies := []string{"unauthorized: wrong audience\n", ""}
	var served atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { // refusingHubLoop
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			for {
				l, err := br.ReadString('\n')
				if err != nil || l == "\r\n" {
					break
				}
			}
			status, body := "401 Unauthorized", bodies[0]
			if i > 0 {
				status, body = "403 Forbidden", bodies[1]
			}
			fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", status, len(body), body)
			served.Add(1)
			_ = c.Close()
		}
	})
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	logs := &testenv.SyncBuffer{}
	a := newAgent(t, testConfig([]string{"ws://" + ln.Addr().String() + "/tunnel"}, map[string]string{"ldap": "127.0.0.1:1"}, logs))
	stop := runAgent(t, a)
	waitFor(t, "two refusals logged", func() bool { return len(logRecords(t, logs.String(), "tunnel refused by hub")) >= 2 })
	stop()
	recs := logRecords(t, logs.String(), "tunnel refused by hub")
	if r := recs[0]; r["status"] != 401.0 || r["reason"] != "unauthorized: wrong audience" || r["level"] != "WARN" {
		t.Fatalf("first refusal: %v", r)
	}
	if r := recs[1]; r["status"] != 403.0 || r["reason"] != "token refused" {
		t.Fatalf("second refusal: %v", r)
	}
	if bytes.Contains([]byte(logs.String()), []byte(testToken)) {
		t.Fatal("token logged")
	}
}

// TestNoteTokenWarnings: token_expiring once per token, again when it has
// expired, and every warnEvery; never for a token far from its exp.
func TestNoteTokenWarnings(t *testing.T) {
	logs := &testenv.SyncBuffer{}
	a := newAgent(t, testConfig([]string{"ws://127.0.0.1:1/tunnel"}, map[string]string{"ldap": "127.0.0.1:1"}, logs))
	tok := fakeJWT(`{"exp":1900000000}`)
	exp := time.Unix(1900000000, 0)
	steps := []struct {
		at      time.Duration // from exp
		tok     string
		warns   bool
		expired bool
	}{
		{at: -48 * time.Hour, tok: tok},
		{at: -2 * time.Hour, tok: tok, warns: true},
		{at: -90 * time.Minute, tok: tok},
		{at: -30 * time.Minute, tok: tok, warns: true}, // an hour later
		{at: time.Second, tok: tok, warns: true, expired: true},
		{at: 10 * time.Second, tok: tok},
		{at: 20 * time.Second, tok: fakeJWT(`{"exp":1900000000,"jti":"x"}`), warns: true, expired: true}, // another token
		{at: 2 * time.Hour, tok: fakeJWT(`{"exp":1900000000,"jti":"x"}`), warns: true, expired: true},
	}
	for i, s := range steps {
		before := len(logRecords(t, logs.String(), "token_expiring"))
		a.noteToken(s.tok, exp.Add(s.at), a.log)
		recs := logRecords(t, logs.String(), "token_expiring")
		if warned := len(recs) > before; warned != s.warns {
			t.Fatalf("step %d (%v): warned %v, want %v", i, s.at, warned, s.warns)
		}
		if s.warns && recs[len(recs)-1]["expired"] != s.expired {
			t.Fatalf("step %d: %v", i, recs[len(recs)-1])
		}
	}
	if got := a.tok.exp.Load(); got != 1900000000 {
		t.Fatalf("exp gauge %d", got)
	}
}
