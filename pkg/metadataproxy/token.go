package metadataproxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"time"
)

// tokens issues and checks IMDSv2 session tokens. A token names the task it
// was issued to and its expiry, signed with a key made at agent start.
type tokens struct{ key []byte }

func newTokens() (*tokens, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	return &tokens{key: k}, nil
}

var errBadToken = errors.New("invalid or expired metadata token")

func (t *tokens) issue(taskID string, ttl time.Duration, now time.Time) string {
	var exp [8]byte
	binary.BigEndian.PutUint64(exp[:], uint64(now.Add(ttl).Unix()))
	payload := append(exp[:], taskID...)
	mac := hmac.New(sha256.New, t.key)
	mac.Write(payload)
	return base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (t *tokens) check(tok, taskID string, now time.Time) error {
	p, s, ok := strings.Cut(tok, ".")
	if !ok || len(tok) > 512 {
		return errBadToken
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p)
	sig, err2 := base64.RawURLEncoding.DecodeString(s)
	if err1 != nil || err2 != nil || len(payload) < 8 {
		return errBadToken
	}
	mac := hmac.New(sha256.New, t.key)
	mac.Write(payload)
	if !hmac.Equal(mac.Sum(nil), sig) {
		return errBadToken
	}
	if string(payload[8:]) != taskID {
		return errBadToken
	}
	if now.Unix() > int64(binary.BigEndian.Uint64(payload[:8])) {
		return errBadToken
	}
	return nil
}
