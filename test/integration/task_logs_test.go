package integration

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authn/authntest"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/logship"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
	"github.com/titus-agent/titus-agent/pkg/scheduler/logarchive"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// logsStack is a scheduler with mutual TLS and execPolicy, one real agent
// (host-x) linked to it, and a client per principal.
type logsStack struct {
	sched   *scheduler.Scheduler
	agent   *testenv.Agent
	image   string
	clients map[string]schedv1.SchedulerClient
	// cli runs titus-scheduler as who.
	cli func(who string, args ...string) *exec.Cmd
}

func startLogsStack(t *testing.T, tune func(*scheduler.Options), agentConfig string) *logsStack {
	t.Helper()
	dir := t.TempDir()
	ca := authntest.NewCA(t, "titus test CA")
	caFile := filepath.Join(dir, "ca.pem")
	authntest.WriteFile(t, caFile, ca.PEM)
	srv := ca.Issue(t, authntest.Leaf{CN: "scheduler", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Usage: x509.ExtKeyUsageServerAuth}, dir)
	server, err := tlsconfig.Files{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: caFile}.Server()
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authz.Parse([]byte(execPolicy))
	if err != nil {
		t.Fatal(err)
	}
	o := schedOptions(t)
	o.TLS, o.Policy = server, pol
	if tune != nil {
		tune(&o)
	}
	st := &logsStack{clients: map[string]schedv1.SchedulerClient{}}
	st.sched, _ = startScheduler(t, t.Context(), o)
	waitLeading(t, st.sched)
	certs := map[string]authntest.Issued{}
	for _, who := range []string{"root", "alice", "bob", "carol", "dave"} {
		c := ca.Issue(t, authntest.Leaf{CN: who, Emails: []string{who + "@example.com"}}, dir)
		certs[who] = c
		d, err := tlsconfig.Files{CAFile: caFile, CertFile: c.CertFile, KeyFile: c.KeyFile}.DialOption()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(st.sched.Addr(), d)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		st.clients[who] = schedv1.NewSchedulerClient(cc)
	}
	bin := testenv.SchedulerBinary(t) // built now, not while a task runs
	st.cli = func(who string, args ...string) *exec.Cmd {
		a := append([]string{"--addr", st.sched.Addr(), "--tls-ca", caFile, "--tls-cert", certs[who].CertFile, "--tls-key", certs[who].KeyFile}, args...)
		return exec.Command(bin, a...)
	}
	host := ca.Issue(t, authntest.Leaf{CN: "host-x", URIs: []string{authn.DefaultAgentURIPrefix + "host-x"}}, dir)
	ctd, reg := testenv.StartContainerd(t), testenv.StartRegistry(t)
	st.image = testenv.PushBusybox(t, reg, "busybox", "latest")
	ln := newLocalNet(t)
	cfg := ln.config + agentConfig + fmt.Sprintf("scheduler:\n  address: %q\n  instanceID: host-x\n  instanceType: sim\n  zone: az-a\n  tls:\n    caFile: %s\n    certFile: %s\n    keyFile: %s\n",
		st.sched.Addr(), caFile, host.CertFile, host.KeyFile)
	st.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})
	return st
}

