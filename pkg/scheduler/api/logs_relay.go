package api

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/apierr"
	"github.com/titus-agent/titus-agent/pkg/audit"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// Bounds of log reads (titus-scheduler task logs).
const (
	// logWindow is the chunks (of at most 32 KiB) an agent may send a
	// read before the scheduler grants more, as the caller takes them.
	logWindow = 16
	// logBuffer is what the scheduler holds of one read: the window and
	// some slack; an agent that sends past its credit ends the read.
	logBuffer = logWindow + 4
	// DefaultMaxLogReadsPerCaller and DefaultMaxLogReads bound the log
	// reads (live and from the archive) open at once per principal and in
	// total.
	DefaultMaxLogReadsPerCaller = 8
	DefaultMaxLogReads          = 256
)

// LogKey names one stream of one task's archived logs.
type LogKey struct {
	Application, JobID, TaskID string
	Stderr                     bool
}

// ArchiveRead says how to read a task's logs from the archive.
type ArchiveRead struct {
	// Since skips objects last written before it (zero: none).
	Since time.Time
	// Follow keeps reading new objects until the task's final one.
	Follow bool
	// TaskEnded, asked between a follow's listings, reports whether the
	// task has ended, and when (zero: unknown, long ago). nil: it has.
	TaskEnded func(ctx context.Context) (bool, time.Time)
}

// LogArchive reads ended tasks' logs from the log bucket.
type LogArchive interface {
	// Read sends the task's stream oldest first, skipping objects last
	// written before r.Since; send may block, and must not keep the
	// slice. Following, it returns why the follow ended. Errors wrap
	// errdefs.ErrNotFound when the bucket has nothing of the task.
	Read(ctx context.Context, key LogKey, r ArchiveRead, send func([]byte) error) (string, error)
	// Source names where Read reads key from (s3://bucket/prefix...).
	Source(key LogKey) string
	// Applications returns the applications under which the bucket holds
	// logs of task taskID of job jobID, asking only about those may
	// accepts (the ones the caller may read).
	Applications(ctx context.Context, jobID, taskID string, may func(app string) bool) ([]string, error)
}

// SetLogArchive sets where logs of tasks whose agent is gone are read
// (nil: nowhere; such reads fail with FailedPrecondition).
func (s *Server) SetLogArchive(a LogArchive) { s.archive = a }

// SetLogReadLimits bounds the log reads open at once per caller and in
// total (0: the defaults).
func (s *Server) SetLogReadLimits(perCaller, total int) {
	s.logReads.mu.Lock()
	defer s.logReads.mu.Unlock()
	s.logReads.perCaller, s.logReads.total = perCaller, total
}

// logReads counts the log reads open now.
type logReads struct {
	mu               sync.Mutex
	perCaller, total int
	by               map[string]int
	n                int
}

func (l *logReads) acquire(who string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	per, total := l.perCaller, l.total
	if per <= 0 {
		per = DefaultMaxLogReadsPerCaller
	}
	if total <= 0 {
		total = DefaultMaxLogReads
	}
	if l.by[who] >= per {
		return status.Errorf(codes.ResourceExhausted, "too many log reads: %s has %d open (logs.maxReadsPerCaller); end one first", who, per)
	}
	if l.n >= total {
		return status.Errorf(codes.ResourceExhausted, "too many log reads: the scheduler serves %d at once (logs.maxReads); try again", total)
	}
	if l.by == nil {
		l.by = map[string]int{}
	}
	l.by[who]++
	l.n++
	return nil
}

func (l *logReads) release(who string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.by[who]--; l.by[who] <= 0 {
		delete(l.by, who)
	}
}

// logSession is the scheduler's end of one relayed read.
type logSession struct {
	ch      chan *schedv1.LogsRelayChunk
	overrun chan struct{} // closed when the agent sent past its credit
}

