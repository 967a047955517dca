package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// Signing methods, by key kind.
const (
	algHS256 = "HS256"
)

var (
	rsaAlgs = []string{"RS256", "RS384", "RS512"}
	ecAlgs  = []string{"ES256", "ES384", "ES512"}
)

// pubKey is one verification key: from a PEM file (kid empty) or from a JWKS.
type pubKey struct {
	kid string // JWKS "kid"; empty for PEM keys
	alg string // JWKS "alg" restriction; empty = any method of the key's kind
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

// fits reports whether k may verify a token signed with method alg.
func (k pubKey) fits(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch key := k.key.(type) {
	case *rsa.PublicKey:
		return alg == "RS256" || alg == "RS384" || alg == "RS512"
	case *ecdsa.PublicKey:
		return ecAlgFor(key.Curve) == alg
	}
	return false
}

// ecAlgFor names the ES method that goes with a curve ("" if none).
func ecAlgFor(c elliptic.Curve) string {
	switch c {
	case elliptic.P256():
		return "ES256"
	case elliptic.P384():
		return "ES384"
	case elliptic.P521():
		return "ES512"
	}
	return ""
}

// algs lists the methods k may verify.
func (k pubKey) algs() []string {
	if k.alg != "" {
		return []string{k.alg}
	}
	switch key := k.key.(type) {
	case *rsa.PublicKey:
		return rsaAlgs
	case *ecdsa.PublicKey:
		if a := ecAlgFor(key.Curve); a != "" {
			return []string{a}
		}
	}
	return nil
}

var errNoPEM = errors.New("no PEM block found")

// parsePublicKeys reads every PEM block of data: "PUBLIC KEY" (PKIX), "RSA PUBLIC KEY"
// (PKCS #1) or "CERTIFICATE" (its subject key). Errors never quote data.
func parsePublicKeys(data []byte) ([]pubKey, error) {
	var keys []pubKey
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("PEM block %d is a private key; give the public key", n)
			}
			return nil, fmt.Errorf("PEM block %d: unsupported type (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)", n)
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block %d (%s): cannot parse", n, block.Type)
		}
		k, err := checkKey(key)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d (%s): %w", n, block.Type, err)
		}
		keys = append(keys, pubKey{key: k})
	}
	if len(keys) == 0 {
		return nil, errNoPEM
	}
	return keys, nil
}

// checkKey accepts RSA keys and ECDSA keys on P-256, P-384 and P-521.
func checkKey(key any) (any, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N == nil || k.N.BitLen() < 2048 {
			return nil, errors.New("RSA key shorter than 2048 bits")
		}
		return k, nil
	case *ecdsa.PublicKey:
		if ecAlgFor(k.Curve) == "" {
			return nil, errors.New("unsupported elliptic curve")
		}
		return k, nil
	}
	return nil, fmt.Errorf("unsupported key type %T (want RSA or ECDSA)", key)
}
