package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"time"
)

// tlsCheck completes a TLS handshake, verifies the chain and the host name, and grades the
// days the server's certificate has left.
type tlsCheck struct {
	addr               string
	conf               *tls.Config // InsecureSkipVerify as configured (verification is ours)
	warnDays, critDays int
}

func parseTLS(f *fields) prober {
	host := f.need("host")
	c := &tlsCheck{addr: hostPort(host, f.port("port", 0)), conf: f.tlsConfig(host, true)}
	c.warnDays = f.integer("warn_days", 30, 0, 3650)
	c.critDays = f.integer("crit_days", 7, 0, 3650)
	if c.critDays > c.warnDays {
		f.errf("crit_days", "crit_days (%d) is above warn_days (%d)", c.critDays, c.warnDays)
	}
	return c
}

func (c *tlsCheck) name() string { return "tls " + c.addr }

func (c *tlsCheck) run(ctx context.Context, r *report) {
	conn, err := dialTCP(ctx, c.addr)
	if err != nil {
		r.crit("connect: %s", r.failed(ctx, err))
		return
	}
	defer conn.Close()
	defer guard(ctx, conn)()
	cs, verr, err := handshake(ctx, conn, c.conf)
	if err != nil {
		r.crit("handshake: %s", r.failed(ctx, err))
		return
	}
	gradeCert(r, cs, verr, c.warnDays, c.critDays)
}

// handshake runs a TLS client handshake over conn. The chain and the host name are
// verified here rather than by crypto/tls, so that a failed verification still yields
// the peer's certificate (to report its expiry): verr is the verification error, nil when
// it passed or conf.InsecureSkipVerify is set; err is a failed handshake.
func handshake(ctx context.Context, conn net.Conn, conf *tls.Config) (cs tls.ConnectionState, verr, err error) {
	cfg := conf.Clone()
	insecure := cfg.InsecureSkipVerify
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(st tls.ConnectionState) error {
		if insecure || len(st.PeerCertificates) == 0 {
			return nil
		}
		opts := x509.VerifyOptions{Roots: conf.RootCAs, DNSName: cfg.ServerName, Intermediates: x509.NewCertPool()}
		for _, ic := range st.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		_, verr = st.PeerCertificates[0].Verify(opts)
		return nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return cs, nil, err
	}
	cs = tc.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return cs, nil, errors.New("the server sent no certificate")
	}
	return cs, verr, nil
}

// gradeCert records the verification outcome and the days left of the leaf certificate.
func gradeCert(r *report, cs tls.ConnectionState, verr error, warnDays, critDays int) {
	leaf := cs.PeerCertificates[0]
	days := time.Until(leaf.NotAfter).Hours() / 24
	r.metric("days", round2(days), "", strconv.Itoa(warnDays)+":", strconv.Itoa(critDays)+":", nil, nil)
	subject := leaf.Subject.CommonName
	if subject == "" && len(leaf.DNSNames) > 0 {
		subject = leaf.DNSNames[0]
	}
	until := leaf.NotAfter.UTC().Format("2006-01-02 15:04 UTC")
	var inv x509.CertificateInvalidError
	switch {
	case days < 0 || (errors.As(verr, &inv) && inv.Reason == x509.Expired && time.Now().After(leaf.NotAfter)):
		r.crit("certificate %q expired %.1f days ago (%s)", subject, -days, until)
		return
	case verr != nil:
		r.crit("certificate %q not trusted: %v", subject, verr)
		return
	}
	what := fmt.Sprintf("%s, certificate %q expires in %.1f days (%s)", tls.VersionName(cs.Version), subject, days, until)
	switch {
	case days < float64(critDays):
		r.crit("%s: under %d days", what, critDays)
	case days < float64(warnDays):
		r.warn("%s: under %d days", what, warnDays)
	default:
		r.ok("%s", what)
	}
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }
