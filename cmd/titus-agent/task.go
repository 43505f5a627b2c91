package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/execterm"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func newTaskCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "task", Short: "Launch, inspect, kill and debug tasks"}
	cmd.AddCommand(newTaskRunCmd(), newTaskLsCmd(), newTaskGetCmd(), newTaskKillCmd(), newTaskLogsCmd(), newTaskExecCmd(), newTaskEventsCmd(), newTaskInspectCmd(), newTaskTopCmd())
	return cmd
}

func newTaskRunCmd() *cobra.Command {
	var (
		file, id, owner, role, grace, maxRuntime string
		env, labels, sgs, subnets                []string
		secretFiles, secretEnv                   []string
		cpu, mem, disk, mbps, pids               int64
		wait                                     bool
	)
	cmd := &cobra.Command{
		Use:   "run [IMAGE [-- COMMAND...]]",
		Short: "Launch a task from flags or a spec file (-f)",
		Example: `  titus-agent task run --owner me@example.com 127.0.0.1:5000/busybox:latest -- sh -c 'echo hi'
  titus-agent task run -f task.yaml --wait`,
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := &task.Spec{}
			if file != "" {
				b, err := readFileOrStdin(file)
				if err != nil {
					return err
				}
				if err := yaml.UnmarshalStrict(b, spec); err != nil {
					return fmt.Errorf("spec %s: %w", file, err)
				}
			}
			if len(args) > 0 {
				spec.Image = args[0]
				if len(args) > 1 {
					spec.Command = args[1:]
				}
			}
			f := cmd.Flags()
			if f.Changed("id") || spec.ID == "" {
				spec.ID = id
			}
			if spec.ID == "" {
				spec.ID = newID()
			}
			if f.Changed("owner") || spec.OwnerEmail == "" {
				spec.OwnerEmail = owner
			}
			if f.Changed("role") {
				spec.IAMRoleARN = role
			}
			for flag, dst := range map[string]*int64{"cpu": &spec.Resources.CPUMillicores, "memory": &spec.Resources.MemoryMiB, "disk": &spec.Resources.DiskMiB, "network-mbps": &spec.Resources.NetworkMbps, "pids": &spec.Resources.Pids} {
				if f.Changed(flag) {
					v, _ := f.GetInt64(flag)
					*dst = v
				}
			}
			if f.Changed("gpus") {
				n, _ := f.GetInt32("gpus")
				spec.Resources.GPUs = n
			}
			if f.Changed("grace") {
				d, err := time.ParseDuration(grace)
				if err != nil {
					return fmt.Errorf("--grace: %w", err)
				}
				spec.KillGracePeriod = d
			}
			if f.Changed("max-runtime") {
				d, err := time.ParseDuration(maxRuntime)
				if err != nil {
					return fmt.Errorf("--max-runtime: %w", err)
				}
				spec.MaxRuntime = d
			}
			if err := mergeKV(&spec.Env, env, "--env"); err != nil {
				return err
			}
			if err := mergeKV(&spec.Labels, labels, "--label"); err != nil {
				return err
			}
			if err := addSecrets(spec, secretFiles, task.SecretAsFile); err != nil {
				return err
			}
			if err := addSecrets(spec, secretEnv, task.SecretAsEnv); err != nil {
				return err
			}
			spec.Network.SecurityGroupIDs = append(spec.Network.SecurityGroupIDs, sgs...)
			spec.Network.SubnetIDs = append(spec.Network.SubnetIDs, subnets...)
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				var events agentv1.Agent_WatchEventsClient
				if wait {
					var err error
					if events, err = c.WatchEvents(ctx, &agentv1.WatchEventsRequest{TaskId: spec.ID}); err != nil {
						return err
					}
				}
				resp, err := c.LaunchTask(ctx, &agentv1.LaunchTaskRequest{Spec: task.ToProto(spec)})
				if err != nil {
					return err
				}
				if !wait {
					if opts.output == "json" {
						return printJSON(cmd.OutOrStdout(), resp.GetTask())
					}
					fmt.Fprintln(cmd.OutOrStdout(), resp.GetTask().GetSpec().GetId())
					return nil
				}
				return waitFinal(ctx, cmd.OutOrStdout(), c, events, spec.ID)
			})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "task spec (YAML or JSON, fields as in pkg/task.Spec); - for stdin")
	f.StringVar(&id, "id", "", "task id (default: generated)")
	f.StringVar(&owner, "owner", os.Getenv("TITUS_OWNER"), "owner email (required)")
	f.StringVar(&role, "role", "", "IAM role ARN for the task")
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable K=V (repeatable)")
	f.StringArrayVarP(&labels, "label", "l", nil, "label K=V (repeatable)")
	f.StringArrayVar(&secretFiles, "secret", nil, "secret file NAME=FROM at /run/secrets/NAME, fetched with --role (repeatable; docs/task-spec.md#secrets)")
	f.StringArrayVar(&secretEnv, "secret-env", nil, "secret environment variable NAME=FROM, fetched with --role (repeatable)")
	f.StringSliceVar(&sgs, "sg", nil, "security group id (repeatable)")
	f.StringSliceVar(&subnets, "subnet", nil, "subnet id (repeatable)")
	f.Int64Var(&cpu, "cpu", 0, "CPU in millicores (default 1000)")
	f.Int64Var(&mem, "memory", 0, "memory in MiB (default 512)")
	f.Int64Var(&disk, "disk", 0, "disk quota in MiB (0 = none)")
	f.Int64Var(&mbps, "network-mbps", 0, "bandwidth limit in Mbps (0 = none)")
	f.Int64Var(&pids, "pids", 0, "process limit (default 1024)")
	f.Int32("gpus", 0, "whole GPUs of the task's own (docs/gpus.md)")
	f.StringVar(&grace, "grace", "", "kill grace period, e.g. 10s")
	f.StringVar(&maxRuntime, "max-runtime", "", "kill the task after this long, e.g. 1h")
	f.BoolVarP(&wait, "wait", "w", false, "wait for the task to end; exit with its exit code")
	addOutputFlag(cmd)
	return cmd
}

func waitFinal(ctx context.Context, out io.Writer, c agentv1.AgentClient, events agentv1.Agent_WatchEventsClient, id string) error {
	for {
		t, err := c.GetTask(ctx, &agentv1.GetTaskRequest{Id: id})
		if err != nil {
			return err
		}
		if task.StateFromProto(t.GetState()).Terminal() {
			if opts.output == "json" {
				if err := printJSON(out, t); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "%s %s %s exit=%d %s\n", id, t.GetState().String()[len("TASK_STATE_"):], t.GetReason(), t.GetExitCode(), t.GetMessage())
			}
			if t.GetState() != agentv1.TaskState_TASK_STATE_FINISHED {
				code := int(t.GetExitCode())
				if code <= 0 || code > 255 {
					code = 1
				}
				return &cliError{msg: fmt.Sprintf("task %s ended %s (%s)", id, t.GetState(), t.GetReason()), code: code}
			}
			return nil
		}
		if _, err := events.Recv(); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
	}
}

func mergeKV(dst *map[string]string, kvs []string, flag string) error {
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("%s %q: want KEY=VALUE", flag, kv)
		}
		if *dst == nil {
			*dst = map[string]string{}
		}
		(*dst)[k] = v
	}
	return nil
}

// addSecrets adds NAME=FROM secrets references to spec (validation checks
// them with the rest of the spec).
func addSecrets(spec *task.Spec, kvs []string, as task.SecretAs) error {
	for _, kv := range kvs {
		name, from, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("--secret%s %q: want NAME=FROM (a Secrets Manager ARN[:JSONKEY] or an SSM parameter)", map[task.SecretAs]string{task.SecretAsEnv: "-env"}[as], kv)
		}
		spec.Secrets = append(spec.Secrets, task.SecretRef{Name: name, From: from, As: as})
	}
	return nil
}

func readFileOrStdin(p string) ([]byte, error) {
	if p == "-" {
		return io.ReadAll(io.LimitReader(os.Stdin, 4<<20))
	}
	return os.ReadFile(p)
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "task-" + hex.EncodeToString(b)
}

func stateName(s agentv1.TaskState) string {
	return strings.TrimPrefix(s.String(), "TASK_STATE_")
}

// healthName is a task's health status for tables: empty without a check.
func healthName(h *agentv1.TaskHealth) string {
	if h == nil || h.GetStatus() == agentv1.HealthStatus_HEALTH_STATUS_UNSPECIFIED {
		return ""
	}
	name := strings.TrimPrefix(h.GetStatus().String(), "HEALTH_STATUS_")
	return name[:1] + strings.ToLower(name[1:])
}

