package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// maxHealthBody bounds what `health` reads of an answer.
const maxHealthBody = 4096

// runHealth asks a hub's (or agent's) /healthz and exits 0 when it answers
// 200 {"status":"ok"}, 1 otherwise, 2 on a usage error. It is the image's
// HEALTHCHECK, which has no shell and no curl (FROM scratch).
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rawURL := fs.String("url", "http://127.0.0.1:8765/healthz", "health endpoint to ask (http:// or https://)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nowconnect health: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	u, err := url.Parse(*rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "nowconnect health: --url %q: want http://HOST:PORT/PATH or https://…\n", *rawURL)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "nowconnect health: --timeout %v: must be greater than 0s\n", *timeout)
		return 2
	}
	if err := checkHealth(ctx, u.String(), *timeout); err != nil {
		fmt.Fprintf(stderr, "nowconnect health: %s: %v\n", u.Redacted(), err)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

// errUnhealthy is an answer that is not 200 {"status":"ok"}.
var errUnhealthy = errors.New("unhealthy")

// checkHealth GETs u within timeout and wants 200 with {"status":"ok"}.
func checkHealth(ctx context.Context, u string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	client := &http.Client{
		// A health probe talks to the process next to it: no proxy, no redirects.
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHealthBody))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: HTTP %d", errUnhealthy, resp.StatusCode)
	}
	var h struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return fmt.Errorf("%w: answer is not JSON: %q", errUnhealthy, truncate(body, 64))
	}
	if h.Status != "ok" {
		return fmt.Errorf("%w: status %q", errUnhealthy, h.Status)
	}
	return nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
