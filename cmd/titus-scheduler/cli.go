package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/execterm"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
)

var opts struct {
	addr    string
	timeout time.Duration
	output  string
	tls     tlsconfig.Files
	token   string
}

// tokenEnv names the environment variable the bearer token is read from
// when --token is not given.
const tokenEnv = "TITUS_TOKEN"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "titus-scheduler",
		Short:         "Thin central scheduler for titus-agent hosts, and its job CLI",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&opts.addr, "addr", "127.0.0.1:7400", "scheduler address(es), comma-separated; the leader is found among them")
	pf.DurationVar(&opts.timeout, "timeout", 30*time.Second, "give up after this long")
	pf.StringVarP(&opts.output, "output", "o", "table", "table or json")
	pf.StringVar(&opts.tls.CAFile, "tls-ca", "", "dial with TLS, verifying the scheduler against this CA (PEM)")
	pf.StringVar(&opts.tls.CertFile, "tls-cert", "", "client certificate for mutual TLS (PEM)")
	pf.StringVar(&opts.tls.KeyFile, "tls-key", "", "private key of --tls-cert (PEM)")
	pf.StringVar(&opts.tls.ServerName, "tls-server-name", "", "name to verify in the scheduler's certificate (default: the host dialed)")
	pf.StringVar(&opts.token, "token", "", "bearer token (JWT) sent with every call (default: $"+tokenEnv+")")
	root.AddCommand(newServeCmd(), newJobCmd(), newTaskCmd(), newAgentCmd(), newAuditCmd())
	return root
}

// call runs fn against the first replica that is the leader.
func call(fn func(context.Context, schedv1.SchedulerClient) error) error {
	return callFor(opts.timeout, fn)
}

// callFor is call with its own deadline; 0: none (an exec session).
func callFor(timeout time.Duration, fn func(context.Context, schedv1.SchedulerClient) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), timeout)
	}
	defer cancel()
	if tok := cmp.Or(opts.token, os.Getenv(tokenEnv)); tok != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(tok))
	}
	creds, err := opts.tls.DialOption()
	if err != nil {
		return err
	}
	// Without a deadline (an exec session) a call is tried once per replica.
	retries := backoff.Policy{}
	if timeout > 0 {
		retries = cliRetry
	}
	err = callReplicas(ctx, strings.Split(opts.addr, ","), creds, retries, fn)
	if st, ok := status.FromError(err); ok && err != nil {
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return err
}

// cliRetry spaces the CLI's rounds over the replicas while every one
// answers Unavailable (no leader yet, a store that timed out, a replica
// restarting). Jittered, so a fleet of scripts does not retry in step.
var cliRetry = backoff.Policy{Base: 200 * time.Millisecond, Max: 2 * time.Second, Jitter: backoff.Equal}

