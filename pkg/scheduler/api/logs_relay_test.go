package api

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/audit"
)

// recTrail keeps the audit records the server stores.
type recTrail struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (r *recTrail) List(context.Context, audit.Filter) ([]audit.Record, string, error) {
	return nil, "", nil
}
func (r *recTrail) Record(_ context.Context, rec audit.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}

// spyArchive records every read it is asked for. held lists the
// applications whose keys hold a task (for jobs the scheduler forgot);
// asked records the applications Applications was allowed to ask about.
type spyArchive struct {
	mu    sync.Mutex
	reads []LogKey
	opts  []ArchiveRead
	held  map[string][]string // task id → applications
	asked []string
}

func (a *spyArchive) Source(k LogKey) string { return "s3://b/" + k.TaskID }

func (a *spyArchive) Read(_ context.Context, k LogKey, r ArchiveRead, send func([]byte) error) (string, error) {
	a.mu.Lock()
	a.reads = append(a.reads, k)
	a.opts = append(a.opts, r)
	a.mu.Unlock()
	if err := send([]byte("archived " + k.Application + "\n")); err != nil {
		return "", err
	}
	if r.Follow {
		return "task " + k.TaskID + " ended: its final stdout is read", nil
	}
	return "", nil
}

func (a *spyArchive) Applications(_ context.Context, jobID, taskID string, may func(string) bool) ([]string, error) {
	var out []string
	for _, app := range []string{"billing", "search", "unlisted"} { // the bucket's applications
		if !may(app) {
			continue
		}
		a.asked = append(a.asked, app)
		if slices.Contains(a.held[taskID], app) {
			out = append(out, app)
		}
	}
	return out, nil
}

// logsStream is a caller's end of TaskLogs.
type logsStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent []*schedv1.TaskLogsChunk
}

func (s *logsStream) Context() context.Context { return s.ctx }
func (s *logsStream) Send(c *schedv1.TaskLogsChunk) error {
	s.sent = append(s.sent, c)
	return nil
}

