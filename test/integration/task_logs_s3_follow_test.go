package integration

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/logship"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
	"github.com/titus-agent/titus-agent/pkg/scheduler/logarchive"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// seqLines is what `seq from to` prints.
func seqLines(from, to int) string {
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "%d\n", i)
	}
	return b.String()
}

// TestSchedulerTaskLogsForgottenJobAndFollow: `task logs --s3 -f` of a
// running task prints each rotated file as the agent ships it and ends at
// the task's final file, saying so; once the scheduler has forgotten the
// job (past its retention), its owner still reads the logs from S3, and
// another tenant who knows the task id gets NotFound and nothing (the
// attack); a follow of a task whose final file never comes (here over its
// shipping cap; a host that went away does the same) ends the grace period
// after the task did, saying so.
func TestSchedulerTaskLogsForgottenJobAndFollow(t *testing.T) {
	begin(t)
	moto := testenv.StartMoto(t)
	bucket := fmt.Sprintf("titus-follow-%d", time.Now().UnixNano()%1e6)
	cli := s3.New(s3.Options{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", ""),
		BaseEndpoint: aws.String(moto.Endpoint), UsePathStyle: true})
	if _, err := cli.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatal(err)
	}
	const grace = 3 * time.Second
	spy := &listSpy{S3: cli}
	st := startLogsStack(t, func(o *scheduler.Options) {
		o.LogArchive = logarchive.New(spy, bucket, "tt").WithFollow(300*time.Millisecond, grace)
		o.FinishedJobRetention = 2 * time.Second
	}, fmt.Sprintf(`logs:
  maxSizeMiB: 1
logship:
  enabled: true
  bucket: %s
  prefix: tt
  endpoint: %s
  accessKeyID: testing
  secretAccessKey: testing
  interval: 200ms
`, bucket, moto.Endpoint))
	ctx := t.Context()

	// Two rotations (1 MiB each) while running, a pause between them.
	jobID, taskID := st.submit(t, &schedv1.BatchJob{Size: 1},
		`sleep 1; seq 1 200000; echo marker-1; sleep 3; seq 200001 400000; echo marker-2; sleep 2; echo the-end`)
	want := seqLines(1, 200000) + "marker-1\n" + seqLines(200001, 400000) + "marker-2\nthe-end\n"
	cmd := st.cli("alice", "task", "logs", "--s3", "-f", taskID)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("task logs --s3 -f: %v\n%s", err, errOut.String())
		}
	case <-time.After(testenv.Scaled(45 * time.Second)):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("task logs --s3 -f still running after 45 s; stderr:\n%s\nagent log:\n%s", errOut.String(), tailLog(st.agent.Log()))
	}
	if took := time.Since(start); took < 4*time.Second {
		t.Errorf("the follow ended after %s, before the task could have (it runs over 6 s)", took)
	}
	if got := out.String(); got != want {
		t.Errorf("followed %d bytes, want %d; tail %q", len(got), len(want), got[max(0, len(got)-40):])
	}
	if !strings.Contains(errOut.String(), "ended: its final stdout is read") {
		t.Errorf("stderr does not say the follow ended at the final file:\n%s", errOut.String())
	}
	prefix := fmt.Sprintf("tt/billing/%s/%s/", jobID, taskID)
	l, err := cli.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: aws.String(prefix + "stdout.")})
	if err != nil || len(l.Contents) < 3 {
		t.Errorf("want at least 3 stdout objects (2 rotated, 1 final): %v, %v", l, err)
	}

	// The scheduler forgets the job.
	waitUntil(t, "the job forgotten", testenv.Scaled(30*time.Second), func() (bool, string) {
		_, err := st.clients["root"].GetJob(ctx, &schedv1.GetJobRequest{Id: jobID})
		return err != nil && strings.Contains(err.Error(), "NotFound"), fmt.Sprint(err)
	})
	// Found with one listing, of the job index; then the task's files.
	spy.reset()
	data, src, err := readLogs(ctx, st.clients["alice"], &schedv1.TaskLogsRequest{Id: taskID, Follow: true})
	if err != nil || data != want || src != "s3://"+bucket+"/"+prefix+"stdout.*" {
		t.Errorf("alice reads her forgotten task: %d bytes (want %d) from %q, %v", len(data), len(want), src, err)
	}
	if got, want := spy.reset(), []string{"tt/!jobs/" + jobID + "/", prefix + "stdout."}; !slices.Equal(got, want) {
		t.Errorf("alice's read listed %q, want %q (the job index, then the task's files)", got, want)
	}
	// --since skips whole files: the ones uploaded before it.
	data, _, err = readLogs(ctx, st.clients["alice"], &schedv1.TaskLogsRequest{Id: taskID, Since: timestamppb.New(time.Now())})
	if err != nil || data != "" {
		t.Errorf("alice reads since now: %d bytes, %v; want nothing (every file was uploaded before)", len(data), err)
	}
	if b, err := st.cli("alice", "task", "logs", "--since", "10m", taskID).Output(); err != nil || string(b) != want {
		t.Errorf("alice: task logs --since 10m: %d bytes (want %d), %v", len(b), len(want), err)
	}
	// The attack: bob (search) and dave (no role) know the task id. The
	// job index names billing, which bob may not read: he gets what a
	// task that does not exist gets, after the same listings, and nothing
	// under billing is listed for him.
	spy.reset()
	data, _, err = readLogs(ctx, st.clients["bob"], &schedv1.TaskLogsRequest{Id: taskID})
	wantCode(t, "bob reads billing's forgotten task", err, codes.NotFound, `task "`+taskID+`"`)
	if data != "" || err != nil && strings.Contains(err.Error(), "billing") {
		t.Errorf("bob got %d bytes, error %v (must not name billing)", len(data), err)
	}
	bobs := spy.reset()
	const noJob = "0190ffff-ffff-7fff-bfff-ffffffffffff"
	_, _, noneErr := readLogs(ctx, st.clients["bob"], &schedv1.TaskLogsRequest{Id: noJob + ".0.0"})
	if status.Convert(noneErr).Message() != strings.ReplaceAll(status.Convert(err).Message(), taskID, noJob+".0.0") {
		t.Errorf("bob: %v for billing's task, %v for none", err, noneErr)
	}
	nones := spy.reset()
	for i := range nones {
		nones[i] = strings.ReplaceAll(nones[i], noJob, jobID)
	}
	if !slices.Equal(bobs, nones) || slices.ContainsFunc(bobs, func(p string) bool { return strings.Contains(p, "billing") }) {
		t.Errorf("bob's read of billing's task listed %q; of a task that does not exist %q", bobs, nones)
	}
	_, _, err = readLogs(ctx, st.clients["dave"], &schedv1.TaskLogsRequest{Id: taskID, Stderr: true})
	wantCode(t, "dave reads billing's forgotten task", err, codes.PermissionDenied, "task.logs")
	var got []string
	waitUntil(t, "forgotten-job reads in the audit trail", testenv.Scaled(30*time.Second), func() (bool, string) {
		resp, err := st.clients["root"].ListAudit(ctx, &schedv1.ListAuditRequest{JobId: jobID})
		if err != nil {
			return false, err.Error()
		}
		got = nil
		for _, r := range resp.Records {
			if r.Method == "TaskLogs" {
				got = append(got, fmt.Sprintf("%s %s %s %s", r.Principal, r.Application, r.Code, r.Message))
			}
		}
		return len(got) >= 4, strings.Join(got, "\n")
	})
	for _, w := range []string{"alice@example.com billing OK stdout, follow from s3://", "bob@example.com  NotFound stdout: ", "dave@example.com  PermissionDenied stderr: "} {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("audit trail lacks %q; has:\n%s", w, strings.Join(got, "\n"))
		}
	}

	// Logs shipped before agents wrote the job index: found by the scan.
	if _, err := cli.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: aws.String(logship.JobIndexKey("tt", "billing", jobID))}); err != nil {
		t.Fatal(err)
	}
	if data, _, err := readLogs(ctx, st.clients["alice"], &schedv1.TaskLogsRequest{Id: taskID}); err != nil || data != want {
		t.Errorf("alice reads her forgotten task without its index entry: %d bytes (want %d), %v", len(data), len(want), err)
	}
	if got := spy.reset(); len(got) < 3 || got[1] != "tt/" {
		t.Errorf("without an index entry: listed %q, want the index, the applications, ...", got)
	}

	// A task whose final file is never shipped (over its cap, as when its
	// host goes away): the follow ends the grace period after the task
	// did, saying so.
	_, cappedID := st.submitLabeled(t, map[string]string{"titus.logs/max-mib": "1"}, `sleep 1; seq 1 300000; echo capped-end; sleep 1`)
	cmd = st.cli("alice", "task", "logs", "--s3", "-f", cappedID)
	out.Reset()
	errOut.Reset()
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("task logs --s3 -f of a task whose final file is not shipped: %v\n%s", err, errOut.String())
	}
	all := seqLines(1, 300000)
	if o := out.String(); len(o) < 1<<19 || !strings.HasPrefix(all, o) {
		t.Errorf("printed %d bytes, want the shipped rotated file, a prefix of the output of over 512 KiB", len(o))
	}
	if !strings.Contains(errOut.String(), "did not reach S3 within "+grace.String()) {
		t.Errorf("stderr does not say the final file never came:\n%s", errOut.String())
	}
}