// healthLine is a task's health with the latest check's result.
func healthLine(h *agentv1.TaskHealth) string {
	line := healthName(h) + " since " + h.GetSince().AsTime().Local().Format("15:04:05")
	if c := h.GetChecked(); c != nil {
		result := "failed"
		if h.GetOk() {
			result = "passed"
		}
		line += fmt.Sprintf("; last check %s %s: %s", c.AsTime().Local().Format("15:04:05"), result, strings.ReplaceAll(h.GetOutput(), "\n", " "))
	}
	return line
}

func newTaskEventsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events [ID]",
		Short: "Stream task transitions and health changes (of one task, or all)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &agentv1.WatchEventsRequest{}
			if len(args) == 1 {
				req.TaskId = args[0]
			}
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				events, err := c.WatchEvents(ctx, req)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				for {
					ev, err := events.Recv()
					if err != nil {
						return err
					}
					if opts.output == "json" {
						if err := printJSON(out, ev); err != nil {
							return err
						}
						continue
					}
					tr := ev.GetTransition()
					if ev.GetHealthChanged() {
						fmt.Fprintf(out, "%s %s health %s\n", time.Now().Format("15:04:05.000"), ev.GetTaskId(), healthLine(ev.GetHealth()))
						continue
					}
					fmt.Fprintf(out, "%s %s %s %s %s\n", tr.GetTime().AsTime().Local().Format("15:04:05.000"), ev.GetTaskId(),
						stateName(tr.GetState()), tr.GetReason(), tr.GetMessage())
				}
			})
		},
	}
	addOutputFlag(cmd)
	return cmd
}

func newTaskLsCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List tasks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				resp, err := c.ListTasks(ctx, &agentv1.ListTasksRequest{All: all})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				tw := newTable(cmd.OutOrStdout(), "ID", "STATE", "HEALTH", "REASON", "EXIT", "PID", "IP", "IMAGE", "AGE")
				for _, t := range resp.GetTasks() {
					age := ""
					if tr := t.GetTransitions(); len(tr) > 0 {
						age = time.Since(tr[0].GetTime().AsTime()).Round(time.Second).String()
					}
					tw.row(t.GetSpec().GetId(), stateName(t.GetState()), healthName(t.GetHealth()), t.GetReason(), fmt.Sprint(t.GetExitCode()),
						fmt.Sprint(t.GetPid()), t.GetNetwork().GetIpv4(), t.GetSpec().GetImage(), age)
				}
				tw.flush()
				return nil
			})
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include finished tasks")
	addOutputFlag(cmd)
	return cmd
}

func newTaskGetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show one task with its transitions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				t, err := c.GetTask(ctx, &agentv1.GetTaskRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), t)
				}
				out := cmd.OutOrStdout()
				s := t.GetSpec()
				fmt.Fprintf(out, "ID:      %s\nOwner:   %s\nImage:   %s\nCommand: %s\nState:   %s %s %s\nExit:    %d\nPID:     %d\n",
					s.GetId(), s.GetOwnerEmail(), s.GetImage(), strings.Join(append(s.GetEntrypoint(), s.GetCommand()...), " "),
					stateName(t.GetState()), t.GetReason(), t.GetMessage(), t.GetExitCode(), t.GetPid())
				if h := t.GetHealth(); h != nil {
					fmt.Fprintf(out, "Health:  %s\n", healthLine(h))
				}
				if n := t.GetNetwork(); n != nil {
					fmt.Fprintf(out, "IP:      %s %s\nENI:     %s %s\nNetns:   %s\n", n.GetIpv4(), n.GetIpv6(), n.GetEniId(), n.GetMac(), n.GetNetns())
				}
				fmt.Fprintln(out, "Transitions:")
				tw := newTable(out, "  TIME", "STATE", "REASON", "MESSAGE")
				for _, tr := range t.GetTransitions() {
					tw.row("  "+tr.GetTime().AsTime().Local().Format("15:04:05.000"), stateName(tr.GetState()), tr.GetReason(), tr.GetMessage())
				}
				tw.flush()
				printLaunchSteps(out, t.GetTransitions())
				return nil
			})
		},
	}
	addOutputFlag(cmd)
	return cmd
}

