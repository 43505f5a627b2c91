package main

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorsAreOneLineWithExitCodes(t *testing.T) {
	opts.socket = "/run/titus-agent/agent.sock"
	type result struct {
		Line string
		Code int
	}
	tests := []struct {
		name string
		err  error
		want result
	}{
		{"invalid spec", status.Error(codes.InvalidArgument, "invalid task spec: owner_email: is required;\nid: is required"),
			result{"invalidargument: invalid task spec: owner_email: is required; id: is required", 1}},
		{"refused by SO_PEERCRED", status.Error(codes.PermissionDenied, "permission denied: caller is neither root nor in the agent's group (uid 1000, gid 1000)"),
			result{"permission denied: caller is neither root nor in the agent's group (uid 1000, gid 1000), refused by the agent at /run/titus-agent/agent.sock", 4}},
		{"socket missing", &cliError{msg: "cannot reach the agent at /x", code: 3}, result{"cannot reach the agent at /x", 3}},
		{"other", errors.New("boom\nbang"), result{"boom bang", 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, result{oneLine(tt.err), exitCode(tt.err)}); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}
