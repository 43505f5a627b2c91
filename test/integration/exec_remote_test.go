package integration

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authn/authntest"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
	"github.com/titus-agent/titus-agent/test/testenv"
)

const execPolicy = `
admins: {principals: [root@example.com]}
applications:
  billing:
    owners: {principals: [alice@example.com]}
    debuggers: {principals: [carol@example.com]}
  search:
    owners: {principals: [bob@example.com]}
`

// remoteExec runs one relayed session through the scheduler's API.
func remoteExec(ctx context.Context, c schedv1.SchedulerClient, id string, args ...string) (string, int32, error) {
	s, err := c.ExecTask(ctx)
	if err != nil {
		return "", -1, err
	}
	// io.EOF: the scheduler already ended the stream (a refusal); Recv
	// below says why.
	if err := s.Send(&agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: id, Args: args}}}); err != nil && err != io.EOF {
		return "", -1, err
	}
	_ = s.CloseSend()
	var out strings.Builder
	for {
		o, err := s.Recv()
		if err == io.EOF {
			return out.String(), -1, fmt.Errorf("no exit code")
		}
		if err != nil {
			return out.String(), -1, err
		}
		out.Write(o.GetStdout())
		out.Write(o.GetStderr())
		if o.GetExited() {
			return out.String(), o.GetExitCode(), nil
		}
	}
}

