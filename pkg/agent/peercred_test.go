package agent

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPeerCredsAllowed(t *testing.T) {
	self := int32(os.Getpid())
	tests := []struct {
		name string
		gid  int
		cred unix.Ucred
		want bool
	}{
		{"root always", -1, unix.Ucred{Uid: 0, Gid: 0, Pid: self}, true},
		{"root only refuses others", -1, unix.Ucred{Uid: 1000, Gid: 1000, Pid: self}, false},
		{"primary group", 4242, unix.Ucred{Uid: 1000, Gid: 4242, Pid: self}, true},
		{"wrong group", 4242, unix.Ucred{Uid: 1000, Gid: 1000, Pid: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (PeerCreds{GID: tt.gid}).allowed(&tt.cred); got != tt.want {
				t.Fatalf("allowed = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConfigRefusesUnknownKeysAndBadValues(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":  "sokcet: /tmp/x\n",
		"bad provider": "network:\n  provider: magic\n",
		"bad cidr":     "network:\n  provider: local\n  local:\n    cidr: 10.0.0.0/33\n",
		"bad level":    "logLevel: loud\n",
	} {
		p := dir + "/c.yaml"
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadConfig(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := LoadConfig(""); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}
