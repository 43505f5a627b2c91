// Package authntest makes the credentials tests need: a certificate
// authority issuing client and server certificates, and a token issuer
// with its JWKS. Keys are generated per test; nothing is fetched.
package authntest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

var serial atomic.Int64

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// PEM is the CA certificate.
	PEM []byte
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// NewCA makes a self-signed CA valid for an hour either side of now.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	k := ecKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: c, Key: k, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Leaf describes a certificate to issue.
type Leaf struct {
	CN     string
	Emails []string
	URIs   []string
	DNS    []string
	IPs    []net.IP
	// Usage defaults to client authentication.
	Usage x509.ExtKeyUsage
}

// Issued is a certificate and its key.
type Issued struct {
	Cert              *x509.Certificate
	CertPEM, KeyPEM   []byte
	CertFile, KeyFile string
}

// Issue signs a leaf certificate; with dir set, it also writes
// <dir>/<CN>.pem and <dir>/<CN>-key.pem.
func (ca *CA) Issue(t testing.TB, l Leaf, dir string) Issued {
	t.Helper()
	k := ecKey(t)
	now := time.Now()
	usage := l.Usage
	if usage == 0 {
		usage = x509.ExtKeyUsageClientAuth
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: l.CN}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, EmailAddresses: l.Emails, DNSNames: l.DNS, IPAddresses: l.IPs}
	for _, s := range l.URIs {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &k.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	out := Issued{Cert: c, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})}
	if dir != "" {
		out.CertFile, out.KeyFile = filepath.Join(dir, l.CN+".pem"), filepath.Join(dir, l.CN+"-key.pem")
		WriteFile(t, out.CertFile, out.CertPEM)
		WriteFile(t, out.KeyFile, out.KeyPEM)
	}
	return out
}

// WriteFile writes b to path (0600) or fails the test.
func WriteFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Issuer signs tokens with an RSA and an EC key.
type Issuer struct {
	URL string
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
}

// NewIssuer makes an issuer named url.
func NewIssuer(t testing.TB, url string) *Issuer {
	t.Helper()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &Issuer{URL: url, rsa: rk, ec: ecKey(t)}
}

// JWKS is the issuer's public key set (kids "rsa" and "ec").
func (i *Issuer) JWKS(t testing.TB) []byte {
	t.Helper()
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &i.rsa.PublicKey, KeyID: "rsa", Algorithm: string(jose.RS256), Use: "sig"},
		{Key: &i.ec.PublicKey, KeyID: "ec", Algorithm: string(jose.ES256), Use: "sig"},
	}}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Token is what Mint signs.
type Token struct {
	// Alg is RS256 (default) or ES256; KeyID defaults to the key's kid.
	Alg      jose.SignatureAlgorithm
	KeyID    string
	Issuer   string // default: the issuer's URL
	Audience []string
	Expiry   time.Time // zero: no exp claim
	Claims   map[string]any
}

// Mint signs a token.
func (i *Issuer) Mint(t testing.TB, tok Token) string {
	t.Helper()
	alg, key, kid := jose.RS256, any(i.rsa), "rsa"
	if tok.Alg == jose.ES256 {
		alg, key, kid = jose.ES256, i.ec, "ec"
	}
	if tok.KeyID != "" {
		kid = tok.KeyID
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	std := jwt.Claims{Issuer: tok.Issuer, Audience: tok.Audience, IssuedAt: jwt.NewNumericDate(time.Now())}
	if std.Issuer == "" {
		std.Issuer = i.URL
	}
	if !tok.Expiry.IsZero() {
		std.Expiry = jwt.NewNumericDate(tok.Expiry)
	}
	s, err := jwt.Signed(sig).Claims(std).Claims(tok.Claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}