// TestSchedulerExecRelayAudited: exec sessions reach a real agent's task
// through the scheduler and that agent's own stream (mutual TLS, a
// policy): the job's owner and its debugger get in, another tenant and a
// principal without a role do not (attack), the owner's -it session runs
// through a pseudo-terminal with its exit code, and every session, let in
// or refused, is in the audit trail with who, which task, the command
// and the exit code.
func TestSchedulerExecRelayAudited(t *testing.T) {
	begin(t)
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
	o.ExecMaxSessionsPerCaller = 2
	s, _ := startScheduler(t, t.Context(), o)
	waitLeading(t, s)

	certs := map[string]authntest.Issued{}
	clients := map[string]schedv1.SchedulerClient{}
	for _, who := range []string{"root", "alice", "bob", "carol", "dave"} {
		c := ca.Issue(t, authntest.Leaf{CN: who, Emails: []string{who + "@example.com"}}, dir)
		certs[who] = c
		d, err := tlsconfig.Files{CAFile: caFile, CertFile: c.CertFile, KeyFile: c.KeyFile}.DialOption()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(s.Addr(), d)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		clients[who] = schedv1.NewSchedulerClient(cc)
	}

	// A real agent on its own containerd, linked with its host certificate.
	host := ca.Issue(t, authntest.Leaf{CN: "host-x", URIs: []string{authn.DefaultAgentURIPrefix + "host-x"}}, dir)
	ctd, reg := testenv.StartContainerd(t), testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	ln := newLocalNet(t)
	cfg := ln.config + fmt.Sprintf("scheduler:\n  address: %q\n  instanceID: host-x\n  instanceType: sim\n  zone: az-a\n  tls:\n    caFile: %s\n    certFile: %s\n    keyFile: %s\n",
		s.Addr(), caFile, host.CertFile, host.KeyFile)
	ag := testenv.StartAgent(t, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})

	ctx := t.Context()
	spec := jobSpec(&schedv1.ServiceJob{Min: 1, Desired: 1, Max: 1})
	spec.Application, spec.OwnerEmail = "billing", "alice@example.com"
	spec.Task.Image, spec.Task.Command = image, []string{"sleep", "100000"}
	spec.Task.Resources = &agentv1.Resources{CpuMillicores: 500, MemoryMib: 64}
	sub, err := clients["alice"].SubmitJob(ctx, &schedv1.SubmitJobRequest{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	// Bob's own task (application search) on the same host.
	bspec := jobSpec(&schedv1.ServiceJob{Min: 1, Desired: 1, Max: 1})
	bspec.Application, bspec.OwnerEmail = "search", "bob@example.com"
	bspec.Task.Image, bspec.Task.Command = image, []string{"sleep", "100000"}
	bspec.Task.Resources = &agentv1.Resources{CpuMillicores: 500, MemoryMib: 64}
	bsub, err := clients["bob"].SubmitJob(ctx, &schedv1.SubmitJobRequest{Spec: bspec})
	if err != nil {
		t.Fatal(err)
	}
	running := func(job string) string {
		var id string
		waitUntil(t, job+"'s task running", testenv.Scaled(60*time.Second), func() (bool, string) {
			l, err := clients["root"].ListTasks(ctx, &schedv1.ListTasksRequest{JobId: job})
			if err != nil {
				return false, err.Error()
			}
			for _, tk := range l.Tasks {
				if tk.State == agentv1.TaskState_TASK_STATE_RUNNING {
					id = tk.Id
					return true, ""
				}
			}
			return false, fmt.Sprint(l.Tasks, "\nagent log:\n", tailLog(ag.Log()))
		})
		return id
	}
	taskID, bobTask := running(sub.JobId), running(bsub.JobId)

	// Allowed: the owner and the application's debugger.
	out, code, err := remoteExec(ctx, clients["alice"], taskID, "sh", "-c", "echo from-$((40+2)); exit 4")
	if err != nil || code != 4 || !strings.Contains(out, "from-42") {
		t.Fatalf("alice's exec: %q exit %d, %v", out, code, err)
	}
	if out, code, err := remoteExec(ctx, clients["carol"], taskID, "cat", "/proc/self/cgroup"); err != nil || code != 0 || out == "" {
		t.Fatalf("carol's (debugger) exec: %q exit %d, %v", out, code, err)
	}
	// Refused: another tenant, and a principal the policy gives nothing.
	_, _, err = remoteExec(ctx, clients["bob"], taskID, "cat", "/proc/self/environ")
	// Bob may not read billing's tasks: for him the task does not exist.
	wantCode(t, "bob (owner of search) execs into billing's task", err, codes.NotFound, `task "`+taskID+`"`)
	_, _, err = remoteExec(ctx, clients["dave"], taskID, "id")
	wantCode(t, "dave (no role) execs", err, codes.PermissionDenied, "task.debug")
	// A task id of nothing tells nothing.
	_, _, err = remoteExec(ctx, clients["bob"], "nope.0.0", "id")
	wantCode(t, "exec into an unknown task", err, codes.NotFound, `task "nope.0.0"`)

	// The per-caller bound (exec.maxSessionsPerCaller, 2 here): alice
	// holds two sessions open, her third is refused; bob's session into
	// his own task and carol's into alice's still run.
	hctx, release := context.WithCancel(ctx)
	defer release()
	for i := range 2 {
		st, err := clients["alice"].ExecTask(hctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&agentv1.ExecInput{Msg: &agentv1.ExecInput_Start{Start: &agentv1.ExecStart{Id: taskID, Args: []string{"sh", "-c", "echo held; exec sleep 1000"}}}}); err != nil {
			t.Fatal(err)
		}
		if o, err := st.Recv(); err != nil || !strings.Contains(string(o.GetStdout()), "held") {
			t.Fatalf("alice's held session %d: %v %v", i, o, err)
		}
	}
	_, _, err = remoteExec(ctx, clients["alice"], taskID, "echo", "third")
	wantCode(t, "alice's third session", err, codes.ResourceExhausted, "alice@example.com has 2 open through the scheduler (exec.maxSessionsPerCaller)")
	if out, code, err := remoteExec(ctx, clients["bob"], bobTask, "echo", "bob-in"); err != nil || code != 0 || !strings.Contains(out, "bob-in") {
		t.Errorf("bob's session into his own task while alice is at her bound: %q exit %d, %v", out, code, err)
	}
	if _, code, err := remoteExec(ctx, clients["carol"], taskID, "true"); err != nil || code != 0 {
		t.Errorf("carol's session while alice is at her bound: exit %d, %v", code, err)
	}
	release()
	waitUntil(t, "alice's slots back once her sessions ended", testenv.Scaled(20*time.Second), func() (bool, string) {
		out, code, err := remoteExec(ctx, clients["alice"], taskID, "echo", "again")
		return err == nil && code == 0 && strings.Contains(out, "again"), fmt.Sprint(out, code, err)
	})

	// The owner's -it session through the CLI on a pseudo-terminal.
	ts := startTermBin(t, testenv.SchedulerBinary(t), "--addr", s.Addr(), "--tls-ca", caFile, "--tls-cert", certs["alice"].CertFile, "--tls-key", certs["alice"].KeyFile,
		"task", "exec", "-it", taskID, "--", "sh")
	ts.expect(`[#$] `)
	ts.send("echo remote-$((3*3))\r")
	ts.expect(`remote-9`)
	ts.send("stty size\r")
	ts.expect(`24 80`)
	ts.send("exit 6\r")
	if c := ts.wait(); c != 6 {
		t.Fatalf("remote -it exit code %d, want 6; output %q", c, ts.out.String())
	}

	// The trail: every session with who, task, command and exit code.
	var got []string
	waitUntil(t, "exec sessions in the audit trail", testenv.Scaled(30*time.Second), func() (bool, string) {
		resp, err := clients["root"].ListAudit(ctx, &schedv1.ListAuditRequest{JobId: sub.JobId})
		if err != nil {
			return false, err.Error()
		}
		got = nil
		for _, r := range resp.Records {
			if r.Method != "ExecTask" {
				continue
			}
			exit := "-"
			if r.ExitCode != nil {
				exit = fmt.Sprint(*r.ExitCode)
			}
			if r.TaskId != taskID || r.Time == nil || r.Ended == nil || r.Action != "task.debug" || r.Application != "billing" {
				return false, fmt.Sprintf("incomplete record %v", r)
			}
			got = append(got, fmt.Sprintf("%s %s %q exit=%s", r.Principal, r.Code, strings.Join(r.Command, " "), exit))
		}
		return len(got) >= 8, strings.Join(got, "\n")
	})
	for _, want := range []string{
		`alice@example.com OK "sh -c echo from-$((40+2)); exit 4" exit=4`,
		`carol@example.com OK "cat /proc/self/cgroup" exit=0`,
		`bob@example.com PermissionDenied "cat /proc/self/environ" exit=-`,
		`dave@example.com PermissionDenied "id" exit=-`,
		`alice@example.com ResourceExhausted "echo third" exit=-`,
		`alice@example.com OK "sh" exit=6`,
	} {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasSuffix(g, want) || strings.Contains(g, want) }) {
			t.Errorf("audit trail lacks %s; has:\n%s", want, strings.Join(got, "\n"))
		}
	}
}
