package api

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/status"

	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// TestAgentIdentityCheck (attack): who may register as instance i-A. An
// agent certificate only as its own instance; a user's certificate or
// token never; a caller with no credential on trust, and then the log
// says so loudly, naming the instance and the peer, at every registration.
func TestAgentIdentityCheck(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{log: slog.New(slog.NewTextHandler(&buf, nil))}
	type result struct {
		Code   string
		Warned bool
	}
	got := map[string]result{}
	for name, p := range map[string]authn.Principal{
		"agent i-A":        {Name: "agent:i-A", Method: authn.MethodCert, InstanceID: "i-A"},
		"agent i-B as i-A": {Name: "agent:i-B", Method: authn.MethodCert, InstanceID: "i-B"},
		"user certificate": {Name: "alice.example.com", Method: authn.MethodCert},
		"user token":       {Name: "alice@example.com", Method: authn.MethodToken},
		"no credential":    {Name: authn.Anonymous, Method: authn.MethodNone},
	} {
		buf.Reset()
		err := s.checkAgentIdentity(authn.NewContext(context.Background(), p), model.Registration{InstanceID: "i-A", Peer: "127.0.0.1:5555"})
		log := buf.String()
		warned := strings.Contains(log, "AGENT IDENTITY NOT VERIFIED") && strings.Contains(log, "instance_id=i-A") && strings.Contains(log, "peer=127.0.0.1:5555") && strings.Contains(log, "level=WARN")
		got[name] = result{status.Code(err).String(), warned}
	}
	want := map[string]result{
		"agent i-A":        {"OK", false},
		"agent i-B as i-A": {"PermissionDenied", false},
		"user certificate": {"PermissionDenied", false},
		"user token":       {"PermissionDenied", false},
		"no credential":    {"OK", true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("registrations as i-A (-want +got):\n%s", diff)
	}
}
