package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The agent's token: asked of Config.TokenSource before every connection
// attempt (a token file rotated in place is picked up without a restart),
// and watched for its expiry. The agent holds no key: it reads the JWT's
// exp claim without verifying the token, only to warn its operator.

// expiryWarning is how close to its exp a token makes the agent warn.
const expiryWarning = 24 * time.Hour

// warnEvery is how often token_expiring is repeated for the same token.
const warnEvery = time.Hour

// tokenState is what the agent knows of its token. Safe from any goroutine.
type tokenState struct {
	exp atomic.Int64 // exp of the latest token, unix seconds; 0: none or unreadable

	mu sync.Mutex
	// guarded by mu
	last          string    // the latest good token (TokenSource's, else Config.Token)
	warned        string    // the token token_expiring was last logged for
	warnedAt      time.Time // when
	warnedExpired bool      // and whether it had expired then
}

// token returns the token for the next attempt: from TokenSource when set
// (its last good answer when it fails), else Config.Token. It checks the
// token's expiry (see noteToken). Safe from any goroutine.
func (a *Agent) token(log *slog.Logger) string {
	var tok string
	if src := a.cfg.TokenSource; src == nil {
		tok = a.cfg.Token
	} else {
		t, err := src()
		a.tok.mu.Lock()
		if err == nil && t != "" {
			a.tok.last = t
		}
		tok = a.tok.last
		a.tok.mu.Unlock()
		switch {
		case err != nil:
			log.Warn("token unreadable, using the previous one", "agent_id", a.cfg.AgentID, "error", err.Error())
		case t == "":
			log.Warn("token source gave an empty token, using the previous one", "agent_id", a.cfg.AgentID)
		}
	}
	a.noteToken(tok, time.Now(), log)
	return tok
}

// noteToken records tok's expiry for the metric and logs token_expiring
// when it expires within expiryWarning: once per token, again once it has
// expired, and repeated every warnEvery. Safe from any goroutine.
func (a *Agent) noteToken(tok string, now time.Time, log *slog.Logger) {
	exp, ok := tokenExpiry(tok)
	if !ok {
		a.tok.exp.Store(0)
		return
	}
	a.tok.exp.Store(exp.Unix())
	left := exp.Sub(now)
	if left >= expiryWarning {
		return
	}
	a.tok.mu.Lock()
	expired := left <= 0
	due := tok != a.tok.warned || now.Sub(a.tok.warnedAt) >= warnEvery || (expired && !a.tok.warnedExpired)
	if due {
		a.tok.warned, a.tok.warnedAt, a.tok.warnedExpired = tok, now, expired
	}
	a.tok.mu.Unlock()
	if due {
		log.Warn("token_expiring", "agent_id", a.cfg.AgentID, "expires_at", exp.UTC().Format(time.RFC3339),
			"expires_in", left.Round(time.Second).String(), "expired", expired)
	}
}

// tokenWatchLoop checks the token's expiry every tokenEvery while a tunnel
// is up (attempts check it themselves), asking the TokenSource afresh: the
// token the next reconnect would use is the one that matters. Owned by Run;
// returns when ctx ends.
func (a *Agent) tokenWatchLoop(ctx context.Context) {
	t := time.NewTicker(a.tokenEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if a.Connected() {
				a.token(a.log)
			}
		}
	}
}

// tokenExpiry returns the exp claim of a JWT (compact serialization)
// without verifying it; ok is false when the token has none or is not a
// JWT. It never returns the token's contents otherwise.
func tokenExpiry(tok string) (exp time.Time, ok bool) {
	_, rest, found := strings.Cut(tok, ".")
	if !found {
		return time.Time{}, false
	}
	payload, _, found := strings.Cut(rest, ".")
	if !found || len(payload) > 16<<10 {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(payload, "="))
	if err != nil {
		return time.Time{}, false
	}
	var c struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Exp == nil {
		return time.Time{}, false
	}
	f, err := c.Exp.Float64()
	if err != nil || math.IsNaN(f) || f <= 0 || f > 1<<40 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}