// submit runs a billing job (alice's) of one task and waits until it runs.
func (st *logsStack) submit(t *testing.T, kind any, command string) (jobID, taskID string) {
	t.Helper()
	ctx := t.Context()
	spec := jobSpec(kind)
	spec.Application, spec.OwnerEmail = "billing", "alice@example.com"
	spec.Task.Image, spec.Task.Command = st.image, []string{"sh", "-c", command}
	spec.Task.Resources = &agentv1.Resources{CpuMillicores: 500, MemoryMib: 64}
	sub, err := st.clients["alice"].SubmitJob(ctx, &schedv1.SubmitJobRequest{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "billing task running", testenv.Scaled(60*time.Second), func() (bool, string) {
		l, err := st.clients["root"].ListTasks(ctx, &schedv1.ListTasksRequest{JobId: sub.JobId, All: true})
		if err != nil {
			return false, err.Error()
		}
		for _, tk := range l.Tasks {
			if tk.State >= agentv1.TaskState_TASK_STATE_RUNNING {
				taskID = tk.Id
				return true, ""
			}
		}
		return false, fmt.Sprint(l.Tasks, "\nagent log:\n", tailLog(st.agent.Log()))
	})
	return sub.JobId, taskID
}

// readLogs reads a whole TaskLogs stream.
func readLogs(ctx context.Context, c schedv1.SchedulerClient, req *schedv1.TaskLogsRequest) (data, source string, err error) {
	s, err := c.TaskLogs(ctx, req)
	if err != nil {
		return "", "", err
	}
	var b strings.Builder
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return b.String(), source, nil
		}
		if err != nil {
			return b.String(), source, err
		}
		if m.GetSource() != "" {
			source = m.GetSource()
		}
		b.Write(m.GetData())
	}
}

// agentLogFiles lists the task log files the agent process holds open,
// with where its descriptor stands in each.
func agentLogFiles(t *testing.T, pid int, taskID string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		p, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil || !strings.Contains(p, taskID) || !strings.HasSuffix(p, ".log") {
			continue
		}
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		var pos int64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(info), "\n", 2)[0], "pos:"), "%d", &pos)
		out[fmt.Sprintf("%s#%s", p, fd.Name())] = pos
	}
	return out
}

// TestSchedulerTaskLogsFollow: titus-scheduler task logs -f, run as the
// job's owner, follows a task on the agent's host through the scheduler
// and that agent's stream, and ends when the task does. The job's
// debugger reads it too; another tenant and a principal without a role are
// refused (attack), and every read, allowed or refused, is in the audit
// trail.
func TestSchedulerTaskLogsFollow(t *testing.T) {
	begin(t)
	st := startLogsStack(t, nil, "")
	ctx := t.Context()
	jobID, taskID := st.submit(t, &schedv1.BatchJob{Size: 1},
		`sleep 1; for i in 1 2 3 4 5 6; do echo out-$i; echo err-$i >&2; sleep 0.4; done; echo the-end`)

	cmd := st.cli("alice", "task", "logs", "-f", taskID)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	began := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("task logs -f: %v\nstderr: %s", err, stderr.String())
		}
	case <-time.After(testenv.Scaled(30 * time.Second)):
		cmd.Process.Kill()
		t.Fatalf("task logs -f did not end with the task; got %q\nstderr: %s", stdout.String(), stderr.String())
	}
	var outs []string
	for _, l := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(l, "out-") || l == "the-end" {
			outs = append(outs, l)
		}
	}
	if want := []string{"out-1", "out-2", "out-3", "out-4", "out-5", "out-6", "the-end"}; !slices.Equal(outs, want) {
		t.Errorf("followed %v, want %v (all: %q)", outs, want, stdout.String())
	}
	if !strings.Contains(stderr.String(), "from agent host-x") {
		t.Errorf("the CLI does not say where it read: %q", stderr.String())
	}
	if d := time.Since(began); d < time.Second {
		t.Errorf("task logs -f ended %v after it began: the task (3 s) had ended, nothing was followed", d)
	}

	// --stderr: the task's stderr alone.
	serr := st.cli("alice", "task", "logs", "--stderr", taskID)
	b, err := serr.Output()
	if err != nil || strings.TrimSpace(string(b)) != "err-1\nerr-2\nerr-3\nerr-4\nerr-5\nerr-6" {
		t.Errorf("task logs --stderr: %q, %v", b, err)
	}

	// The debugger reads; another tenant and a principal without a role do not.
	if out, src, err := readLogs(ctx, st.clients["carol"], &schedv1.TaskLogsRequest{Id: taskID}); err != nil || !strings.Contains(out, "the-end") || src != "agent host-x" {
		t.Errorf("carol (debugger): %q from %q, %v", out, src, err)
	}
	out, _, err := readLogs(ctx, st.clients["bob"], &schedv1.TaskLogsRequest{Id: taskID, Follow: true})
	wantCode(t, "bob (owner of search) reads billing's logs", err, codes.NotFound, `task "`+taskID+`"`)
	if out != "" {
		t.Errorf("bob got %q", out)
	}
	_, _, err = readLogs(ctx, st.clients["dave"], &schedv1.TaskLogsRequest{Id: taskID})
	wantCode(t, "dave (no role) reads logs", err, codes.PermissionDenied, "task.logs")

	var got []string
	waitUntil(t, "log reads in the audit trail", testenv.Scaled(30*time.Second), func() (bool, string) {
		resp, err := st.clients["root"].ListAudit(ctx, &schedv1.ListAuditRequest{JobId: jobID})
		if err != nil {
			return false, err.Error()
		}
		got = nil
		for _, r := range resp.Records {
			if r.Method != "TaskLogs" {
				continue
			}
			if r.TaskId != taskID || r.Action != "task.logs" || r.Application != "billing" || r.Ended == nil {
				return false, fmt.Sprintf("incomplete record %v", r)
			}
			got = append(got, fmt.Sprintf("%s %s %s", r.Principal, r.Code, r.Message))
		}
		return len(got) >= 5, strings.Join(got, "\n")
	})
	for _, want := range []string{
		"alice@example.com OK stdout, follow from agent host-x",
		"carol@example.com OK stdout from agent host-x",
		"bob@example.com PermissionDenied stdout, follow: ",
		"dave@example.com PermissionDenied stdout: ",
	} {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, want) }) {
			t.Errorf("audit trail lacks %q; has:\n%s", want, strings.Join(got, "\n"))
		}
	}
}