// callReplicas runs fn against each address in turn until one answers
// other than Unavailable (the leader). While all answer Unavailable it
// starts over after a backoff delay, until ctx ends; the last error is
// returned. A zero policy tries each address once. A retried call may run
// twice if the first attempt's answer was lost after it took effect (a
// submitted job whose store write committed as it timed out), as with any
// client that retries.
func callReplicas(ctx context.Context, addrs []string, creds grpc.DialOption, p backoff.Policy, fn func(context.Context, schedv1.SchedulerClient) error) error {
	var err error
	for attempt := 0; ; attempt++ {
		for _, addr := range addrs {
			var cc *grpc.ClientConn
			cc, err = grpc.NewClient(strings.TrimSpace(addr), creds)
			if err != nil {
				return err
			}
			err = fn(ctx, schedv1.NewSchedulerClient(cc))
			cc.Close()
			if status.Code(err) != codes.Unavailable {
				return err
			}
		}
		if p.Base <= 0 {
			return err
		}
		d := p.Delay(attempt)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return err
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func table(w io.Writer, header string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func ts(t interface{ AsTime() time.Time }, valid bool) string {
	if !valid {
		return "-"
	}
	return t.AsTime().Local().Format(time.DateTime)
}

func jobKind(j *schedv1.Job) string {
	if b := j.Spec.GetBatch(); b != nil {
		return fmt.Sprintf("batch/%d", b.Size)
	}
	s := j.Spec.GetService()
	return fmt.Sprintf("service/%d<=%d<=%d", s.GetMin(), s.GetDesired(), s.GetMax())
}

func stateName(s fmt.Stringer, prefix string) string { return strings.TrimPrefix(s.String(), prefix) }

func printJobs(w io.Writer, jobs []*schedv1.Job) {
	var rows [][]string
	for _, j := range jobs {
		c := j.Counts
		rows = append(rows, []string{j.Id, j.Spec.Application, j.Spec.CapacityGroup, jobKind(j), stateName(j.State, "JOB_STATE_"),
			fmt.Sprintf("%d/%d/%d", c.GetPending(), c.GetLaunched(), c.GetRunning()),
			fmt.Sprintf("%d/%d/%d/%d", c.GetFinished(), c.GetFailed(), c.GetKilled(), c.GetLost()), ts(j.Created, j.Created != nil),
			fmt.Sprint(j.Revision), rolloutSummary(j), cmp.Or(j.QueuedReason, "-")})
	}
	table(w, "ID\tAPP\tGROUP\tKIND\tSTATE\tPEND/LAUNCH/RUN\tDONE/FAIL/KILL/LOST\tCREATED\tREV\tROLLOUT\tQUEUED BECAUSE", rows)
}

// rolloutSummary is a job's latest rollout in a few words.
func rolloutSummary(j *schedv1.Job) string {
	r := j.GetRollout()
	if r == nil {
		return "-"
	}
	s := fmt.Sprintf("%s %d->%d", stateName(r.State, "STATE_"), r.FromRevision, r.ToRevision)
	if r.State == schedv1.Rollout_STATE_PROGRESSING || r.State == schedv1.Rollout_STATE_PAUSED {
		s += fmt.Sprintf(" %d/%d updated", r.Updated, j.Spec.GetService().GetDesired())
	}
	return s
}

// printRollout shows a job's rollout in full.
func printRollout(w io.Writer, j *schedv1.Job) {
	r := j.GetRollout()
	if r == nil {
		fmt.Fprintf(w, "job %s: revision %d, no rollout yet\n", j.Id, j.Revision)
		return
	}
	fmt.Fprintf(w, "job %s: revision %d\nrollout: %s, revision %d -> %d\n", j.Id, j.Revision, stateName(r.State, "STATE_"), r.FromRevision, r.ToRevision)
	fmt.Fprintf(w, "tasks: %d of %d updated and available, %d of other revisions live, %d unavailable\n",
		r.Updated, j.Spec.GetService().GetDesired(), r.Old, r.Unavailable)
	fmt.Fprintf(w, "started: %s\nended: %s\n", ts(r.Started, r.Started != nil), ts(r.Ended, r.Ended != nil))
	if r.State == schedv1.Rollout_STATE_PROGRESSING {
		// What the automatic rollback counts (kept across leader changes).
		fmt.Fprintf(w, "consecutive failures of new tasks: %d", r.Failures)
		if r.LastFailure != "" {
			fmt.Fprintf(w, ", last: %s", r.LastFailure)
		}
		fmt.Fprintf(w, "\nlast progress: %s\n", ts(r.ProgressAt, r.ProgressAt != nil))
	}
	if r.Reason != "" {
		fmt.Fprintf(w, "reason: %s\n", r.Reason)
	}
}

// readJobFile reads and parses the job file named by -f (- for stdin).
func readJobFile(cmd *cobra.Command, file string) (*schedv1.JobSpec, error) {
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(cmd.InOrStdin())
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, err
	}
	return parseJobFile(file, b)
}

func newJobCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "job", Short: "Submit, list, inspect, kill and scale jobs"}
	var file, idemKey string
	submit := &cobra.Command{
		Use: "submit -f job.yaml", Short: "Submit a job described in YAML (or JSON)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := readJobFile(cmd, file)
			if err != nil {
				return err
			}
			// One key per invocation, sent again on every retry: a retried
			// submit whose first answer was lost returns the same job.
			if idemKey == "" {
				idemKey = uuid.NewString()
			}
			req := &schedv1.SubmitJobRequest{Spec: spec, IdempotencyKey: idemKey}
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				resp, err := c.SubmitJob(ctx, req)
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				fmt.Fprintln(cmd.OutOrStdout(), resp.JobId)
				return nil
			})
		},
	}
	submit.Flags().StringVarP(&file, "file", "f", "", "job file (- for stdin)")
	submit.Flags().StringVar(&idemKey, "idempotency-key", "", "the same key and job file give the same job for a day, however often submitted (default: a new key per invocation, resent on its retries)")
	_ = submit.MarkFlagRequired("file")

	var all bool
	ls := &cobra.Command{
		Use: "ls", Short: "List jobs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				resp := &schedv1.ListJobsResponse{}
				for token := ""; ; {
					page, err := c.ListJobs(ctx, &schedv1.ListJobsRequest{All: all, PageToken: token})
					if err != nil {
						return err
					}
					resp.Jobs = append(resp.Jobs, page.Jobs...)
					if token = page.NextPageToken; token == "" {
						break
					}
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				printJobs(cmd.OutOrStdout(), resp.Jobs)
				return nil
			})
		},
	}
	ls.Flags().BoolVarP(&all, "all", "a", false, "include finished and killed jobs")

	get := &cobra.Command{
		Use: "get JOB", Short: "Show a job", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				j, err := c.GetJob(ctx, &schedv1.GetJobRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), j)
				}
				printJobs(cmd.OutOrStdout(), []*schedv1.Job{j})
				if len(j.GetSpec().GetService().GetTargetGroups()) == 0 {
					return nil
				}
				// Where each live task stands in the job's target groups.
				var tasks []*schedv1.Task
				for token := ""; ; {
					resp, err := c.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: j.Id, PageToken: token})
					if err != nil {
						return err
					}
					tasks = append(tasks, resp.Tasks...)
					if token = resp.NextPageToken; token == "" {
						break
					}
				}
				fmt.Fprintln(cmd.OutOrStdout())
				printTargets(cmd.OutOrStdout(), tasks)
				return nil
			})
		},
	}
	kill := &cobra.Command{
		Use: "kill JOB", Short: "Kill a job and all its tasks", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				j, err := c.KillJob(ctx, &schedv1.KillJobRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), j)
				}
				printJobs(cmd.OutOrStdout(), []*schedv1.Job{j})
				return nil
			})
		},
	}
	var minN, desired, maxN uint32
	scale := &cobra.Command{
		Use: "scale JOB --desired N [--min N --max N]", Short: "Scale a service job", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				j, err := c.GetJob(ctx, &schedv1.GetJobRequest{Id: args[0]})
				if err != nil {
					return err
				}
				s := j.Spec.GetService()
				req := &schedv1.ScaleJobRequest{Id: args[0], Min: s.GetMin(), Desired: s.GetDesired(), Max: s.GetMax()}
				if cmd.Flags().Changed("min") {
					req.Min = minN
				}
				if cmd.Flags().Changed("desired") {
					req.Desired = desired
				}
				if cmd.Flags().Changed("max") {
					req.Max = maxN
				}
				j, err = c.ScaleJob(ctx, req)
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), j)
				}
				printJobs(cmd.OutOrStdout(), []*schedv1.Job{j})
				return nil
			})
		},
	}
	scale.Flags().Uint32Var(&minN, "min", 0, "minimum instances")
	scale.Flags().Uint32Var(&desired, "desired", 0, "desired instances")
	scale.Flags().Uint32Var(&maxN, "max", 0, "maximum instances")
	var updateFile string
	update := &cobra.Command{
		Use: "update JOB -f job.yaml", Short: "Roll a service job out to a new task template", Args: cobra.ExactArgs(1),
		Long: "Update a service job's task template (and its retry, disruption_budget and update policies) from a job file.\n" +
			"A new template is a new revision, rolled out under the job's update strategy; sizes are kept (use scale).",
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := readJobFile(cmd, updateFile)
			if err != nil {
				return err
			}
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				j, err := c.UpdateJob(ctx, &schedv1.UpdateJobRequest{Id: args[0], Spec: spec})
				if err != nil {
					return err
				}
				return showRollout(cmd, j)
			})
		},
	}
	update.Flags().StringVarP(&updateFile, "file", "f", "", "job file (- for stdin)")
	_ = update.MarkFlagRequired("file")
	cmd.AddCommand(submit, ls, get, kill, scale, update, newRolloutCmd())
	return cmd
}

