package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// secretsBed is moto with IAM enforced: an agent user that may only
// assume roles, tenant A's role that may read secrets, tenant B's role
// that may not, and tenant A's secrets with random values.
type secretsBed struct {
	moto                *testenv.Moto
	agentKey, agentSec  string
	roleA, roleB        string
	smARN, cfgARN       string
	ssmName             string
	password, cfg, tokn string // the values
	whole               string // the whole JSON secret
}

func rnd(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func sha(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

func startSecretsBed(t *testing.T) *secretsBed {
	t.Helper()
	b := &secretsBed{moto: testenv.StartMoto(t), password: rnd("pw-"), cfg: rnd("cfg-"), tokn: rnd("tok-")}
	b.whole = fmt.Sprintf(`{"user":"app","password":%q}`, b.password)
	ctx := context.Background()
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", "")}
	ic := iam.NewFromConfig(cfg, func(o *iam.Options) { o.BaseEndpoint = aws.String(b.moto.Endpoint) })
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(ic.CreateUser(ctx, &iam.CreateUserInput{UserName: aws.String("titus-agent")}))
	must(ic.PutUserPolicy(ctx, &iam.PutUserPolicyInput{UserName: aws.String("titus-agent"), PolicyName: aws.String("assume"),
		PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"],"Resource":"*"}]}`)}))
	key, err := ic.CreateAccessKey(ctx, &iam.CreateAccessKeyInput{UserName: aws.String("titus-agent")})
	if err != nil {
		t.Fatal(err)
	}
	b.agentKey, b.agentSec = aws.ToString(key.AccessKey.AccessKeyId), aws.ToString(key.AccessKey.SecretAccessKey)
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}]}`
	for name, policy := range map[string]string{
		// moto checks identity policies by action only (Resource "*"):
		// tenant A may read secrets and parameters, tenant B parameters only.
		"tenant-a": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["secretsmanager:GetSecretValue","ssm:GetParameter"],"Resource":"*"}]}`,
		"tenant-b": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ssm:GetParameter"],"Resource":"*"}]}`,
	} {
		r, err := ic.CreateRole(ctx, &iam.CreateRoleInput{RoleName: aws.String(name), AssumeRolePolicyDocument: aws.String(trust)})
		if err != nil {
			t.Fatal(err)
		}
		must(ic.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(name), PolicyName: aws.String("secrets"), PolicyDocument: aws.String(policy)}))
		if name == "tenant-a" {
			b.roleA = aws.ToString(r.Role.Arn)
		} else {
			b.roleB = aws.ToString(r.Role.Arn)
		}
	}
	sm := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) { o.BaseEndpoint = aws.String(b.moto.Endpoint) })
	out, err := sm.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("tenant-a/db"), SecretString: aws.String(b.whole)})
	if err != nil {
		t.Fatal(err)
	}
	b.smARN = aws.ToString(out.ARN)
	out, err = sm.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("tenant-a/cfg"), SecretString: aws.String(b.cfg)})
	if err != nil {
		t.Fatal(err)
	}
	b.cfgARN = aws.ToString(out.ARN)
	b.ssmName = "/tenant-a/token"
	sc := ssm.NewFromConfig(cfg, func(o *ssm.Options) { o.BaseEndpoint = aws.String(b.moto.Endpoint) })
	must(sc.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String(b.ssmName), Value: aws.String(b.tokn), Type: ssmtypes.ParameterTypeSecureString}))
	// From here on moto checks every request's signature and IAM policy,
	// and records every request (to see whose keys signed them).
	b.motoAPI(t, "reset-auth", "0")
	b.motoAPI(t, "recorder/start-recording", "")
	return b
}