// TestSchedulerTaskLogsBounded: a caller that stops reading holds the
// agent's reader near where it stopped (credit-based flow control), not at
// the end of a 9 MB log; a follower that goes away leaves no reader and no
// open log file on the agent; a caller may hold only
// maxLogReadsPerCaller reads at once.
func TestSchedulerTaskLogsBounded(t *testing.T) {
	begin(t)
	st := startLogsStack(t, func(o *scheduler.Options) { o.MaxLogReadsPerCaller = 3 }, "")
	ctx := t.Context()
	const size = 37 * 243_243 // whole lines of yes's 37 bytes: the last one is not held back
	_, taskID := st.submit(t, &schedv1.ServiceJob{Min: 1, Desired: 1, Max: 1},
		fmt.Sprintf(`yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c %d; sleep 100000`, size))
	pid := st.agent.Pid()
	waitUntil(t, "the whole log written", testenv.Scaled(30*time.Second), func() (bool, string) {
		out, err := exec.Command("sh", "-c", fmt.Sprintf("cat %s/logs/%s/stdout.log | wc -c", st.agent.Dir, taskID)).Output()
		return strings.TrimSpace(string(out)) == fmt.Sprint(size), fmt.Sprint(string(out), err)
	})

	// A slow caller: takes one chunk, then nothing for a while.
	sctx, stopSlow := context.WithCancel(ctx)
	s, err := st.clients["alice"].TaskLogs(sctx, &schedv1.TaskLogsRequest{Id: taskID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(testenv.Scaled(2 * time.Second))
	files := agentLogFiles(t, pid, taskID)
	if len(files) != 1 {
		t.Fatalf("the agent holds %v open for one read", files)
	}
	for f, pos := range files {
		t.Logf("a caller that stopped reading: the agent's reader stands at %d of %d bytes (%s)", pos, size, f)
		if pos > 4<<20 {
			t.Errorf("the agent read %d bytes ahead of a caller that stopped: no flow control", pos)
		}
	}
	// Reading on gets every byte, in order.
	var n int
	for {
		m, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n += len(m.GetData())
	}
	if n+32<<10 < size {
		t.Errorf("read %d bytes after the first chunk of a %d-byte log", n, size)
	}
	stopSlow()

	// Followers that go away leave nothing behind on the agent.
	var cancels []context.CancelFunc
	for range 3 {
		fctx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		s, err := st.clients["alice"].TaskLogs(fctx, &schedv1.TaskLogsRequest{Id: taskID, Follow: true})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				if _, err := s.Recv(); err != nil {
					return
				}
			}
		}()
	}
	waitUntil(t, "3 followers reading on the agent", testenv.Scaled(20*time.Second), func() (bool, string) {
		f := agentLogFiles(t, pid, taskID)
		return len(f) == 3, fmt.Sprint(f)
	})
	// A fourth read of the same caller is refused; another caller is not held back.
	_, _, err = readLogs(ctx, st.clients["alice"], &schedv1.TaskLogsRequest{Id: taskID, Follow: true})
	wantCode(t, "alice's 4th concurrent read", err, codes.ResourceExhausted, "maxReadsPerCaller")
	rctx, rcancel := context.WithTimeout(ctx, testenv.Scaled(20*time.Second))
	if out, _, err := readLogs(rctx, st.clients["carol"], &schedv1.TaskLogsRequest{Id: taskID}); err != nil || len(out) != size {
		t.Errorf("carol's read beside alice's three: %d bytes, %v", len(out), err)
	}
	rcancel()
	for _, c := range cancels {
		c()
	}
	waitUntil(t, "the agent to close every log file", testenv.Scaled(20*time.Second), func() (bool, string) {
		f := agentLogFiles(t, pid, taskID)
		return len(f) == 0, fmt.Sprint(f)
	})
	// And her slots are free again.
	if _, _, err := readLogs(ctx, st.clients["alice"], &schedv1.TaskLogsRequest{Id: taskID}); err != nil {
		t.Errorf("alice after her followers ended: %v", err)
	}
}

