package metadataproxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// IdentityDocument is a task-scoped instance identity document.
type IdentityDocument struct {
	InstanceID       string    `json:"instanceId"`
	TaskID           string    `json:"taskId"`
	PrivateIP        string    `json:"privateIp"`
	AvailabilityZone string    `json:"availabilityZone"`
	Region           string    `json:"region"`
	AccountID        string    `json:"accountId,omitempty"`
	HostInstanceID   string    `json:"hostInstanceId,omitempty"`
	ImageID          string    `json:"imageId,omitempty"`
	PendingTime      time.Time `json:"pendingTime"`
	Version          string    `json:"version"`
}

// ErrBadSignature means a document was not signed by the agent's key.
var ErrBadSignature = errors.New("identity document signature does not verify")

// loadOrCreateKey reads the agent's ed25519 signing key, creating it (0600)
// on first start so signatures verify across agent restarts.
func loadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	if b, err := os.ReadFile(path); err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("metadata key %s: not PEM", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("metadata key %s: %w", path, err)
		}
		ek, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("metadata key %s: not ed25519", path)
		}
		return ek, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("metadata key: %w", err)
	}
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("metadata key: %w", err)
	}
	return k, nil
}

// PublicKeyPEM encodes the verification key.
func PublicKeyPEM(k ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ReadPublicKey reads a PEM public key (or the private key file, from
// which it derives the public one).
func ReadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: not PEM", path)
	}
	if blk.Type == "PRIVATE KEY" {
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		if ek, ok := k.(ed25519.PrivateKey); ok {
			return ek.Public().(ed25519.PublicKey), nil
		}
		return nil, fmt.Errorf("%s: not ed25519", path)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: not ed25519", path)
	}
	return ek, nil
}

// VerifyIdentityDocument checks a document against its base64 signature
// and returns the decoded document.
func VerifyIdentityDocument(doc, signature []byte, pub ed25519.PublicKey) (*IdentityDocument, error) {
	sig, err := base64.StdEncoding.DecodeString(string(trimSpace(signature)))
	if err != nil {
		return nil, fmt.Errorf("%w: signature is not base64", ErrBadSignature)
	}
	if !ed25519.Verify(pub, trimSpace(doc), sig) {
		return nil, ErrBadSignature
	}
	var d IdentityDocument
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("identity document: %w", err)
	}
	return &d, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