// showRollout prints a job's rollout, or the whole job with -o json.
func showRollout(cmd *cobra.Command, j *schedv1.Job) error {
	if opts.output == "json" {
		return printJSON(cmd.OutOrStdout(), j)
	}
	printRollout(cmd.OutOrStdout(), j)
	return nil
}

func newRolloutCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rollout", Short: "Show, pause, resume or undo a service job's rollout"}
	show := func(ctx context.Context, c schedv1.SchedulerClient, id string) (*schedv1.Job, error) {
		return c.GetJob(ctx, &schedv1.GetJobRequest{Id: id})
	}
	act := func(a schedv1.RolloutJobRequest_Action) func(context.Context, schedv1.SchedulerClient, string) (*schedv1.Job, error) {
		return func(ctx context.Context, c schedv1.SchedulerClient, id string) (*schedv1.Job, error) {
			return c.RolloutJob(ctx, &schedv1.RolloutJobRequest{Id: id, Action: a})
		}
	}
	for _, sub := range []struct {
		use, short string
		rpc        func(context.Context, schedv1.SchedulerClient, string) (*schedv1.Job, error)
	}{
		{"status JOB", "Show the job's latest rollout", show},
		{"pause JOB", "Pause the rollout: no more tasks are replaced", act(schedv1.RolloutJobRequest_ACTION_PAUSE)},
		{"resume JOB", "Resume a paused rollout", act(schedv1.RolloutJobRequest_ACTION_RESUME)},
		{"undo JOB", "Roll back to the revision the latest rollout came from", act(schedv1.RolloutJobRequest_ACTION_UNDO)},
	} {
		cmd.AddCommand(&cobra.Command{
			Use: sub.use, Short: sub.short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
					j, err := sub.rpc(ctx, c, args[0])
					if err != nil {
						return err
					}
					return showRollout(cmd, j)
				})
			},
		})
	}
	return cmd
}

