package scheduler

import (
	"crypto/tls"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/authz"
)

func TestIsLoopback(t *testing.T) {
	got := map[string]bool{}
	for _, a := range []string{"127.0.0.1:7400", "127.9.9.9:1", "[::1]:7400", "localhost:7400", "0.0.0.0:7400", ":7400", "[::]:7400", "198.18.0.1:7400"} {
		ok, err := isLoopback(a)
		if err != nil {
			t.Fatalf("%s: %v", a, err)
		}
		got[a] = ok
	}
	want := map[string]bool{"127.0.0.1:7400": true, "127.9.9.9:1": true, "[::1]:7400": true, "localhost:7400": true,
		"0.0.0.0:7400": false, ":7400": false, "[::]:7400": false, "198.18.0.1:7400": false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("isLoopback (-want +got):\n%s", diff)
	}
}

// TestExposureRefused: plaintext, or no policy, on an address that is
// not loopback is refused unless Insecure; loopback is the demo's default.
func TestExposureRefused(t *testing.T) {
	pol := &authz.Policy{}
	tc := &tls.Config{}
	log := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name string
		o    Options
		want string // "" = allowed
	}{
		{"loopback plaintext, no policy", Options{Listen: "127.0.0.1:0"}, ""},
		{"all interfaces plaintext", Options{Listen: "0.0.0.0:7400", Policy: pol}, "plaintext is refused"},
		{"all interfaces TLS, no policy", Options{Listen: ":7400", TLS: tc}, "without a policy file"},
		{"all interfaces TLS and policy", Options{Listen: ":7400", TLS: tc, Policy: pol}, ""},
		{"all interfaces plaintext --insecure", Options{Listen: "0.0.0.0:7400", Insecure: true}, ""},
	} {
		err := checkExposure(c.o, log)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// TestNewRefusesPlaintextOnTheNetwork: New itself refuses, before listening.
func TestNewRefusesPlaintextOnTheNetwork(t *testing.T) {
	_, err := New(Options{Listen: "0.0.0.0:0", DataDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("New on 0.0.0.0 without TLS: %v, want a refusal naming --insecure", err)
	}
}
