package authz

import (
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
)

// TestRecordNamesTheJobOfUpdatesAndRollouts: an update, a pause or an undo
// (allowed or refused) is on the job's audit trail (`audit ls --job`),
// and a rollout's record says which action it was.
func TestRecordNamesTheJobOfUpdatesAndRollouts(t *testing.T) {
	for _, c := range []struct {
		name string
		req  any
		want []string
	}{
		{"update", &schedv1.UpdateJobRequest{Id: "j1"}, []string{"job=j1", "method=UpdateJob"}},
		{"pause", &schedv1.RolloutJobRequest{Id: "j1", Action: schedv1.RolloutJobRequest_ACTION_PAUSE}, []string{"job=j1", `message="pause `}},
		{"undo", &schedv1.RolloutJobRequest{Id: "j1", Action: schedv1.RolloutJobRequest_ACTION_UNDO}, []string{"job=j1", `message="undo `}},
	} {
		var b syncBuf
		g := &Guard{c: GuardConfig{Log: slog.New(slog.NewTextHandler(&b, nil))}}
		g.record(t.Context(), authn.Principal{}, "/titus.scheduler.v1.Scheduler/"+map[bool]string{true: "UpdateJob", false: "RolloutJob"}[c.name == "update"],
			Rule{Action: JobUpdate}, &note{app: "billing"}, c.req, nil, status.Error(codes.PermissionDenied, "no"))
		for _, w := range c.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%s: record lacks %s:\n%s", c.name, w, b.String())
			}
		}
	}
}