func printTasks(w io.Writer, tasks []*schedv1.Task) {
	var rows [][]string
	for _, t := range tasks {
		health := ""
		if h := t.GetHealth(); h.GetStatus() != 0 {
			health = stateName(h.GetStatus(), "HEALTH_STATUS_")
		}
		rows = append(rows, []string{t.Id, t.AgentId, t.Az, fmt.Sprint(t.Revision), stateName(t.State, "TASK_STATE_"), health, t.Reason, fmt.Sprint(t.ExitCode), ts(t.Placed, t.Placed != nil)})
	}
	table(w, "ID\tAGENT\tAZ\tREV\tSTATE\tHEALTH\tREASON\tEXIT\tPLACED", rows)
}

// printTargets shows each task's registration in each target group.
func printTargets(w io.Writer, tasks []*schedv1.Task) {
	var rows [][]string
	for _, t := range tasks {
		for _, r := range t.GetTargets() {
			since := r.GetRegistered()
			if r.GetDeregistered() != nil {
				since = r.GetDeregistered()
			}
			health := cmp.Or(r.LbHealth, "-")
			if r.LbHealthReason != "" {
				health += " (" + r.LbHealthReason + ")"
			}
			rows = append(rows, []string{t.Id, cmp.Or(t.Ip, "-"), r.Arn, fmt.Sprint(r.Port), r.State, health, ts(since, since != nil), cmp.Or(r.Error, "-")})
		}
	}
	table(w, "TASK\tIP\tTARGET GROUP\tPORT\tLB STATE\tLB HEALTH\tSINCE\tERROR", rows)
}

func newTaskCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "task", Short: "List, inspect and kill tasks"}
	var job string
	var all bool
	ls := &cobra.Command{
		Use: "ls [--job JOB] [-a]", Short: "List live tasks (with --job -a: every attempt)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				resp := &schedv1.ListTasksResponse{}
				for token := ""; ; {
					page, err := c.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: job, All: all, PageToken: token})
					if err != nil {
						return err
					}
					resp.Tasks = append(resp.Tasks, page.Tasks...)
					if token = page.NextPageToken; token == "" {
						break
					}
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				printTasks(cmd.OutOrStdout(), resp.Tasks)
				return nil
			})
		},
	}
	ls.Flags().StringVar(&job, "job", "", "only this job's tasks")
	ls.Flags().BoolVarP(&all, "all", "a", false, "include ended attempts (needs --job)")
	one := func(use, short string, rpc func(context.Context, schedv1.SchedulerClient, string) (*schedv1.Task, error)) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
					t, err := rpc(ctx, c, args[0])
					if err != nil {
						return err
					}
					if opts.output == "json" {
						return printJSON(cmd.OutOrStdout(), t)
					}
					printTasks(cmd.OutOrStdout(), []*schedv1.Task{t})
					return nil
				})
			},
		}
	}
	get := one("get TASK", "Show a task", func(ctx context.Context, c schedv1.SchedulerClient, id string) (*schedv1.Task, error) {
		return c.GetTask(ctx, &schedv1.GetTaskRequest{Id: id})
	})
	kill := one("kill TASK", "Kill a task (a service job replaces it)", func(ctx context.Context, c schedv1.SchedulerClient, id string) (*schedv1.Task, error) {
		return c.KillTask(ctx, &schedv1.KillTaskRequest{Id: id})
	})
	cmd.AddCommand(ls, get, kill, newTaskExecCmd(), newTaskLogsCmd())
	return cmd
}

func newTaskLogsCmd() *cobra.Command {
	var follow, stderr, archive bool
	var since string
	cmd := &cobra.Command{
		Use:   "logs TASK [-f] [--stderr] [--since DURATION|TIME] [--s3]",
		Short: "Print a task's stdout (or stderr), from its agent or, once it is gone, from S3 (audited; needs task.logs)",
		Long: `Print a task's stdout (or, with --stderr, its stderr). While the task's agent
is connected, the log is read on the agent's host and relayed through the
scheduler and that agent's own stream (no port opens on the host); -f
follows it until the task ends. When the task or its host is gone, or the
scheduler no longer holds its job, the log is read from the log bucket (S3)
instead; -f there reads new files as they are shipped, until the task's
final file (or, once the task has ended, until none came for
logs.s3.followGrace), and says on stderr how it ended. The policy must give the caller
task.logs on the job's application (admins, operators, the application's
owners and debuggers); every read is in the audit trail. --since takes a
duration (10m) or a time (RFC 3339) and skips whole log files last written
before it.`,
		Example: `  titus-scheduler task logs -f web.0.0
  titus-scheduler task logs --stderr --since 1h batch.3.0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &schedv1.TaskLogsRequest{Id: args[0], Follow: follow, Stderr: stderr, Archive: archive}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			return callFor(0, func(ctx context.Context, c schedv1.SchedulerClient) error {
				s, err := c.TaskLogs(ctx, req)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				wrote := false
				for {
					m, err := s.Recv()
					if err == io.EOF {
						return nil
					}
					if err != nil {
						if wrote {
							// Not retried on another replica: the log would be printed twice.
							st := status.Convert(err)
							return fmt.Errorf("the log read ended early: %s: %s", st.Code(), st.Message())
						}
						return err
					}
					if m.GetSource() != "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "# %s of %s from %s\n", map[bool]string{false: "stdout", true: "stderr"}[stderr], args[0], m.GetSource())
					}
					if len(m.GetData()) > 0 {
						wrote = true
						if _, err := out.Write(m.GetData()); err != nil {
							return err
						}
					}
					if m.GetEnd() != "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "# %s\n", m.GetEnd())
					}
				}
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing until the task ends")
	cmd.Flags().BoolVar(&stderr, "stderr", false, "the task's stderr instead of its stdout")
	cmd.Flags().BoolVar(&archive, "s3", false, "read the shipped files from S3 even while the agent has the task (it keeps only its newest files)")
	cmd.Flags().StringVar(&since, "since", "", "only log files last written after this: a duration before now (10m, 2h) or a time (RFC 3339)")
	return cmd
}

// parseSince reads --since: a duration before now, or an RFC 3339 time.
func parseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %s: a duration before now must not be negative", v)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration (10m, 2h) or an RFC 3339 time (2026-12-03T09:00:00Z)", v)
	}
	return t, nil
}

func newTaskExecCmd() *cobra.Command {
	var interactive, ttyOn bool
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] TASK -- COMMAND...",
		Short: "Run a command inside a task, relayed to its agent (audited; needs task.debug)",
		Long: `Run a command inside a running task: the session is relayed through the
scheduler and the agent's own stream (no port opens on the host). The
policy must give the caller task.debug on the job's application (admins,
operators, the application's owners and debuggers); every session is in
the audit trail with its command and exit code. -i streams stdin, -t gives
the command a terminal; the exit code is the command's.`,
		Example: `  titus-scheduler task exec -it web.0.0 -- sh`,
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var code int
			err := callFor(0, func(ctx context.Context, c schedv1.SchedulerClient) error {
				s, err := c.ExecTask(ctx)
				if err != nil {
					return err
				}
				code, err = execterm.Run(s, execterm.Options{TaskID: args[0], Args: args[1:], TTY: ttyOn, Stdin: interactive},
					execterm.OSTerminal{File: os.Stdin}, os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr())
				return err
			})
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "stream stdin to the command")
	cmd.Flags().BoolVarP(&ttyOn, "tty", "t", false, "give the command a terminal")
	return cmd
}

