package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Agent is the configuration of the premise agent.
type Agent struct {
	// CloudURLs are the hubs' tunnel endpoints, ws:// or wss://
	// (e.g. "wss://cloud.example.com/tunnel"); the agent connects to each.
	// A single URL may be given with the key cloud_url. Required, env
	// NC_CLOUD_URL (comma-separated).
	CloudURLs []string `toml:"cloud_urls" alias:"cloud_url"`
	// AgentID identifies the agent (the JWT's sub). Required, env NC_AGENT_ID.
	AgentID string `toml:"agent_id"`
	// TokenFile holds the agent's JWT (surrounding space trimmed). Default
	// none, env NC_TOKEN_FILE.
	TokenFile string `toml:"token_file" path:"file"`
	// Token is the JWT, from NC_TOKEN or read from TokenFile by Load and
	// ApplyEnv; never in the file itself, never to be logged. Required.
	Token string `toml:"-"`
	// Connectors are the targets this agent serves. At least one, env
	// NC_CONNECTORS ("name=host:port,...", an entry may add
	// ";proxy=v2": "name=host:port;proxy=v2").
	Connectors []Connector `toml:"connectors"`
	// DialTimeout bounds dialing a target. Default 5s, env NC_DIAL_TIMEOUT.
	DialTimeout Duration `toml:"dial_timeout"`
	// CAFile is an extra PEM CA bundle trusted for wss://. Default none, env
	// NC_CA_FILE.
	CAFile string `toml:"ca_file" path:"file"`
	// InsecureSkipVerify skips TLS verification of the hub (tests only).
	// Default false.
	InsecureSkipVerify bool `toml:"insecure_skip_verify"`
	// ReconnectMin is the first reconnect backoff. Default 500ms.
	ReconnectMin Duration `toml:"reconnect_min"`
	// ReconnectMax caps the reconnect backoff. Default 30s, at least
	// ReconnectMin.
	ReconnectMax Duration `toml:"reconnect_max"`
	// StreamWindow is the credit window every stream starts with, in bytes,
	// granted to the hub (hub→agent). Default 262144, range 16384..67108864.
	StreamWindow int `toml:"stream_window"`
	// MaxStreamWindow is the most a stream's window grows to while the hub
	// is limited by credit (protocol 2). Default 16777216, range
	// StreamWindow..1073741824.
	MaxStreamWindow int `toml:"max_stream_window"`
	// TunnelWindow bounds the hub→agent bytes in flight over all the streams
	// of one tunnel (protocol 2). Default 67108864, range
	// MaxStreamWindow..1073741824.
	TunnelWindow int `toml:"tunnel_window"`
	// TargetSendBuffer is SO_SNDBUF, in bytes, of every connection to a
	// target. Default 0: the kernel's autotuning (up to 4 MiB per socket).
	// A small value bounds the kernel memory a slow target costs; what it
	// has not read waits in the agent instead, within stream_window and
	// tunnel_window. Range 0 or 4096..1073741824.
	TargetSendBuffer int `toml:"target_send_buffer"`
	// Tunnels is how many WebSocket tunnels the agent keeps to its hub; new
	// streams are spread over them, and one tunnel's loss takes only its
	// own streams. Default 2, range 1..16, env NC_TUNNELS.
	Tunnels int `toml:"tunnels"`
	// PingInterval is how often a tunnel is pinged. Default 2s.
	PingInterval Duration `toml:"ping_interval"`
	// PingTimeout drops a tunnel silent for this long: a frozen hub is
	// detected within about this. Default 6s, must be greater than
	// PingInterval.
	PingTimeout Duration `toml:"ping_timeout"`
	// MetricsListen is a host:port serving the agent's /metrics. Default
	// empty: no metrics endpoint.
	MetricsListen string `toml:"metrics_listen"`
	// ShutdownGrace is how long a stopping agent lets streams drain. Default
	// 30s.
	ShutdownGrace Duration `toml:"shutdown_grace"`
	// Log configures logging.
	Log Log `toml:"log"`
}

