package tlsconfig

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigErrorsNameTheField(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.pem")
	tests := []struct {
		name  string
		files Files
		build func(Files) error
		want  string
	}{
		{"server without certificate", Files{CAFile: missing}, func(f Files) error { _, err := f.Server(); return err }, "the server needs certFile and keyFile"},
		{"certificate without key", Files{CertFile: missing}, func(f Files) error { _, err := f.Client(); return err }, "certFile and keyFile go together"},
		{"unreadable CA", Files{CAFile: missing}, func(f Files) error { _, err := f.Client(); return err }, "caFile"},
		{"server name on the server", Files{CertFile: missing, KeyFile: missing, ServerName: "sched"}, func(f Files) error { _, err := f.Server(); return err }, "serverName is a client setting"},
		{"unreadable key pair", Files{CertFile: missing, KeyFile: missing}, func(f Files) error { _, err := f.Server(); return err }, "certFile/keyFile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.build(tt.files)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrConfig mentioning %q", err, tt.want)
			}
		})
	}
}

func TestNoFilesIsPlaintext(t *testing.T) {
	if c, err := (Files{}).Server(); c != nil || err != nil {
		t.Fatalf("Server() = %v, %v; want nil, nil", c, err)
	}
	if c, err := (Files{}).Client(); c != nil || err != nil {
		t.Fatalf("Client() = %v, %v; want nil, nil", c, err)
	}
	if c, err := (Files{Enable: true}).Client(); c == nil || err != nil {
		t.Fatalf("Client() with Enable = %v, %v; want a config using the system roots", c, err)
	}
}
