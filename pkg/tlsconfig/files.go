package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Files name the PEM files of one side of the connection.
type Files struct {
	// CAFile: on a client, the CA that signed the server's certificate
	// (empty = the system roots); on the server, the CA of client
	// certificates, which are then required.
	CAFile string `json:"caFile,omitempty"`
	// CertFile and KeyFile: the server's certificate (required on the
	// server), or a client's certificate for mutual TLS (optional).
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
	// ServerName overrides the name a client verifies (default: the host dialed).
	ServerName string `json:"serverName,omitempty"`
	// Enable turns TLS on for a client that needs no file (system roots).
	Enable bool `json:"enable,omitempty"`
}

// Enabled reports whether any TLS setting is present.
func (f Files) Enabled() bool {
	return f.Enable || f.CAFile != "" || f.CertFile != "" || f.KeyFile != "" || f.ServerName != ""
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("tls configuration")

func (f Files) keyPair() ([]tls.Certificate, error) {
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, fmt.Errorf("%w: certFile and keyFile go together", ErrConfig)
	}
	if f.CertFile == "" {
		return nil, nil
	}
	c, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: certFile/keyFile: %w", ErrConfig, err)
	}
	return []tls.Certificate{c}, nil
}

func (f Files) pool() (*x509.CertPool, error) {
	if f.CAFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: caFile: %w", ErrConfig, err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%w: caFile %s: no PEM certificate", ErrConfig, f.CAFile)
	}
	return p, nil
}

// Server returns the server's configuration: nil when no file is set
// (plaintext), an error when the certificate is missing or unreadable.
func (f Files) Server() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if f.CertFile == "" {
		return nil, fmt.Errorf("%w: the server needs certFile and keyFile", ErrConfig)
	}
	if f.ServerName != "" {
		return nil, fmt.Errorf("%w: serverName is a client setting; the server's name is in its certificate", ErrConfig)
	}
	certs, err := f.keyPair()
	if err != nil {
		return nil, err
	}
	pool, err := f.pool()
	if err != nil {
		return nil, err
	}
	c := &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12}
	if pool != nil {
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// Client returns a client's configuration, nil when no setting is present.
func (f Files) Client() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	certs, err := f.keyPair()
	if err != nil {
		return nil, err
	}
	pool, err := f.pool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: certs, RootCAs: pool, ServerName: f.ServerName, MinVersion: tls.VersionTLS12}, nil
}

// DialOption is the transport credentials a client dials with: TLS when
// configured, plaintext otherwise.
func (f Files) DialOption() (grpc.DialOption, error) {
	c, err := f.Client()
	if err != nil {
		return nil, err
	}
	if c == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(c)), nil
}

// AddClientCA makes server config c also accept client certificates
// signed by the CA in file (PEM): the agents' CA, kept apart from the
// users' (see docs/security.md). Without a users' CA, user certificates
// stay optional (users may present bearer tokens instead).
func AddClientCA(c *tls.Config, file string) error {
	if c == nil {
		return fmt.Errorf("%w: an agent CA needs TLS on the server (certFile, keyFile)", ErrConfig)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("%w: agent CA: %w", ErrConfig, err)
	}
	if c.ClientCAs == nil {
		c.ClientCAs, c.ClientAuth = x509.NewCertPool(), tls.VerifyClientCertIfGiven
	}
	if !c.ClientCAs.AppendCertsFromPEM(b) {
		return fmt.Errorf("%w: agent CA %s: no PEM certificate", ErrConfig, file)
	}
	return nil
}