// Connector is a named target the agent dials for the hub.
type Connector struct {
	// Name is the connector name listeners refer to. Required, unique.
	Name string `toml:"name"`
	// Target is the host:port to dial. Required.
	Target string `toml:"target"`
	// ProxyProtocol is the PROXY protocol header the target expects in
	// front of every connection: "v2" (the client's address as the hub saw
	// it; e.g. slapd on a pldap:// listener), or "" for none. Default "".
	ProxyProtocol string `toml:"proxy_protocol"`
}

// DefaultAgent returns an agent configuration with every default filled in.
func DefaultAgent() *Agent {
	return &Agent{
		DialTimeout:     Duration(5 * time.Second),
		ReconnectMin:    Duration(500 * time.Millisecond),
		ReconnectMax:    Duration(30 * time.Second),
		StreamWindow:    262144,
		MaxStreamWindow: 16 << 20,
		TunnelWindow:    64 << 20,
		Tunnels:         2,
		PingInterval:    Duration(2 * time.Second),
		PingTimeout:     Duration(6 * time.Second),
		ShutdownGrace:   Duration(30 * time.Second),
		Log:             Log{Level: "info"},
	}
}

// ApplyEnv overrides the agent's settings with the environment, read through
// getenv (os.Getenv in production); an empty variable is ignored:
//
//	NC_CLOUD_URL     comma-separated ws:// or wss:// URLs
//	NC_AGENT_ID      agent id
//	NC_TOKEN         the JWT itself
//	NC_TOKEN_FILE    a file holding the JWT (read now, trimmed)
//	NC_CONNECTORS    "addomain=openldap:389,other=10.0.0.5:636;proxy=v2"
//	NC_DIAL_TIMEOUT  "5s"
//	NC_CA_FILE       extra CA bundle for wss://
//	NC_TUNNELS       tunnels to the hub, 1..16
//
// A malformed variable is not applied; all of them are reported in one Errors
// whose keys are the variable names. Call Validate afterwards.
func (a *Agent) ApplyEnv(getenv func(string) string) error {
	r := &reporter{}
	a.applyEnv(getenv, r)
	return r.result()
}

func (a *Agent) applyEnv(getenv func(string) string, r *reporter) {
	env := func(k string) string { return strings.TrimSpace(getenv(k)) }
	if v := env("NC_CLOUD_URL"); v != "" {
		var urls []string
		ok := true
		for _, u := range strings.Split(v, ",") {
			if u = strings.TrimSpace(u); u == "" {
				continue
			}
			if err := checkURL(u, "ws", "wss"); err != nil {
				r.add("NC_CLOUD_URL", "%v", err)
				ok = false
			}
			urls = append(urls, u)
		}
		if len(urls) == 0 {
			r.add("NC_CLOUD_URL", "no URL in %q", v)
		} else if ok {
			a.CloudURLs = urls
		}
	}
	if v := env("NC_AGENT_ID"); v != "" {
		a.AgentID = v
	}
	tok, tokFile := env("NC_TOKEN"), env("NC_TOKEN_FILE")
	switch {
	case tok != "" && tokFile != "":
		r.add("NC_TOKEN_FILE", "NC_TOKEN is set too; set only one of them")
	case tok != "":
		a.Token, a.TokenFile = tok, ""
	case tokFile != "":
		if t, err := readToken(tokFile); err != nil {
			r.add("NC_TOKEN_FILE", "%v", err)
		} else {
			a.Token, a.TokenFile = t, tokFile
		}
	}
	if v := env("NC_CONNECTORS"); v != "" {
		if cs, errs := parseConnectors(v); len(errs) > 0 {
			for _, err := range errs {
				r.add("NC_CONNECTORS", "%v", err)
			}
		} else {
			a.Connectors = cs
		}
	}
	if v := env("NC_DIAL_TIMEOUT"); v != "" {
		var d Duration
		if err := d.UnmarshalText([]byte(v)); err != nil {
			r.add("NC_DIAL_TIMEOUT", "%v", err)
		} else if d <= 0 {
			r.add("NC_DIAL_TIMEOUT", "must be greater than 0s")
		} else {
			a.DialTimeout = d
		}
	}
	if v := env("NC_TUNNELS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			r.add("NC_TUNNELS", "%q is not a number", v)
		} else {
			a.Tunnels = n
		}
	}
	if v := env("NC_CA_FILE"); v != "" {
		if err := checkFile(v); err != nil {
			r.add("NC_CA_FILE", "%v", err)
		} else {
			a.CAFile = v
		}
	}
}