// TestTaskLogsAnotherTenantIsRefused (attack): bob, owner of search, asks
// for the logs of billing's task, a reader asks too: both are refused
// before any agent or the archive is asked, and each refusal is in the
// audit trail with who, which task and application. A task id that would
// name another place in the bucket is refused at the door.
func TestTaskLogsAnotherTenantIsRefused(t *testing.T) {
	s := newServer(t)
	trail := &recTrail{}
	s.trail = trail
	arch := &spyArchive{}
	s.SetLogArchive(arch)
	r, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: spec("billing")})
	if err != nil {
		t.Fatal(err)
	}
	id := r.JobId + ".0.0"
	// Bob may not read billing's tasks: the task does not exist, for him;
	// the reader may: refused, naming the grant.
	err = s.TaskLogs(&schedv1.TaskLogsRequest{Id: id, Follow: true}, &logsStream{ctx: as("bob@example.com")})
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != `not found: task "`+id+`"` {
		t.Errorf("bob reads billing's logs: %v, want NotFound as for no task", err)
	}
	err = s.TaskLogs(&schedv1.TaskLogsRequest{Id: id, Follow: true}, &logsStream{ctx: as("auditor@example.com")})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "task.logs") {
		t.Errorf("a reader reads billing's logs: %v, want PermissionDenied naming task.logs", err)
	}
	for _, bad := range []string{"../billing/" + id, r.JobId + "/../x.0.0", "", strings.Repeat("a", 200) + ".0.0"} {
		err := s.TaskLogs(&schedv1.TaskLogsRequest{Id: bad}, &logsStream{ctx: as("root@example.com")})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("task id %.40q: %v, want InvalidArgument", bad, err)
		}
	}
	if len(arch.reads) != 0 {
		t.Errorf("the archive was read: %v", arch.reads)
	}
	type row struct{ Principal, Method, Action, App, Task, Code string }
	var got []row
	for _, rec := range trail.recs[:2] {
		got = append(got, row{rec.Principal, rec.Method, rec.Action, rec.Application, rec.TaskID, rec.Code})
	}
	want := []row{
		{"bob@example.com", "TaskLogs", "task.logs", "billing", id, "PermissionDenied"},
		{"auditor@example.com", "TaskLogs", "task.logs", "billing", id, "PermissionDenied"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	if n := len(trail.recs); n != 6 {
		t.Errorf("%d audit records, want one per read (6)", n)
	}
	// The owner gets the task's log; not yet placed, it has none on a host.
	err = s.TaskLogs(&schedv1.TaskLogsRequest{Id: id}, &logsStream{ctx: as("alice@example.com")})
	if status.Code(err) != codes.FailedPrecondition && status.Code(err) != codes.NotFound && len(arch.reads) != 1 {
		t.Errorf("the owner reads an unplaced task's logs: %v", err)
	}
	// --s3 reads the archive, under the job's own application.
	arch.reads = nil
	ls := &logsStream{ctx: as("alice@example.com")}
	if err := s.TaskLogs(&schedv1.TaskLogsRequest{Id: id, Archive: true, Stderr: true}, ls); err != nil {
		t.Fatalf("the owner reads the archive: %v", err)
	}
	if len(ls.sent) == 0 || ls.sent[0].GetSource() != "s3://b/"+id || string(ls.sent[0].GetData()) != "archived billing\n" {
		t.Errorf("archive read sent %v", ls.sent)
	}
	if diff := cmp.Diff([]LogKey{{Application: "billing", JobID: r.JobId, TaskID: id, Stderr: true}}, arch.reads); diff != "" {
		t.Errorf("archive reads (-want +got):\n%s", diff)
	}
}

// TestTaskLogsOfAForgottenJob: the logs of a job the scheduler no longer
// holds (removed after its retention) are read from the bucket, under the
// application its keys name, for a caller who may read that application's
// logs. The attack: bob (owner of search) and a reader ask for billing's
// forgotten task by its id: they get NotFound, the archive is only asked
// about applications they may read (nothing of billing's is listed for
// them, so the answer says nothing of it), and nothing is read. Each read
// is audited with the application found.
func TestTaskLogsOfAForgottenJob(t *testing.T) {
	s := newServer(t)
	trail := &recTrail{}
	s.trail = trail
	const gone = "0190aaaa-gone.0.0" // never held by this scheduler
	arch := &spyArchive{held: map[string][]string{gone: {"billing"}, "0190bbbb-both.0.0": {"billing", "search"}}}
	s.SetLogArchive(arch)

	ls := &logsStream{ctx: as("alice@example.com")}
	if err := s.TaskLogs(&schedv1.TaskLogsRequest{Id: gone, Follow: true}, ls); err != nil {
		t.Fatalf("alice reads her forgotten task: %v", err)
	}
	var got []string
	for _, c := range ls.sent {
		got = append(got, fmt.Sprintf("%q %q %q", c.GetSource(), c.GetData(), c.GetEnd()))
	}
	want := []string{`"s3://b/` + gone + `" "archived billing\n" ""`, `"" "" "task ` + gone + ` ended: its final stdout is read"`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sent (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]LogKey{{Application: "billing", JobID: "0190aaaa-gone", TaskID: gone}}, arch.reads); diff != "" {
		t.Errorf("reads (-want +got):\n%s", diff)
	}
	if len(arch.opts) != 1 || !arch.opts[0].Follow || arch.opts[0].TaskEnded != nil {
		t.Errorf("read options %+v: want a follow of an ended task", arch.opts)
	}
	if diff := cmp.Diff([]string{"billing"}, arch.asked); diff != "" {
		t.Errorf("alice: applications asked about (-want +got):\n%s", diff)
	}

	// The attack.
	for _, who := range []string{"bob@example.com", "auditor@example.com"} {
		arch.asked, arch.reads = nil, nil
		ls := &logsStream{ctx: as(who)}
		err := s.TaskLogs(&schedv1.TaskLogsRequest{Id: gone}, ls)
		// Word for word what a task that does not exist answers.
		none := s.TaskLogs(&schedv1.TaskLogsRequest{Id: "0190cccc-none.0.0"}, &logsStream{ctx: as(who)})
		if status.Code(err) != codes.NotFound || status.Convert(err).Message() != strings.ReplaceAll(status.Convert(none).Message(), "0190cccc-none", "0190aaaa-gone") {
			t.Errorf("%s reads billing's forgotten task: %v, want NotFound as for a task that does not exist (%v)", who, err, none)
		}
		if len(arch.reads) != 0 || len(ls.sent) != 0 {
			t.Errorf("%s: read %v, sent %v", who, arch.reads, ls.sent)
		}
		if slices.Contains(arch.asked, "billing") {
			t.Errorf("%s: the archive was asked about billing (%v)", who, arch.asked)
		}
	}
	// An admin reads it too; a task under two applications is refused
	// to whoever may read both, not guessed at.
	arch.reads = nil
	if err := s.TaskLogs(&schedv1.TaskLogsRequest{Id: gone}, &logsStream{ctx: as("root@example.com")}); err != nil {
		t.Errorf("root: %v", err)
	}
	err := s.TaskLogs(&schedv1.TaskLogsRequest{Id: "0190bbbb-both.0.0"}, &logsStream{ctx: as("root@example.com")})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "billing, search") {
		t.Errorf("root reads a task under two applications: %v", err)
	}
	ls = &logsStream{ctx: as("bob@example.com")}
	if err := s.TaskLogs(&schedv1.TaskLogsRequest{Id: "0190bbbb-both.0.0"}, ls); err != nil || string(ls.sent[0].GetData()) != "archived search\n" {
		t.Errorf("bob reads the task under his application: %v %v", err, ls.sent)
	}

	type row struct{ Principal, App, Task, Code string }
	var rows []row
	for _, r := range trail.recs {
		rows = append(rows, row{r.Principal, r.Application, r.TaskID, r.Code})
	}
	wantRows := []row{
		{"alice@example.com", "billing", gone, "OK"},
		{"bob@example.com", "", gone, "NotFound"},
		{"bob@example.com", "", "0190cccc-none.0.0", "NotFound"},
		{"auditor@example.com", "", gone, "NotFound"},
		{"auditor@example.com", "", "0190cccc-none.0.0", "NotFound"},
		{"root@example.com", "billing", gone, "OK"},
		{"root@example.com", "", "0190bbbb-both.0.0", "FailedPrecondition"},
		{"bob@example.com", "search", "0190bbbb-both.0.0", "OK"},
	}
	if diff := cmp.Diff(wantRows, rows); diff != "" {
		t.Errorf("audit (-want +got):\n%s", diff)
	}
}

