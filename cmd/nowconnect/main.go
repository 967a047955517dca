// Command nowconnect runs the NowConnect gateway: the cloud hub, the premise
// agent, both together for development, and the operator's tools.
//
//	nowconnect cloud   --config cloud.toml
//	nowconnect premise --cloud ws://HOST:8765/tunnel --agent-id ID --token-file FILE --connector NAME=HOST:PORT
//	nowconnect up      --control 127.0.0.1:8765 --forward LISTEN_ADDR=TARGET_ADDR
//	nowconnect token   --secret-file FILE --agent-id ID --connectors a,b --ttl 1h
//	nowconnect demo    --port 1389
//	nowconnect check   [--format nagios|json|table] FILE... | --from-config cloud.toml
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: nowconnect <command> [flags]

commands:
  cloud     run the cloud hub (--config FILE or NC_CONFIG)
  premise   run the premise agent
  up        run hub and agent in one process (development)
  token     mint an agent token from a shared secret
  demo      run a seeded demo LDAP directory (slapd) on 127.0.0.1 until Ctrl-C
  loadtest  drive LDAP load (bind, search, group writes) with SLO gates: loadtest ldap --url ...
  check     run post-deploy checks (Nagios output, exit 0/1/2/3): check FILE... | --from-config FILE
  health    ask a hub's /healthz: exit 0 when it answers ok (the image's HEALTHCHECK)
  version   print the version, commit and build date (also --version)

Run "nowconnect <command> -h" for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "cloud":
		err = runCloud(ctx, args[1:], stderr)
	case "premise":
		err = runPremise(ctx, args[1:], stderr)
	case "up":
		err = runUp(ctx, args[1:], stderr)
	case "token":
		err = runToken(args[1:], stdout, stderr)
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "loadtest":
		return runLoadtest(ctx, args[1:], stdout, stderr)
	case "check":
		return runCheck(ctx, args[1:], stdout, stderr)
	case "health":
		return runHealth(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		return runVersion(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "nowconnect: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	return exitStatus(stderr, args[0], err)
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
