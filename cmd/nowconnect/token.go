package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nowconnect/nowconnect/internal/auth"
)

func runToken(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("token", "--secret-file FILE --agent-id ID [--connectors a,b] [--ttl 1h | --no-expiry]", stderr)
	secretFile := fs.String("secret-file", "", "file holding the HS256 shared secret (the hub's auth.jwt_secret_file) (required)")
	agentID := fs.String("agent-id", "", "agent id (the token's sub) (required)")
	conns := fs.String("connectors", "", "comma-separated connectors the agent may serve (empty: any)")
	ttl := fs.Duration("ttl", time.Hour, "lifetime, greater than 0")
	noExpiry := fs.Bool("no-expiry", false, "mint a token that never expires (instead of --ttl); revoking it means changing the secret")
	aud := fs.String("audience", "nowconnect", "aud claim")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ttlSet := false
	fs.Visit(func(f *flag.Flag) { ttlSet = ttlSet || f.Name == "ttl" })
	switch {
	case *secretFile == "" && *agentID == "":
		return usagef("--secret-file and --agent-id are required")
	case *secretFile == "":
		return usagef("--secret-file is required")
	case *agentID == "":
		return usagef("--agent-id is required")
	case *noExpiry && ttlSet:
		return usagef("--ttl and --no-expiry exclude each other")
	case !*noExpiry && *ttl <= 0:
		return usagef("--ttl %v: must be greater than 0 (--no-expiry mints a token that never expires)", *ttl)
	}
	lifetime := *ttl
	if *noExpiry {
		lifetime = 0 // auth.Mint: no exp claim
	}
	secret, err := os.ReadFile(*secretFile)
	if err != nil {
		return fmt.Errorf("read secret: %w", err)
	}
	secret = bytes.TrimRight(secret, "\r\n")
	if len(secret) == 0 {
		return fmt.Errorf("secret file %s is empty", *secretFile)
	}
	var list []string
	for _, c := range strings.Split(*conns, ",") {
		if c = strings.TrimSpace(c); c != "" {
			list = append(list, c)
		}
	}
	tok, err := auth.Mint(secret, *agentID, list, lifetime, *aud)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