// TestLogReadsPerCaller: a principal holds at most maxReadsPerCaller reads
// at once, the scheduler at most maxReads; another caller is not held back
// by the first one's reads.
func TestLogReadsPerCaller(t *testing.T) {
	var l logReads
	l.perCaller, l.total = 3, 5
	for i := range 3 {
		if err := l.acquire("mallory"); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if err := l.acquire("mallory"); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "maxReadsPerCaller") {
		t.Errorf("4th read of one caller: %v", err)
	}
	for i := range 2 {
		if err := l.acquire(fmt.Sprint("user", i)); err != nil {
			t.Errorf("another caller: %v", err)
		}
	}
	if err := l.acquire("late"); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "logs.maxReads") {
		t.Errorf("past the total: %v", err)
	}
	l.release("mallory")
	if err := l.acquire("mallory"); err != nil {
		t.Errorf("after one ended: %v", err)
	}
}

// fakeAgent plays the agent's end of the relay for liveLogs.
type fakeAgent struct {
	ra      *relayAgent
	session string
	credit  int
}

func (f *fakeAgent) next(t *testing.T) *schedv1.LogsRelayRequest {
	t.Helper()
	select {
	case m := <-f.ra.out:
		return m.GetLogs()
	case <-time.After(5 * time.Second):
		t.Fatal("nothing sent to the agent")
		return nil
	}
}

// TestLiveLogsFlowControl: the scheduler grants the agent credit only as
// the caller takes chunks: a caller that takes nothing gets the agent no
// credit past the window; an agent that sends past its credit ends the
// read; a caller that goes away cancels the read on the agent.
func TestLiveLogsFlowControl(t *testing.T) {
	var r execRelay
	ra := r.attach("i-1")
	s := &Server{}
	release := make(chan struct{})
	var mu sync.Mutex
	taken := 0
	send := func([]byte) error {
		<-release
		mu.Lock()
		taken++
		mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.liveLogs(ctx, ra, &schedv1.TaskLogsRequest{Id: "j.0.0", Follow: true}, "alice", send)
	}()
	f := &fakeAgent{ra: ra}
	open := f.next(t)
	if open.GetOpen().GetWindow() != logWindow || open.GetOpen().GetPrincipal() != "alice" {
		t.Fatalf("open: %v", open)
	}
	for range logWindow {
		ra.deliverLogs(&schedv1.LogsRelayChunk{Session: open.GetSession(), Data: []byte("x")})
	}
	select {
	case m := <-ra.out:
		t.Fatalf("credit granted while the caller took nothing: %v", m)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	m := f.next(t)
	if m.GetCredit() != logWindow/2 {
		t.Errorf("credit %d after the caller took half the window", m.GetCredit())
	}
	// An agent past its credit (window + slack) ends the read.
	for range logBuffer + 1 {
		ra.deliverLogs(&schedv1.LogsRelayChunk{Session: open.GetSession(), Data: []byte("y")})
	}
	cancel()
	select {
	case err := <-done:
		if status.Code(err) != codes.Internal && status.Code(err) != codes.Canceled {
			t.Errorf("liveLogs: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("liveLogs did not end")
	}
	// Whichever ended it, the agent is told to stop.
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-ra.out:
			if m.GetLogs().GetCancel() && m.GetLogs().GetSession() == open.GetSession() {
				return
			}
		case <-deadline:
			t.Fatal("the agent was not told to stop the read")
		}
	}
}