// exitError is a command's exit code, passed on as the CLI's.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("command exited %d", e.code) }

func printAgents(w io.Writer, agents []*schedv1.Agent) {
	var rows [][]string
	for _, a := range agents {
		var flags []string
		for _, f := range []struct {
			on   bool
			name string
		}{{a.Connected, "connected"}, {!a.Healthy, "unhealthy"}, {a.Drained, "drained"}, {a.Quarantined, "quarantined"}, {a.Lost, "lost"}} {
			if f.on {
				flags = append(flags, f.name)
			}
		}
		var labels []string
		for k, v := range a.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		rows = append(rows, []string{a.Id, a.Az, a.InstanceType, strings.Join(flags, ","), fmt.Sprint(a.Tasks),
			fmt.Sprintf("%d/%dm", a.Used.GetCpuMillicores(), a.Capacity.GetCpuMillicores()),
			fmt.Sprintf("%d/%dMiB", a.Used.GetMemoryMib(), a.Capacity.GetMemoryMib()), strings.Join(labels, ","), drainSummary(a)})
	}
	table(w, "ID\tAZ\tTYPE\tSTATE\tTASKS\tCPU\tMEMORY\tLABELS\tDRAIN", rows)
}

// drainSummary is a drained agent's progress: the service tasks still to
// move and what holds the next move back.
func drainSummary(a *schedv1.Agent) string {
	switch {
	case !a.Drained:
		return "-"
	case a.DrainRemaining == 0:
		return "done"
	case a.DrainBlocked != "":
		return fmt.Sprintf("%d to move, %s", a.DrainRemaining, a.DrainBlocked)
	}
	return fmt.Sprintf("%d to move", a.DrainRemaining)
}

