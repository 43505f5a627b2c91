package chaos

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// observer records what the run sees: every task attempt's last record
// at the scheduler (polled before ended jobs are pruned), each job's
// state, and on which hosts the agents themselves ran each task.
type observer struct {
	f *fleet
	l *load

	mu     sync.Mutex
	tasks  map[string]*schedv1.Task
	jobs   map[string]schedv1.JobState
	done   map[string]bool
	seenOn map[string]map[string]bool // task id → instance ids whose agent ran it
	// elections are the stretches in which no replica answered as the
	// leader (watchLeader).
	elections []window
}

// window is a stretch of time.
type window struct{ from, to time.Time }

func (w window) overlaps(from, to time.Time) bool { return from.Before(w.to) && to.After(w.from) }

func newObserver(f *fleet, l *load) *observer {
	return &observer{f: f, l: l, tasks: map[string]*schedv1.Task{}, jobs: map[string]schedv1.JobState{},
		done: map[string]bool{}, seenOn: map[string]map[string]bool{}}
}

func terminalJob(s schedv1.JobState) bool {
	return s == schedv1.JobState_JOB_STATE_FINISHED || s == schedv1.JobState_JOB_STATE_FAILED || s == schedv1.JobState_JOB_STATE_KILLED
}

func terminalTask(s agentv1.TaskState) bool {
	return s == agentv1.TaskState_TASK_STATE_FINISHED || s == agentv1.TaskState_TASK_STATE_FAILED ||
		s == agentv1.TaskState_TASK_STATE_KILLED || s == agentv1.TaskState_TASK_STATE_LOST
}

// pollScheduler records the tasks of every job not yet fully recorded.
func (o *observer) pollScheduler(ctx context.Context) {
	o.l.mu.Lock()
	var ids []string
	for id := range o.l.jobs {
		ids = append(ids, id)
	}
	o.l.mu.Unlock()
	for _, id := range ids {
		o.mu.Lock()
		done := o.done[id]
		o.mu.Unlock()
		if done || ctx.Err() != nil {
			continue
		}
		var job *schedv1.Job
		var tasks []*schedv1.Task
		err := o.f.api(ctx, func(ctx context.Context, c schedv1.SchedulerClient) error {
			j, err := c.GetJob(ctx, &schedv1.GetJobRequest{Id: id})
			if err != nil {
				return err
			}
			job, tasks = j, nil
			for token := ""; ; {
				r, err := c.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: id, All: true, PageToken: token})
				if err != nil {
					return err
				}
				tasks = append(tasks, r.Tasks...)
				if token = r.NextPageToken; token == "" {
					return nil
				}
			}
		})
		if err != nil {
			continue
		}
		o.mu.Lock()
		o.jobs[id] = job.State
		allEnded := true
		for _, t := range tasks {
			o.tasks[t.Id] = t
			allEnded = allEnded && terminalTask(t.State)
		}
		if terminalJob(job.State) && allEnded {
			o.done[id] = true
		}
		o.mu.Unlock()
	}
}

// pollAgents records which tasks each agent runs.
func (o *observer) pollAgents(ctx context.Context) {
	for _, h := range o.f.hosts {
		if !h.mu.TryLock() { // being killed or restarted
			continue
		}
		c := h.agent.Client
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := c.ListTasks(cctx, &agentv1.ListTasksRequest{})
		cancel()
		h.mu.Unlock()
		if err != nil {
			continue
		}
		o.mu.Lock()
		for _, t := range r.GetTasks() {
			if t.GetState() != agentv1.TaskState_TASK_STATE_RUNNING {
				continue
			}
			id := t.GetSpec().GetId()
			if o.seenOn[id] == nil {
				o.seenOn[id] = map[string]bool{}
			}
			o.seenOn[id][h.sim.InstanceID] = true
		}
		o.mu.Unlock()
	}
}

// watchLeader asks every replica four times a second whether it leads
// (a standby answers Unavailable) and records each stretch in which none
// did, from the last probe that found a leader to the first that found
// one again: the leader elections, as the run saw them.
func (o *observer) watchLeader(ctx context.Context) {
	var clients []schedv1.SchedulerClient
	for _, r := range o.f.replicas {
		// Back off briefly: a replica killed and started again must be
		// seen as soon as it leads.
		cc, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, MaxDelay: 500 * time.Millisecond}}))
		if err != nil {
			o.f.t.Errorf("leader watch: %v", err)
			return
		}
		defer cc.Close()
		clients = append(clients, schedv1.NewSchedulerClient(cc))
	}
	leads := func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		found := make(chan bool, len(clients))
		for _, c := range clients {
			go func() {
				_, err := c.ListAgents(pctx, &schedv1.ListAgentsRequest{})
				found <- err == nil
			}()
		}
		any := false
		for range clients {
			any = <-found || any
		}
		return any
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	seen, open := time.Now(), false
	for {
		select {
		case <-ctx.Done():
			if open {
				o.mu.Lock()
				o.elections = append(o.elections, window{seen, time.Now()})
				o.mu.Unlock()
			}
			return
		case <-t.C:
		}
		now, ok := time.Now(), leads()
		switch {
		case ok && open:
			o.mu.Lock()
			o.elections = append(o.elections, window{seen, now})
			o.mu.Unlock()
			open, seen = false, now
		case ok:
			seen = now
		case ctx.Err() == nil:
			open = true
		}
	}
}

func (o *observer) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		o.pollAgents(ctx)
		if n%2 == 0 {
			o.pollScheduler(ctx)
		}
	}
}

// allDone reports whether every job submitted has ended with all its
// tasks, and how many have not.
func (o *observer) allDone() (bool, int) {
	o.l.mu.Lock()
	n := len(o.l.jobs)
	o.l.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.done) == n, n - len(o.done)
}

// stuck describes the jobs that have not ended: kind, state, counts and
// why they are queued, as the scheduler tells it now.
func (o *observer) stuck(ctx context.Context) []string {
	o.l.mu.Lock()
	jobs := map[string]string{}
	for id, j := range o.l.jobs {
		jobs[id] = j.kind
	}
	o.l.mu.Unlock()
	var out []string
	for id, kind := range jobs {
		o.mu.Lock()
		done := o.done[id]
		o.mu.Unlock()
		if done {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var j *schedv1.Job
		err := o.f.api(cctx, func(ctx context.Context, c schedv1.SchedulerClient) (err error) {
			j, err = c.GetJob(ctx, &schedv1.GetJobRequest{Id: id})
			return err
		})
		cancel()
		if err != nil {
			out = append(out, fmt.Sprintf("%s (%s): %v", id, kind, err))
			continue
		}
		out = append(out, fmt.Sprintf("%s (%s): %s counts %v queued %q", id, kind, j.State, j.Counts, j.QueuedReason))
	}
	sort.Strings(out)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = o.f.api(cctx, func(ctx context.Context, c schedv1.SchedulerClient) error {
		r, err := c.ListAgents(ctx, &schedv1.ListAgentsRequest{})
		for _, a := range r.GetAgents() {
			out = append(out, "agent "+protojson.Format(a))
		}
		return err
	})
	return out
}