// TestSchedulerTaskLogsFromS3: a task's logs, shipped to S3 (moto) by
// its agent's real uploader, are read from the bucket once the task has
// ended and its host is gone: stdout and stderr apart, with where they
// came from. Another tenant asking for them is refused (attack) before
// the bucket is read, and the refusal is audited.
func TestSchedulerTaskLogsFromS3(t *testing.T) {
	begin(t)
	moto := testenv.StartMoto(t)
	bucket := fmt.Sprintf("titus-logs-%d", time.Now().UnixNano()%1e6)
	cli := s3.New(s3.Options{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", ""),
		BaseEndpoint: aws.String(moto.Endpoint), UsePathStyle: true})
	if _, err := cli.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatal(err)
	}
	st := startLogsStack(t, func(o *scheduler.Options) { o.LogArchive = logarchive.New(cli, bucket, "tt") }, fmt.Sprintf(`logship:
  enabled: true
  bucket: %s
  prefix: tt
  endpoint: %s
  accessKeyID: testing
  secretAccessKey: testing
  interval: 200ms
`, bucket, moto.Endpoint))
	ctx := t.Context()
	jobID, taskID := st.submit(t, &schedv1.BatchJob{Size: 1}, `for i in 1 2 3; do echo out-$i; echo err-$i >&2; done; echo last-out`)
	prefix := fmt.Sprintf("tt/billing/%s/%s/", jobID, taskID)
	waitUntil(t, "the task's logs in the bucket", testenv.Scaled(60*time.Second), func() (bool, string) {
		out, err := cli.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
		if err != nil {
			return false, err.Error()
		}
		var keys []string
		for _, o := range out.Contents {
			keys = append(keys, strings.TrimSuffix(strings.TrimPrefix(aws.ToString(o.Key), prefix), logship.GzipSuffix))
		}
		return slices.Contains(keys, "stdout.0") && slices.Contains(keys, "stderr.0"), fmt.Sprint(keys, "\n", tailLog(st.agent.Log()))
	})
	// --s3 reads the bucket while the agent still has the task.
	out, src, err := readLogs(ctx, st.clients["alice"], &schedv1.TaskLogsRequest{Id: taskID, Archive: true, Stderr: true})
	if err != nil || out != "err-1\nerr-2\nerr-3\n" || !strings.HasPrefix(src, "s3://") {
		t.Errorf("alice reads the archive with the agent up: %q from %q, %v", out, src, err)
	}
	// The host goes away.
	st.agent.Stop()
	waitUntil(t, "the agent disconnected", testenv.Scaled(30*time.Second), func() (bool, string) {
		a, err := st.clients["root"].ListAgents(ctx, &schedv1.ListAgentsRequest{})
		if err != nil {
			return false, err.Error()
		}
		for _, ag := range a.Agents {
			if ag.Id == "host-x" && ag.Connected {
				return false, "still connected"
			}
		}
		return true, ""
	})

	out, src, err = readLogs(ctx, st.clients["alice"], &schedv1.TaskLogsRequest{Id: taskID, Follow: true})
	if err != nil || !sameLines(out, "out-1 err-1 out-2 err-2 out-3 err-3 last-out") {
		t.Errorf("alice reads from S3: %q, %v", out, err)
	}
	if want := "s3://" + bucket + "/" + prefix + "stdout.*"; src != want {
		t.Errorf("source %q, want %q", src, want)
	}
	cmd := st.cli("carol", "task", "logs", "--stderr", taskID)
	var cerr strings.Builder
	cmd.Stderr = &cerr
	b, err := cmd.Output()
	if err != nil || string(b) != "err-1\nerr-2\nerr-3\n" || !strings.Contains(cerr.String(), "from s3://") {
		t.Errorf("carol: task logs --stderr: %q (%s), %v", b, cerr.String(), err)
	}
	// Attack: another tenant, and a principal with no role.
	out, _, err = readLogs(ctx, st.clients["bob"], &schedv1.TaskLogsRequest{Id: taskID})
	wantCode(t, "bob reads billing's shipped logs", err, codes.NotFound, `task "`+taskID+`"`)
	if out != "" {
		t.Errorf("bob got %q", out)
	}
	_, _, err = readLogs(ctx, st.clients["dave"], &schedv1.TaskLogsRequest{Id: taskID, Stderr: true})
	wantCode(t, "dave reads billing's shipped logs", err, codes.PermissionDenied, "task.logs")

	var got []string
	waitUntil(t, "S3 reads in the audit trail", testenv.Scaled(30*time.Second), func() (bool, string) {
		resp, err := st.clients["root"].ListAudit(ctx, &schedv1.ListAuditRequest{JobId: jobID})
		if err != nil {
			return false, err.Error()
		}
		got = nil
		for _, r := range resp.Records {
			if r.Method == "TaskLogs" {
				got = append(got, fmt.Sprintf("%s %s %s", r.Principal, r.Code, r.Message))
			}
		}
		return len(got) >= 4, strings.Join(got, "\n")
	})
	for _, want := range []string{
		"alice@example.com OK stdout, follow from s3://" + bucket + "/" + prefix + "stdout.*",
		"carol@example.com OK stderr from s3://",
		"bob@example.com PermissionDenied stdout: ",
		"dave@example.com PermissionDenied stderr: ",
	} {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, want) }) {
			t.Errorf("audit trail lacks %q; has:\n%s", want, strings.Join(got, "\n"))
		}
	}
}

// sameLines reports whether out holds exactly the space-separated lines
// of want, in any order (stdout and stderr lines of one moment may swap).
func sameLines(out, want string) bool {
	a := strings.Fields(out)
	b := strings.Fields(want)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
