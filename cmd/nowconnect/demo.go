package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nowconnect/nowconnect/internal/ldapdemo"
)

// runDemo runs the seeded demo directory (internal/ldapdemo) on 127.0.0.1 until ctx
// ends: a target for the README's recipes on a machine without a directory of its own.
// demoUsers is the number of users the demo directory is seeded with.
const demoUsers = 5

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[--port 1389] [--users 5]", stderr)
	port := fs.Int("port", 1389, "127.0.0.1 port to listen on (0: a free one)")
	users := fs.Int("users", demoUsers, "seeded users uid=user0000…")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *port < 0 || *port > 65535 {
		return usagef("--port %d: out of range 0..65535", *port)
	}
	if *users < 0 || *users > 100000 {
		return usagef("--users %d: out of range 0..100000", *users)
	}
	s, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: *users, Port: *port})
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while starting
		}
		if errors.Is(err, ldapdemo.ErrExitedEarly) {
			return fmt.Errorf("%w: is port %d taken? (--port 0 picks a free one)", err, *port)
		}
		return err
	}
	defer s.Stop()
	last := "none"
	if *users > 0 {
		last = fmt.Sprintf("uid=user0000..user%04d (password passwordNNNN)", *users-1)
	}
	fmt.Fprintf(stdout, "demo directory ready: %s  base %s  admin %s / %s  users %s\n", s.URL(), ldapdemo.BaseDN, ldapdemo.AdminDN, ldapdemo.AdminPW, last)
	fmt.Fprintf(stdout, "try: ldapsearch -x -H %s -b %s '(objectClass=inetOrgPerson)' cn mail\nCtrl-C stops it.\n", s.URL(), ldapdemo.BaseDN)
	select {
	case <-ctx.Done():
		return nil
	case <-s.Done():
		return errors.New("slapd exited unexpectedly")
	}
}
