//go:build vmguest

package integration

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

// TestVMMetadataInTask: the host lane's TestMetadataTaskScopedIMDSAndCredentials
// on the production kernel, without its 10,000-connection flood and its
// restart and STS-outage phases (minutes under the guest's emulated CPU).
// Two tasks on the local network provider, systemd scopes on cgroup v2:
// each asks 169.254.169.254 from its own netns (busybox wget inside, the
// AWS SDK's IMDS client and EC2 role provider through the task's netns)
// and gets its own identity, its own role's credentials from STS (moto) and
// the host's answer for an allowlisted path (the IMDS mock, through a proxy
// that records what the host's IMDS is asked). Attacks: A asks for B's
// credentials, replays its token in B, asks for the host's user-data; B,
// which requires IMDSv2, is asked without a token; the host's IMDS must
// see nothing but the allowlisted path.
func TestVMMetadataInTask(t *testing.T) {
	begin(t)
	m := startMetadataAgent(t, "15m")
	e := m.agentEnv
	a := e.spec("task-a", "sh", "-c", "wget -q -O - http://169.254.169.254/latest/meta-data/iam/security-credentials/app-a; echo; "+
		"wget -q -O - http://169.254.169.254/latest/meta-data/ami-id; echo ' ami'; "+
		"wget -q -O - http://169.254.169.254/latest/meta-data/instance-id; echo ' first-answer'; exec sleep 1000")
	a.IamRoleArn = "arn:aws:iam::123456789012:role/app-a"
	b := e.spec("task-b", "sleep", "1000")
	b.IamRoleArn = "arn:aws:iam::123456789012:role/app-b"
	b.MetadataRequireV2 = true
	e.launch(a)
	e.launch(b)
	ta := e.waitState("task-a", stRunning, 60*time.Second)
	tb := e.waitState("task-b", stRunning, 60*time.Second)
	e.waitLog("task-a", "task-a first-answer")
	direct, err := http.Get(m.mock.Endpoint + "/latest/meta-data/ami-id")
	if err != nil {
		t.Fatalf("ami-id from the mock directly: %v", err)
	}
	hostAMI := readAll(direct.Body)
	if logs, _ := e.cli("task", "logs", "task-a"); !strings.Contains(logs, `"AccessKeyId"`) || !strings.Contains(logs, hostAMI+" ami") {
		t.Fatalf("task A's first requests, from inside it: %q; want its credentials and the host's ami-id %s", logs, hostAMI)
	}

	ca, cb := taskHTTP(ta.GetNetwork().GetNetns()), taskHTTP(tb.GetNetwork().GetNetns())
	ca.Timeout, cb.Timeout = 30*time.Second, 30*time.Second // emulated CPU
	ctx := context.Background()
	imdsA := imds.New(imds.Options{HTTPClient: ca})
	out, err := imdsA.GetMetadata(ctx, &imds.GetMetadataInput{Path: "local-ipv4"})
	if err != nil || readAll(out.Content) != ta.GetNetwork().GetIpv4() {
		t.Fatalf("sdk imds local-ipv4 (v2 flow): %v", err)
	}
	creds, err := ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = imdsA }).Retrieve(ctx)
	if err != nil || creds.AccessKeyID == "" {
		t.Fatalf("ec2rolecreds: %v", err)
	}
	stsc := sts.New(sts.Options{Region: "us-east-1", BaseEndpoint: aws.String(m.moto.Endpoint), Credentials: aws.NewCredentialsCache(staticProvider{creds})})
	who, err := stsc.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatalf("GetCallerIdentity with the task's credentials: %v", err)
	}
	if arn := aws.ToString(who.Arn); !strings.Contains(arn, "assumed-role/app-a/task-a") {
		t.Fatalf("caller = %s, want task A's assumed role", arn)
	}

	// B requires v2: refused without a token, answered with its own,
	// refused with A's; over IPv6 too.
	if code, _ := get(t, cb, "/latest/meta-data/instance-id", nil); code != 401 {
		t.Fatalf("v1 request to a require-v2 task: %d, want 401", code)
	}
	_, tokA := putToken(t, ca, "60", nil)
	code, tokB := putToken(t, cb, "60", nil)
	if code != 200 {
		t.Fatalf("token for B: %d", code)
	}
	if code, _ := get(t, cb, "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": tokA}); code != 401 {
		t.Fatalf("A's token replayed in B: %d, want 401", code)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://[fd00:ec2::254]/latest/meta-data/instance-id", nil)
	req.Header.Set("X-aws-ec2-metadata-token", tokB)
	resp, err := cb.Do(req)
	if err != nil {
		t.Fatalf("IPv6 metadata address in B: %v", err)
	}
	if body := readAll(resp.Body); resp.StatusCode != 200 || body != "task-b" {
		t.Fatalf("IPv6 instance-id in B: %d %q", resp.StatusCode, body)
	}
	// Inside B, busybox: the v2 flow gets B's credentials.
	v2 := `tok=$(printf 'PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n' | nc -w 3 169.254.169.254 80 | sed '1,/^\r$/d') && ` +
		`wget -q -O - --header "X-aws-ec2-metadata-token: $tok" http://169.254.169.254/latest/meta-data/iam/security-credentials/app-b`
	if out, code := e.exec("task-b", "sh", "-c", v2); code != 0 || !strings.Contains(out, `"AccessKeyId"`) {
		t.Fatalf("v2 flow inside B: %d %q", code, out)
	}

	// A cannot reach B's credentials, nor the host's user-data or its own
	// instance credentials.
	for _, p := range []string{
		"/latest/meta-data/iam/security-credentials/app-b",
		"/latest/meta-data/iam/security-credentials/app-a/../app-b",
		"/latest/meta-data/iam/security-credentials/%61pp-b",
		"/latest/user-data",
		"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
	} {
		if code, body := get(t, ca, p, nil); code == 200 || strings.Contains(body, "AccessKeyId") {
			t.Fatalf("A got %s: %d %q", p, code, body)
		}
	}
	for _, p := range m.proxy.seen() {
		if p != "/latest/api/token" && p != "/latest/meta-data/ami-id" {
			t.Fatalf("the host's IMDS saw %s", p)
		}
	}

	for _, id := range []string{"task-a", "task-b"} {
		if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id, GracePeriodSeconds: 1}); err != nil {
			t.Fatal(err)
		}
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
	e.assertNoNetworkLeftovers()
}