func (b *secretsBed) motoAPI(t *testing.T, path, body string) string {
	t.Helper()
	method := http.MethodPost
	if strings.HasPrefix(path, "recorder/download") || path == "data.json" {
		method = http.MethodGet
	}
	req, _ := http.NewRequest(method, b.moto.Endpoint+"/moto-api/"+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("moto-api %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("moto-api %s: %s %s", path, resp.Status, out)
	}
	return string(out)
}

// signers are the access key ids that signed the recorded requests with
// X-Amz-Target target (e.g. secretsmanager.GetSecretValue).
func (b *secretsBed) signers(t *testing.T, target string) []string {
	t.Helper()
	rec := b.motoAPI(t, "recorder/download-recording", "")
	cred := regexp.MustCompile(`Credential=([A-Z0-9]+)/`)
	var keys []string
	for _, line := range strings.Split(rec, "\n") {
		var e struct {
			Headers map[string]string `json:"headers"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Headers["X-Amz-Target"] != target {
			continue
		}
		if m := cred.FindStringSubmatch(e.Headers["Authorization"]); m != nil {
			keys = append(keys, m[1])
		}
	}
	return keys
}

// roleOfKey is the role whose STS session issued access key id key (from
// moto's own records), or "".
func (b *secretsBed) roleOfKey(t *testing.T, key string) string {
	t.Helper()
	data := b.motoAPI(t, "data.json", "")
	// Each assumed role is recorded with its access_key_id and role_arn.
	re := regexp.MustCompile(`"access_key_id": ?"` + key + `"[^}]*?"role_arn": ?"([^"]+)"|"role_arn": ?"([^"]+)"[^}]*?"access_key_id": ?"` + key + `"`)
	if m := re.FindStringSubmatch(data); m != nil {
		return m[1] + m[2]
	}
	return ""
}

func TestSecretsFromTheTasksOwnRole(t *testing.T) {
	begin(t)
	bed := startSecretsBed(t)
	sched := startSchedulerProc(t)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	ln := newLocalNet(t)
	cfg := ln.config + fmt.Sprintf(`scheduler:
  address: %q
  instanceID: host-s
  instanceType: sim
  zone: us-east-1a
metadata:
  enabled: true
  stsEndpoint: %s
  region: us-east-1
  accessKeyID: %s
  secretAccessKey: %s
secrets:
  dir: {{DIR}}/secrets
  endpoint: %s
`, sched.addr, bed.moto.Endpoint, bed.agentKey, bed.agentSec, bed.moto.Endpoint)
	e := &agentEnv{t: t, ctd: testenv.StartContainerd(t), reg: reg, image: image}
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client
	events := e.watch()
	secretsDir := filepath.Join(e.dir, "secrets")

	// Tenant A's service job: its secrets as env and as files. The task
	// checks them against their hashes, so no value is in its spec or its
	// output.
	check := fmt.Sprintf(`set -e
test "$(printf %%s "$DB_PASSWORD" | sha256sum | cut -d' ' -f1)" = %s && echo ENV-OK
test "$(sha256sum < /run/secrets/db | cut -d' ' -f1)" = %s && echo FILE-OK
test "$(sha256sum < /run/secrets/app/token | cut -d' ' -f1)" = %s && echo SSM-OK
test "$(sha256sum < /run/secrets/conf/app.cfg | cut -d' ' -f1)" = %s && echo PATH-OK
echo "MODES $(stat -c '%%a:%%u' /run/secrets/db /run/secrets/app /run/secrets/app/token | tr '\n' ' ')"
if echo x 2>/dev/null > /run/secrets/db || touch /run/secrets/new 2>/dev/null; then echo WRITABLE; else echo RO-OK; fi
grep -q ' /run/secrets tmpfs ro,' /proc/mounts && echo MOUNT-OK
exec sleep 1000`, sha(bed.password), sha(bed.whole), sha(bed.tokn), sha(bed.cfg))
	jobA := sched.submit(fmt.Sprintf(`name: tenant-a
ownerEmail: a@example.com
application: tenant-a
service: {min: 1, desired: 1, max: 1}
task:
  image: %s
  command: [sh, -c, %q]
  killGracePeriodSeconds: 1
  resources: {cpuMillicores: 500, memoryMib: 64}
  iamRoleArn: %s
  secrets:
    - {name: DB_PASSWORD, from: "%s:password", as: env}
    - {name: db, from: %q}
    - {name: token, from: %s, path: app/token}
    - {name: cfg, from: %q, as: file, path: conf/app.cfg}
`, image, check, bed.roleA, bed.smARN, bed.smARN, bed.ssmName, bed.cfgARN))
	var idA string
	waitUntil(t, "tenant A's task runs", 60*time.Second, func() (bool, string) {
		r := running(e)
		if len(r) == 1 {
			idA = r[0]
		}
		return len(r) == 1, fmt.Sprint(r)
	})
	e.waitLog(idA, "MOUNT-OK")
	logs, _ := e.cli("task", "logs", idA)
	for _, want := range []string{"ENV-OK", "FILE-OK", "SSM-OK", "PATH-OK", "MODES 400:0 500:0 400:0", "RO-OK", "MOUNT-OK"} {
		if !strings.Contains(logs, want) {
			t.Errorf("task A's check lacks %q:\n%s", want, logs)
		}
	}
	// The agent signed the fetches with tenant A's role session, never
	// with its own key.
	for _, k := range bed.signers(t, "secretsmanager.GetSecretValue") {
		if k == bed.agentKey {
			t.Errorf("a secret was fetched with the agent's own key %s", k)
		} else if r := bed.roleOfKey(t, k); !strings.Contains(r, "tenant-a") {
			t.Errorf("a secret of A was fetched with key %s of role %q, want tenant-a's", k, r)
		}
	}

	// Another task (no secrets) sees none of A's: no /run/secrets, and the
	// host path is not in its mount namespace.
	sched.submit(fmt.Sprintf(`name: peek
ownerEmail: c@example.com
application: peek
batch: {size: 1}
task:
  image: %s
  command: [sh, -c, %q]
  resources: {cpuMillicores: 500, memoryMib: 64}
`, image, fmt.Sprintf("ls /run/secrets 2>/dev/null || echo NO-MOUNT; cat %s/%s/db 2>/dev/null || echo NO-HOST-PATH", secretsDir, idA)))
	peek := waitApp(t, e, "peek")
	e.waitLog(peek.GetSpec().GetId(), "NO-HOST-PATH")
	if out, _ := e.cli("task", "logs", peek.GetSpec().GetId()); !strings.Contains(out, "NO-MOUNT") {
		t.Errorf("another task sees /run/secrets: %q", out)
	}

	// Tenant B's job names tenant A's secret with B's own role: IAM (moto)
	// refuses B's session; the launch fails, nothing is left.
	jobB := sched.submit(fmt.Sprintf(`name: tenant-b
ownerEmail: b@example.com
application: tenant-b
batch: {size: 1, retry: {maxRetries: 0}}
task:
  image: %s
  command: [sleep, "1000"]
  iamRoleArn: %s
  resources: {cpuMillicores: 500, memoryMib: 64}
  secrets:
    - {name: STOLEN, from: "%s:password", as: env}
    - {name: stolen, from: %q}
`, image, bed.roleB, bed.smARN, bed.smARN))
	failedB := waitApp(t, e, "tenant-b")
	wantMsg := "secrets: AccessDenied for " + bed.smARN
	if failedB.GetState() != agentv1.TaskState_TASK_STATE_FAILED || failedB.GetReason() != string(task.ReasonSecretUnavailable) || !strings.HasPrefix(failedB.GetMessage(), wantMsg) {
		t.Errorf("tenant B's task: %s/%s %q, want FAILED/SecretUnavailable %q", failedB.GetState(), failedB.GetReason(), failedB.GetMessage(), wantMsg)
	}
	idB := failedB.GetSpec().GetId()
	var bKeys []string
	for _, k := range bed.signers(t, "secretsmanager.GetSecretValue") {
		if k == bed.agentKey {
			t.Errorf("a secret was fetched with the agent's own key")
		}
		if r := bed.roleOfKey(t, k); strings.Contains(r, "tenant-b") {
			bKeys = append(bKeys, k)
		}
	}
	if len(bKeys) == 0 {
		t.Errorf("no GetSecretValue signed by tenant B's role session: the refusal was not IAM's")
	}
	if out, _ := sched.cli("job", "get", jobB); !strings.Contains(out, "SecretUnavailable") {
		t.Logf("scheduler's view of B (informational): %s", out)
	}

	// A secret that does not exist fails the launch the same way.
	sched.submit(fmt.Sprintf(`name: unreadable
ownerEmail: a@example.com
application: unreadable
batch: {size: 1, retry: {maxRetries: 0}}
task:
  image: %s
  command: [sleep, "1000"]
  iamRoleArn: %s
  resources: {cpuMillicores: 500, memoryMib: 64}
  secrets:
    - {name: gone, from: /tenant-a/no-such-parameter}
`, image, bed.roleA))
	tu := waitApp(t, e, "unreadable")
	wantState(t, tu, agentv1.TaskState_TASK_STATE_FAILED, task.ReasonSecretUnavailable, -1)
	if !strings.Contains(tu.GetMessage(), "ParameterNotFound for /tenant-a/no-such-parameter") {
		t.Errorf("unreadable: message %q", tu.GetMessage())
	}
	for _, id := range []string{idB, tu.GetSpec().GetId()} {
		e.waitNoContainer(id)
		assertNoSecretsOf(t, secretsDir, id)
	}

	// No value is in the agent's state, its log, its events, task get or
	// inspect, the task log dir, or the scheduler's etcd and log.
	get, _ := e.cli("task", "get", "-o", "json", idA)
	inspect, _ := e.cli("task", "inspect", idA)
	if !strings.Contains(inspect, "DB_PASSWORD=<redacted>") {
		t.Errorf("inspect does not show DB_PASSWORD redacted:\n%s", inspect)
	}
	schedGet, _ := sched.cli("job", "get", jobA, "-o", "json")
	var evText bytes.Buffer
	events.mu.Lock()
	for _, ev := range events.evs {
		b, _ := protojson.Marshal(ev)
		evText.Write(b)
	}
	events.mu.Unlock()
	values := []string{bed.password, bed.cfg, bed.tokn}
	where := map[string]string{"agent log": e.agent.Proc.Log(), "events": evText.String(), "task get": get, "task inspect": inspect, "scheduler job get": schedGet}
	for name, text := range where {
		for _, v := range values {
			if strings.Contains(text, v) {
				t.Errorf("a secret's value is in the %s", name)
			}
		}
	}
	for _, dir := range []string{filepath.Join(e.dir, "state"), filepath.Join(e.dir, "logs"), sched.dir} {
		for _, hit := range grepTree(t, dir, values) {
			t.Errorf("a secret's value is in %s", hit)
		}
	}
	// The state really has the references (the grep looked at the right place).
	if hits := grepTree(t, filepath.Join(e.dir, "state"), []string{bed.ssmName}); len(hits) == 0 {
		t.Errorf("the agent's state has no reference %s: the grep missed the store", bed.ssmName)
	}
	if hits := grepTree(t, sched.dir, []string{bed.ssmName}); len(hits) == 0 {
		t.Errorf("the scheduler's etcd has no reference %s: the grep missed the store", bed.ssmName)
	}

	// Tenant A's task ends: its tmpfs goes with it.
	if out, err := sched.cli("job", "kill", jobA); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	e.waitState(idA, agentv1.TaskState_TASK_STATE_FINISHED, 30*time.Second)
	e.waitNoContainer(idA)
	assertNoSecretsOf(t, secretsDir, idA)
	e.assertNoLeftovers()
}

// waitApp waits for the agent's task of application app to be final, or
// (peek) to run, and returns it.
func waitApp(t *testing.T, e *agentEnv, app string) *agentv1.Task {
	t.Helper()
	var found *agentv1.Task
	waitUntil(t, "task of "+app, 60*time.Second, func() (bool, string) {
		l, err := e.client.ListTasks(e.ctx(), &agentv1.ListTasksRequest{All: true})
		if err != nil {
			return false, err.Error()
		}
		for _, tk := range l.GetTasks() {
			if tk.GetSpec().GetLabels()[task.LabelApplication] == app && (tk.GetState() == stRunning || task.StateFromProto(tk.GetState()).Terminal()) {
				found = tk
				return true, ""
			}
		}
		return false, "not yet"
	})
	return found
}

// assertNoSecretsOf checks that task id has no secrets directory and no
// mount left, waiting a little for its teardown.
func assertNoSecretsOf(t *testing.T, secretsDir, id string) {
	t.Helper()
	dir := filepath.Join(secretsDir, id)
	waitUntil(t, "secrets of "+id+" gone", 10*time.Second, func() (bool, string) {
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mi), " "+dir+" ") {
			return false, "still mounted: " + dir
		}
		if _, err := os.Stat(dir); err == nil {
			return false, "directory left: " + dir
		}
		return true, ""
	})
}

// grepTree returns "path: value#i" for every file below dir holding one
// of values.
func grepTree(t *testing.T, dir string, values []string) []string {
	t.Helper()
	var hits []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for i, v := range values {
			if bytes.Contains(b, []byte(v)) {
				hits = append(hits, fmt.Sprintf("%s: value #%d", p, i))
			}
		}
		return nil
	})
	slices.Sort(hits)
	return hits
}

// In a user namespace the task's root is an unprivileged host user: its
// secret files are that user's (a file left to host root would be
// unreadable to it), and the agent without a network (no metadata
// listener) still fetches with the task's own role session.
func TestSecretsInUserNamespace(t *testing.T) {
	begin(t)
	moto := testenv.StartMoto(t)
	ctx := context.Background()
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", "")}
	value := rnd("userns-")
	sc := ssm.NewFromConfig(cfg, func(o *ssm.Options) { o.BaseEndpoint = aws.String(moto.Endpoint) })
	if _, err := sc.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String("/app/token"), Value: aws.String(value), Type: ssmtypes.ParameterTypeSecureString}); err != nil {
		t.Fatal(err)
	}
	parent := userNSDir(t)
	e := newAgentEnvConfig(t, fmt.Sprintf(`isolation:
  diskDir: %s
metadata:
  enabled: true
  stsEndpoint: %s
  region: us-east-1
  accessKeyID: testing
  secretAccessKey: testing
secrets:
  dir: {{DIR}}/secrets
  endpoint: %s
`, filepath.Join(parent, "disks"), moto.Endpoint, moto.Endpoint))
	s := e.spec("userns", "sh", "-c", fmt.Sprintf(`test "$(sha256sum < /run/secrets/app/token | cut -d' ' -f1)" = %s && echo READ-OK
echo "MODES $(stat -c '%%a:%%u' /run/secrets/app/token)"; exec sleep 1000`, sha(value)))
	s.Labels, s.Resources.DiskMib = map[string]string{isolation.LabelUserNS: "true"}, 32
	s.IamRoleArn = "arn:aws:iam::123456789012:role/app"
	s.Secrets = []*agentv1.SecretRef{{Name: "token", From: "/app/token", Path: "app/token"}}
	e.launch(s)
	e.waitState("userns", stRunning, 30*time.Second)
	e.waitLog("userns", "MODES")
	if out, _ := e.cli("task", "logs", "userns"); !strings.Contains(out, "READ-OK") || !strings.Contains(out, "MODES 400:0") {
		t.Errorf("in the task: %q, want READ-OK and MODES 400:0 (its root owns it)", out)
	}
	fi, err := os.Stat(filepath.Join(e.dir, "secrets", "userns", "app", "token"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; uid == 0 {
		t.Errorf("on the host the file is root's, not the task's mapped user")
	}
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "userns", GracePeriodSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	e.waitState("userns", agentv1.TaskState_TASK_STATE_FINISHED, 30*time.Second)
	e.waitNoContainer("userns")
	assertNoSecretsOf(t, filepath.Join(e.dir, "secrets"), "userns")
	e.assertNoLeftovers()
}