// listSpy records the prefixes the archive lists.
type listSpy struct {
	logarchive.S3
	mu     sync.Mutex
	listed []string
}

func (l *listSpy) ListObjectsV2(ctx context.Context, in *s3.ListObjectsV2Input, opts ...func(*s3.Options)) (*s3.ListObjectsV2Output, error) {
	l.mu.Lock()
	l.listed = append(l.listed, aws.ToString(in.Prefix))
	l.mu.Unlock()
	return l.S3.ListObjectsV2(ctx, in, opts...)
}

// reset returns the prefixes listed since the last reset, in order
// (sorted within a run of concurrent probes is not needed: one each).
func (l *listSpy) reset() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.listed
	l.listed = nil
	return out
}

// submitLabeled is submit with task labels.
func (st *logsStack) submitLabeled(t *testing.T, labels map[string]string, command string) (jobID, taskID string) {
	t.Helper()
	ctx := t.Context()
	spec := jobSpec(&schedv1.BatchJob{Size: 1})
	spec.Application, spec.OwnerEmail = "billing", "alice@example.com"
	spec.Task.Image, spec.Task.Command, spec.Task.Labels = st.image, []string{"sh", "-c", command}, labels
	spec.Task.Resources = &agentv1.Resources{CpuMillicores: 500, MemoryMib: 64}
	sub, err := st.clients["alice"].SubmitJob(ctx, &schedv1.SubmitJobRequest{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the task running", testenv.Scaled(60*time.Second), func() (bool, string) {
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
		return false, fmt.Sprint(l.Tasks)
	})
	return sub.JobId, taskID
}
