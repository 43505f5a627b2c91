package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// stsRecorder stands between the agent and moto's STS and keeps the form
// of every request the agent sends.
type stsRecorder struct {
	mu    sync.Mutex
	forms []url.Values
	url   string
}

func startSTSRecorder(t *testing.T, upstream string) *stsRecorder {
	u, _ := url.Parse(upstream)
	rec := &stsRecorder{}
	rp := httputil.NewSingleHostReverseProxy(u)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if form, err := url.ParseQuery(string(body)); err == nil {
			rec.mu.Lock()
			rec.forms = append(rec.forms, form)
			rec.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	rec.url = "http://" + l.Addr().String()
	return rec
}

func (r *stsRecorder) assumeRoles() []url.Values {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []url.Values
	for _, f := range r.forms {
		if f.Get("Action") == "AssumeRole" {
			out = append(out, f)
		}
	}
	return out
}

// The confused deputy, agent side: every AssumeRole the agent makes for a
// task says on whose behalf (application, job, owner, task as session tags,
// the task as SourceIdentity), so a role's trust policy can require them;
// moto accepts the call and the task gets its credentials.
func TestMetadataAssumeRoleCarriesSessionTags(t *testing.T) {
	begin(t)
	moto := testenv.StartMoto(t)
	rec := startSTSRecorder(t, moto.Endpoint)
	ln := newLocalNet(t)
	cfg := ln.config + fmt.Sprintf(`metadata:
  enabled: true
  stsEndpoint: %s
  region: us-east-1
  accessKeyID: testing
  secretAccessKey: testing
`, rec.url)
	e := newAgentEnvConfig(t, cfg)
	s := e.spec("billing-job.0.1", "sh", "-c", "wget -q -O - http://169.254.169.254/latest/meta-data/iam/security-credentials/billing-task; echo; exec sleep 1000")
	s.IamRoleArn = "arn:aws:iam::123456789012:role/billing-task"
	s.OwnerEmail = "team+billing@example.com"
	s.Labels = map[string]string{task.LabelApplication: "billing", task.LabelJobID: "billing-job", task.LabelSubmitter: "alice@example.com"}
	e.launch(s)
	e.waitState("billing-job.0.1", stRunning, 30*time.Second)
	e.waitLog("billing-job.0.1", `"AccessKeyId"`)

	calls := rec.assumeRoles()
	if len(calls) == 0 {
		t.Fatalf("no AssumeRole went through the recorder\nagent log:\n%s", e.agent.Log())
	}
	got := map[string]string{}
	for k, v := range calls[0] {
		if k == "RoleArn" || k == "RoleSessionName" || k == "SourceIdentity" || strings.HasPrefix(k, "Tags.") {
			got[k] = v[0]
		}
	}
	want := map[string]string{
		"RoleArn": "arn:aws:iam::123456789012:role/billing-task", "RoleSessionName": "billing-job.0.1",
		"SourceIdentity":    "billing-job.0.1",
		"Tags.member.1.Key": "titus-application", "Tags.member.1.Value": "billing",
		"Tags.member.2.Key": "titus-job", "Tags.member.2.Value": "billing-job",
		"Tags.member.3.Key": "titus-submitter", "Tags.member.3.Value": "alice@example.com",
		"Tags.member.4.Key": "titus-task", "Tags.member.4.Value": "billing-job.0.1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("AssumeRole as sent (-want +got):\n%s", diff)
	}
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "billing-job.0.1", GracePeriodSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("billing-job.0.1")
	e.assertNoLeftovers()
}