// waitDrained polls the agents named in first until none has a service
// task left to move, printing each change of their progress.
func waitDrained(cmd *cobra.Command, first []*schedv1.Agent, limit time.Duration) error {
	ids := map[string]bool{}
	for _, a := range first {
		ids[a.Id] = true
	}
	deadline := time.Now().Add(limit)
	last := ""
	for {
		var agents []*schedv1.Agent
		err := call(func(ctx context.Context, c schedv1.SchedulerClient) error {
			for token := ""; ; {
				page, err := c.ListAgents(ctx, &schedv1.ListAgentsRequest{PageToken: token})
				if err != nil {
					return err
				}
				for _, a := range page.Agents {
					if ids[a.Id] {
						agents = append(agents, a)
					}
				}
				if token = page.NextPageToken; token == "" {
					return nil
				}
			}
		})
		if err != nil {
			return err
		}
		left := 0
		var lines []string
		for _, a := range agents {
			left += int(a.DrainRemaining)
			lines = append(lines, a.Id+": "+drainSummary(a))
		}
		if now := strings.Join(lines, "; "); now != last {
			fmt.Fprintf(cmd.OutOrStdout(), "%s %d to move: %s\n", time.Now().Format(time.TimeOnly), left, now)
			last = now
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drain not done after %s: %d service tasks still to move", limit, left)
		}
		time.Sleep(time.Second)
	}
}

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "agent", Short: "List, drain and undrain agents"}
	ls := &cobra.Command{
		Use: "ls", Short: "List agents", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				resp := &schedv1.ListAgentsResponse{}
				for token := ""; ; {
					page, err := c.ListAgents(ctx, &schedv1.ListAgentsRequest{PageToken: token})
					if err != nil {
						return err
					}
					resp.Agents = append(resp.Agents, page.Agents...)
					if token = page.NextPageToken; token == "" {
						break
					}
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				printAgents(cmd.OutOrStdout(), resp.Agents)
				return nil
			})
		},
	}
	drainCmd := func(use, short string, drain bool) *cobra.Command {
		var labels []string
		var wait time.Duration
		c := &cobra.Command{
			Use: use, Short: short, Args: cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				req := &schedv1.DrainAgentRequest{Labels: map[string]string{}}
				if len(args) == 1 {
					req.Id = args[0]
				}
				for _, l := range labels {
					k, v, ok := strings.Cut(l, "=")
					if !ok {
						return fmt.Errorf("--label %q: want key=value", l)
					}
					req.Labels[k] = v
				}
				var agents []*schedv1.Agent
				err := call(func(ctx context.Context, c schedv1.SchedulerClient) error {
					rpc := c.DrainAgent
					if !drain {
						rpc = c.UndrainAgent
					}
					resp, err := rpc(ctx, req)
					if err != nil {
						return err
					}
					agents = resp.Agents
					if opts.output == "json" {
						return printJSON(cmd.OutOrStdout(), resp)
					}
					printAgents(cmd.OutOrStdout(), resp.Agents)
					return nil
				})
				if err != nil || !drain || wait <= 0 {
					return err
				}
				return waitDrained(cmd, agents, wait)
			},
		}
		c.Flags().StringSliceVar(&labels, "label", nil, "select agents by label key=value instead of an id")
		if drain {
			c.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for every service task to move off, printing progress and what blocks it")
			c.Flags().Lookup("wait").NoOptDefVal = "30m"
		}
		return c
	}
	cmd.AddCommand(ls, drainCmd("drain [AGENT] [--label k=v]", "Stop placing on agents and move their service tasks", true),
		drainCmd("undrain [AGENT] [--label k=v]", "Place on agents again", false))
	return cmd
}

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read the audit trail of mutating calls"}
	var job, principal string
	ls := &cobra.Command{
		Use: "ls [--job JOB] [--principal P]", Short: "List audited calls, oldest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(func(ctx context.Context, c schedv1.SchedulerClient) error {
				resp := &schedv1.ListAuditResponse{}
				for token := ""; ; {
					page, err := c.ListAudit(ctx, &schedv1.ListAuditRequest{JobId: job, Principal: principal, PageToken: token})
					if err != nil {
						return err
					}
					resp.Records = append(resp.Records, page.Records...)
					if token = page.NextPageToken; token == "" {
						break
					}
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				var rows [][]string
				for _, r := range resp.Records {
					target := cmp.Or(r.TaskId, r.JobId, r.AgentId, "-")
					rows = append(rows, []string{ts(r.Time, r.Time != nil), r.Principal, r.Method, cmp.Or(r.Application, "-"), target, r.Code, cmp.Or(r.Message, "-")})
				}
				table(cmd.OutOrStdout(), "TIME\tPRINCIPAL\tMETHOD\tAPP\tTARGET\tRESULT\tMESSAGE", rows)
				return nil
			})
		},
	}
	ls.Flags().StringVar(&job, "job", "", "only calls on this job")
	ls.Flags().StringVar(&principal, "principal", "", "only calls by this principal (as the trail shows it)")
	cmd.AddCommand(ls)
	return cmd
}
