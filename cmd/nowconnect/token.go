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
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	secretFile := fs.String("secret-file", "", "file holding the HS256 shared secret (the hub's auth.jwt_secret_file)")
	agentID := fs.String("agent-id", "", "agent id (the token's sub)")
	conns := fs.String("connectors", "", "comma-separated connectors the agent may serve (empty: any)")
	ttl := fs.Duration("ttl", time.Hour, "lifetime; 0 for a token that never expires")
	aud := fs.String("audience", "nowconnect", "aud claim")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *secretFile == "" || *agentID == "" {
		return fmt.Errorf("--secret-file and --agent-id are required")
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
	tok, err := auth.Mint(secret, *agentID, list, *ttl, *aud)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