func (ra *relayAgent) openLogs(session string) *logSession {
	ls := &logSession{ch: make(chan *schedv1.LogsRelayChunk, logBuffer), overrun: make(chan struct{})}
	ra.mu.Lock()
	if ra.logs == nil {
		ra.logs = map[string]*logSession{}
	}
	ra.logs[session] = ls
	ra.mu.Unlock()
	return ls
}

func (ra *relayAgent) closeLogs(session string) {
	ra.mu.Lock()
	delete(ra.logs, session)
	ra.mu.Unlock()
}

// deliverLogs hands a chunk to its read. It never blocks the agent's
// stream: a chunk for a read that is gone cancels it on the agent, and an
// agent past its credit ends the read.
func (ra *relayAgent) deliverLogs(m *schedv1.LogsRelayChunk) {
	ra.mu.Lock()
	ls := ra.logs[m.GetSession()]
	ra.mu.Unlock()
	if ls == nil {
		if !m.GetEof() && m.GetErrorCode() == 0 {
			go ra.cancelLogs(m.GetSession())
		}
		return
	}
	select {
	case ls.ch <- m:
	default:
		ra.closeLogs(m.GetSession())
		close(ls.overrun)
		go ra.cancelLogs(m.GetSession())
	}
}

// sendLogs queues a message of a read for the agent, waiting for room.
func (ra *relayAgent) sendLogs(ctx context.Context, m *schedv1.LogsRelayRequest) error {
	select {
	case ra.out <- &schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Logs{Logs: m}}:
		return nil
	case <-ra.done:
		return status.Error(codes.Unavailable, "the task's agent disconnected")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cancelLogs tells the agent to stop a read. It waits for room on the
// stream (or its end): a lost cancel would leave the agent's reader
// waiting for credit until the stream ends.
func (ra *relayAgent) cancelLogs(session string) {
	_ = ra.sendLogs(context.Background(), &schedv1.LogsRelayRequest{Session: session, Cancel: true})
}

// taskIDRE is what a task id may look like before it names an object in
// the log bucket: <job id>.<index>.<attempt> of safe characters.
var taskIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.[0-9]{1,9}\.[0-9]{1,9}$`)

// TaskLogs streams a task's stdout or stderr: live from its agent over the
// agent's own stream, or from the log archive when the agent is gone or no
// longer has the task. It is allowed with task.logs on the job's
// application and audited, whether it was allowed or refused.
func (s *Server) TaskLogs(req *schedv1.TaskLogsRequest, stream grpc.ServerStreamingServer[schedv1.TaskLogsChunk]) error {
	ctx := stream.Context()
	rec := audit.Record{Time: time.Now(), Method: "TaskLogs", Action: string(authz.TaskLogs), TaskID: req.GetId(), Peer: peerAddr(ctx)}
	rec.JobID, _, _ = strings.Cut(req.GetId(), ".")
	if p, ok := authz.Principal(ctx); ok {
		rec.Principal = p.String()
	}
	what := logWhat(req)
	source, err := s.taskLogs(ctx, req, stream, &rec)
	rec.Ended = time.Now()
	err = apierr.ToGRPC(err)
	var msg string
	rec.Code, msg = authz.Outcome(err)
	if err != nil {
		rec.Message = what + ": " + msg
	} else {
		rec.Message = what + " from " + source
	}
	s.recordAudit(ctx, rec)
	return err
}

func logWhat(req *schedv1.TaskLogsRequest) string {
	w := "stdout"
	if req.GetStderr() {
		w = "stderr"
	}
	if req.GetFollow() {
		w += ", follow"
	}
	if req.GetSince() != nil {
		w += ", since " + req.GetSince().AsTime().UTC().Format(time.RFC3339)
	}
	if req.GetArchive() {
		w += ", archive"
	}
	return w
}

func (s *Server) taskLogs(ctx context.Context, req *schedv1.TaskLogsRequest, stream grpc.ServerStreamingServer[schedv1.TaskLogsChunk], rec *audit.Record) (string, error) {
	owner, ownerErr := s.core.JobOwner(rec.JobID)
	if ownerErr == nil {
		rec.Application = owner.Application
	}
	if err := authz.Refusal(ctx); err != nil {
		return "", err // refused at the door; audited here
	}
	if err := s.checkLeader(); err != nil {
		return "", err
	}
	if !taskIDRE.MatchString(req.GetId()) {
		return "", status.Errorf(codes.InvalidArgument, "task id %.140q: want <job id>.<index>.<attempt>", req.GetId())
	}
	// A job the scheduler no longer holds (removed after its retention):
	// its logs may still be in the bucket. The caller's right is checked
	// on the application the bucket files them under, below.
	forgotten := errdefs.IsNotFound(ownerErr) && s.archive != nil
	if !forgotten {
		if err := s.authorizeTask(ctx, authz.TaskLogs, req.GetId()); err != nil {
			return "", err
		}
		if ownerErr != nil {
			return "", apierr.ToGRPC(ownerErr)
		}
	}
	who := rec.Principal
	if who == "" {
		who = "anonymous"
	}
	if err := s.logReads.acquire(who); err != nil {
		return "", err
	}
	defer s.logReads.release(who)
	out := &logSender{stream: stream}
	if forgotten {
		app, err := s.forgottenApplication(ctx, rec.JobID, req.GetId())
		if err != nil {
			return "", err
		}
		rec.Application = app
		key := LogKey{Application: app, JobID: rec.JobID, TaskID: req.GetId(), Stderr: req.GetStderr()}
		return s.archiveLogs(ctx, req, key, nil, out)
	}
	t, err := s.core.Task(ctx, req.GetId())
	if err != nil {
		err = apierr.ToGRPC(err)
		if status.Code(err) != codes.NotFound || s.archive == nil {
			return "", err
		}
		// A task of a known job that the scheduler no longer (or does not
		// yet) holds: only the archive may have its logs.
		t = &model.Task{ID: req.GetId(), JobID: rec.JobID}
	}
	rec.AgentID = t.AgentID
	if ra := s.relay.agent(t.AgentID); t.AgentID != "" && ra != nil && !req.GetArchive() {
		source := "agent " + t.AgentID
		err := s.liveLogs(ctx, ra, req, rec.Principal, func(p []byte) error { return out.send(p, source) })
		// An agent that no longer has the task (it was removed from the
		// host) leaves the archive, if the read has not begun.
		if status.Code(err) != codes.NotFound || !out.first() || s.archive == nil {
			return source, err
		}
	}
	if s.archive == nil {
		if req.GetArchive() {
			return "", status.Error(codes.FailedPrecondition, "this scheduler has no log bucket (logs.s3.bucket)")
		}
		if t.AgentID == "" {
			return "", status.Errorf(codes.FailedPrecondition, "task %s was never placed on a host: it has no logs", t.ID)
		}
		return "", status.Errorf(codes.FailedPrecondition, "agent %s of task %s is not connected, and this scheduler has no log bucket (logs.s3.bucket)", t.AgentID, t.ID)
	}
	key := LogKey{Application: owner.Application, JobID: t.JobID, TaskID: t.ID, Stderr: req.GetStderr()}
	return s.archiveLogs(ctx, req, key, s.taskEnded(t.ID), out)
}

// logSender sends a read's chunks, naming the source on the first.
type logSender struct {
	stream grpc.ServerStreamingServer[schedv1.TaskLogsChunk]
	sent   bool
}

func (l *logSender) first() bool { return !l.sent }

func (l *logSender) send(p []byte, source string) error {
	c := &schedv1.TaskLogsChunk{Data: p}
	if !l.sent {
		c.Source, l.sent = source, true
	}
	return l.stream.Send(c)
}

// archiveLogs reads key from the archive; a follow's last message says
// why it ended. ended (nil: the task has ended) is asked between a
// follow's listings.
func (s *Server) archiveLogs(ctx context.Context, req *schedv1.TaskLogsRequest, key LogKey, ended func(context.Context) (bool, time.Time), out *logSender) (string, error) {
	r := ArchiveRead{Follow: req.GetFollow(), TaskEnded: ended}
	if req.GetSince() != nil {
		r.Since = req.GetSince().AsTime()
	}
	source := s.archive.Source(key)
	end, err := s.archive.Read(ctx, key, r, func(p []byte) error { return out.send(append([]byte(nil), p...), source) })
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return source, status.Error(codes.Canceled, "the caller went away; the read was ended")
		}
		return source, err
	}
	if out.first() || end != "" {
		c := &schedv1.TaskLogsChunk{End: end}
		if out.first() {
			c.Source = source
		}
		err = out.stream.Send(c)
	}
	return source, err
}

// taskEnded reports whether task id has ended, and when; a task the
// scheduler no longer holds has (at an unknown time).
func (s *Server) taskEnded(id string) func(context.Context) (bool, time.Time) {
	return func(ctx context.Context) (bool, time.Time) {
		t, err := s.core.Task(ctx, id)
		if err != nil {
			return errdefs.IsNotFound(err), time.Time{}
		}
		return t.State.Terminal(), t.Ended
	}
}

// forgottenApplication finds the application whose keys in the log bucket
// hold task taskID of job jobID, a job this scheduler no longer holds.
// Only the applications the caller may read logs of are asked about, so a
// caller learns nothing of another application's tasks: to them, those
// are not there: NotFound, as for a task that does not exist.
func (s *Server) forgottenApplication(ctx context.Context, jobID, taskID string) (string, error) {
	apps, err := s.archive.Applications(ctx, jobID, taskID, func(app string) bool {
		return s.authz.Authorize(ctx, authz.TaskLogs, app) == nil
	})
	if err != nil {
		return "", apierr.ToGRPC(err)
	}
	switch len(apps) {
	case 0:
		// Word for word what a task that does not exist answers, and what
		// a live task of another tenant answers (authorizeTask).
		return "", apierr.ToGRPC(core.TaskNotFound(taskID))
	case 1:
		return apps[0], nil
	}
	return "", status.Errorf(codes.FailedPrecondition, "the log bucket holds logs of task %s under more than one application (%s): ask an operator",
		taskID, strings.Join(apps, ", "))
}

// liveLogs relays one read from the agent ra, granting the agent credit
// as the caller takes its chunks.
func (s *Server) liveLogs(ctx context.Context, ra *relayAgent, req *schedv1.TaskLogsRequest, principal string, send func([]byte) error) error {
	session := uuid.NewString()
	ls := ra.openLogs(session)
	defer ra.closeLogs(session)
	open := &schedv1.LogsRelayOpen{TaskId: req.GetId(), Follow: req.GetFollow(), Stderr: req.GetStderr(), Since: req.GetSince(), Principal: principal, Window: logWindow}
	if err := ra.sendLogs(ctx, &schedv1.LogsRelayRequest{Session: session, Open: open}); err != nil {
		return err
	}
	taken := 0
	for {
		select {
		case m := <-ls.ch:
			if c := m.GetErrorCode(); c != 0 {
				return status.Error(codes.Code(c), m.GetError())
			}
			if m.GetEof() {
				return nil
			}
			if err := send(m.GetData()); err != nil {
				go ra.cancelLogs(session)
				return err
			}
			if taken++; taken >= logWindow/2 {
				if err := ra.sendLogs(ctx, &schedv1.LogsRelayRequest{Session: session, Credit: uint32(taken)}); err != nil {
					go ra.cancelLogs(session)
					return err
				}
				taken = 0
			}
		case <-ls.overrun:
			return status.Errorf(codes.Internal, "the agent sent more of the log than it was granted; the read was ended")
		case <-ra.done:
			return status.Error(codes.Unavailable, "the task's agent disconnected during the read")
		case <-ctx.Done():
			go ra.cancelLogs(session)
			if errors.Is(ctx.Err(), context.Canceled) {
				return status.Error(codes.Canceled, "the caller went away; the read was ended")
			}
			return fmt.Errorf("log read: %w", ctx.Err())
		}
	}
}