// parseConnectors parses "name=host:port,name2=host:port;proxy=v2"; empty
// entries (a trailing comma) are skipped. After the target an entry may
// carry ";key=value" options: proxy (Connector.ProxyProtocol).
func parseConnectors(v string) ([]Connector, []error) {
	var cs []Connector
	var errs []error
	seen := map[string]bool{}
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		name, target, ok := strings.Cut(e, "=")
		opts := strings.Split(target, ";")
		target = opts[0]
		name, target = strings.TrimSpace(name), strings.TrimSpace(target)
		switch {
		case !ok || name == "" || target == "":
			errs = append(errs, fmt.Errorf("bad entry %q: want name=host:port", e))
			continue
		case seen[name]:
			errs = append(errs, fmt.Errorf("connector %q listed twice", name))
			continue
		}
		if err := checkHostPort(target, true); err != nil {
			errs = append(errs, fmt.Errorf("connector %q: %v", name, err))
			continue
		}
		c := Connector{Name: name, Target: target}
		if err := parseConnectorOptions(&c, opts[1:]); err != nil {
			errs = append(errs, fmt.Errorf("connector %q: %v", name, err))
			continue
		}
		seen[name] = true
		cs = append(cs, c)
	}
	if len(cs) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("no connector in %q", v))
	}
	return cs, errs
}

// parseConnectorOptions applies the ";key=value" options of an
// NC_CONNECTORS entry (split at ';', the target left out) to c.
func parseConnectorOptions(c *Connector, opts []string) error {
	for _, o := range opts {
		o = strings.TrimSpace(o)
		k, v, ok := strings.Cut(o, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case o == "":
			return fmt.Errorf("empty option after ';'")
		case !ok:
			return fmt.Errorf("option %q: want key=value", o)
		case k != "proxy":
			return fmt.Errorf("unknown option %q (known: proxy)", k)
		case v != "v2":
			return fmt.Errorf("proxy: unknown value %q (want v2)", v)
		}
		c.ProxyProtocol = v
	}
	return nil
}

// ReadTokenFile reads an agent token file as loading the configuration
// does: surrounding space trimmed, an empty file an error naming it. The
// agent calls it before every connection attempt, so a token rotated in
// place is used without a restart.
func ReadTokenFile(path string) (string, error) { return readToken(path) }

// readToken reads a token file and trims it; an empty file is an error.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fileError(path, err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file is empty: %s", path)
	}
	return t, nil
}

// checkFile reports whether path names a readable regular file.
func checkFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fileError(path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fileError(path, err)
	}
	if st.IsDir() {
		return fmt.Errorf("is a directory, not a file: %s", path)
	}
	return nil
}

// fileError words a failure to open a referenced file.
func fileError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("file not found: %s", path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("file not readable: %s", path)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("cannot read %s: %v", path, pe.Err)
	}
	return fmt.Errorf("cannot read %s: %v", path, err)
}

// checkHostPort checks "host:port"; needHost rejects an empty host (dial
// targets), and a dial target needs a port other than 0.
func checkHostPort(s string, needHost bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	if needHost && host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	p, err := parsePort(port)
	if err != nil || (needHost && p == 0) {
		return fmt.Errorf("%q has a bad port", s)
	}
	return nil
}