func newTaskKillCmd() *cobra.Command {
	var grace time.Duration
	var wait bool
	cmd := &cobra.Command{
		Use:   "kill ID",
		Short: "Stop a task: SIGTERM, then SIGKILL after the grace period",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				var events agentv1.Agent_WatchEventsClient
				if wait {
					var err error
					if events, err = c.WatchEvents(ctx, &agentv1.WatchEventsRequest{TaskId: args[0]}); err != nil {
						return err
					}
				}
				if _, err := c.KillTask(ctx, &agentv1.KillTaskRequest{Id: args[0], GracePeriodSeconds: int64(grace / time.Second)}); err != nil {
					return err
				}
				if wait {
					err := waitFinal(ctx, cmd.OutOrStdout(), c, events, args[0])
					if ce, ok := err.(*cliError); ok && strings.Contains(ce.msg, "KILLED") {
						return nil
					}
					return err
				}
				return nil
			})
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 0, "override the task's grace period")
	cmd.Flags().BoolVarP(&wait, "wait", "w", false, "wait until the task has stopped")
	return cmd
}

func newTaskLogsCmd() *cobra.Command {
	var follow bool
	var tail int64
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a task's stdout/stderr",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				s, err := c.TaskLogs(ctx, &agentv1.TaskLogsRequest{Id: args[0], Follow: follow, TailLines: tail})
				if err != nil {
					return err
				}
				for {
					ch, err := s.Recv()
					if err == io.EOF {
						return nil
					}
					if err != nil {
						return err
					}
					if _, err := cmd.OutOrStdout().Write(ch.GetData()); err != nil {
						return err
					}
				}
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing until the task ends")
	cmd.Flags().Int64Var(&tail, "tail", 0, "only the last N lines")
	return cmd
}

func newTaskExecCmd() *cobra.Command {
	var (
		timeout            time.Duration
		interactive, ttyOn bool
	)
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] ID -- COMMAND...",
		Short: "Run a command inside a running task (-it: an interactive terminal)",
		Long: `Run a command inside a running task, as the task's user with its namespaces,
cgroup, capabilities and seccomp filter.

Without flags, piped stdin is passed whole and the output comes back.
-i streams stdin; -t gives the command a terminal (raw mode here, window
size changes forwarded, Ctrl-C and Ctrl-\ go to the command). The exit code
is the command's. When this client goes away, the command and everything it
started are killed.`,
		Example: `  titus-agent task exec -it web-1 -- sh
  echo hi | titus-agent task exec web-1 -- cat`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if interactive || ttyOn {
				return runExecSession(cmd, execterm.Options{TaskID: args[0], Args: args[1:], TTY: ttyOn, Stdin: interactive})
			}
			var stdin []byte
			if st, err := os.Stdin.Stat(); err == nil && st.Mode()&os.ModeCharDevice == 0 {
				stdin, _ = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
			}
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				s, err := c.Exec(ctx, &agentv1.ExecRequest{Id: args[0], Args: args[1:], Stdin: stdin, TimeoutSeconds: int64(timeout / time.Second)})
				if err != nil {
					return err
				}
				for {
					o, err := s.Recv()
					if err == io.EOF {
						return fmt.Errorf("exec ended without an exit code")
					}
					if err != nil {
						return err
					}
					cmd.OutOrStdout().Write(o.GetStdout())
					cmd.ErrOrStderr().Write(o.GetStderr())
					if o.GetExited() {
						if o.GetExitCode() != 0 {
							return &cliError{msg: fmt.Sprintf("command exited %d", o.GetExitCode()), code: int(o.GetExitCode())}
						}
						return nil
					}
				}
			})
		},
	}
	cmd.Flags().DurationVar(&timeout, "exec-timeout", 0, "kill the command after this long (without -i/-t)")
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "stream stdin to the command")
	cmd.Flags().BoolVarP(&ttyOn, "tty", "t", false, "give the command a terminal")
	return cmd
}

// runExecSession is task exec -i/-t: one ExecSession stream, no deadline
// (a terminal session lasts as long as the host's bounds allow).
func runExecSession(cmd *cobra.Command, o execterm.Options) error {
	c, closeFn, err := dial()
	if err != nil {
		return err
	}
	defer closeFn()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.ExecSession(ctx)
	if err != nil {
		return err
	}
	code, err := execterm.Run(s, o, execterm.OSTerminal{File: os.Stdin}, os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if code != 0 {
		return &cliError{msg: fmt.Sprintf("command exited %d", code), code: code, quiet: o.TTY}
	}
	return nil
}
