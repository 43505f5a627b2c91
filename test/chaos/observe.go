package chaos

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
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

	mu    sync.Mutex
	tasks map[string]*schedv1.Task
	jobs  map[string]schedv1.JobState
	done  map[string]bool
	// pruned holds the jobs the scheduler no longer knew before the
	// observer saw them end with all their tasks, and when it found out.
	pruned map[string]time.Time
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
		done: map[string]bool{}, pruned: map[string]time.Time{}, seenOn: map[string]map[string]bool{}}
}

func terminalJob(s schedv1.JobState) bool {
	return s == schedv1.JobState_JOB_STATE_FINISHED || s == schedv1.JobState_JOB_STATE_FAILED || s == schedv1.JobState_JOB_STATE_KILLED
}

func terminalTask(s agentv1.TaskState) bool {
	return s == agentv1.TaskState_TASK_STATE_FINISHED || s == agentv1.TaskState_TASK_STATE_FAILED ||
		s == agentv1.TaskState_TASK_STATE_KILLED || s == agentv1.TaskState_TASK_STATE_LOST
}

// pollScheduler records the state of every job not yet fully recorded
// and the last record of each of its task attempts. One pass costs a
// fixed number of calls however many jobs are open: every job the
// scheduler holds comes from one (paged) ListJobs, every live task from
// one ListTasks, both served from the leader's memory; the full attempt
// history (the store's records, an etcd read) is read only for jobs that
// have ended, until every attempt is seen ended. A pass that read each
// open job's history every time took longer than the scheduler's
// retention of ended jobs under load and etcd faults (one etcd read per
// job, each waiting out a killed member), and jobs were pruned before the
// observer saw their end. The scheduler keeps an ended job for the
// retention after its last task ended, so one pass in that time suffices.
func (o *observer) pollScheduler(ctx context.Context) {
	o.l.mu.Lock()
	var open []string
	for id := range o.l.jobs {
		open = append(open, id)
	}
	o.l.mu.Unlock()
	o.mu.Lock()
	open = slices.DeleteFunc(open, func(id string) bool { return o.done[id] })
	o.mu.Unlock()
	if len(open) == 0 || ctx.Err() != nil {
		return
	}
	held := map[string]*schedv1.Job{}
	var live []*schedv1.Task
	err := o.f.api(ctx, func(ctx context.Context, c schedv1.SchedulerClient) error {
		held, live = map[string]*schedv1.Job{}, nil
		for token := ""; ; {
			r, err := c.ListJobs(ctx, &schedv1.ListJobsRequest{All: true, PageToken: token})
			if err != nil {
				return err
			}
			for _, j := range r.Jobs {
				held[j.Id] = j
			}
			if token = r.NextPageToken; token == "" {
				break
			}
		}
		for token := ""; ; {
			r, err := c.ListTasks(ctx, &schedv1.ListTasksRequest{PageToken: token})
			if err != nil {
				return err
			}
			live = append(live, r.Tasks...)
			if token = r.NextPageToken; token == "" {
				return nil
			}
		}
	})
	if err != nil {
		return
	}
	var ended, gone []string
	o.mu.Lock()
	for _, t := range live {
		o.record(t)
	}
	for _, id := range open {
		j, ok := held[id]
		switch {
		case !ok:
			gone = append(gone, id)
		case terminalJob(j.State):
			o.jobs[id] = j.State
			ended = append(ended, id)
		default:
			o.jobs[id] = j.State
		}
	}
	o.mu.Unlock()
	// Every attempt of each ended job, a few jobs at a time.
	var wg sync.WaitGroup
	work := make(chan string)
	for range min(4, len(ended)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				o.pollHistory(ctx, id)
			}
		}()
	}
	for _, id := range ended {
		work <- id
	}
	close(work)
	wg.Wait()
	// A job missing from the list was pruned (or the list raced a new
	// leader's load): ask for it alone. A job pruned before the observer
	// saw it end with all its tasks stays open (the run cannot tell how
	// its tasks ended), and stuck says so.
	for _, id := range gone {
		var j *schedv1.Job
		err := o.f.api(ctx, func(ctx context.Context, c schedv1.SchedulerClient) (err error) {
			j, err = c.GetJob(ctx, &schedv1.GetJobRequest{Id: id})
			return err
		})
		o.mu.Lock()
		switch {
		case status.Code(err) == codes.NotFound:
			if !o.done[id] && o.pruned[id].IsZero() {
				o.pruned[id] = time.Now()
			}
		case err == nil:
			o.jobs[id] = j.State
		}
		o.mu.Unlock()
	}
}

// pollHistory records every attempt of an ended job (the store's records)
// and marks the job done once each has ended.
func (o *observer) pollHistory(ctx context.Context, id string) {
	var tasks []*schedv1.Task
	err := o.f.api(ctx, func(ctx context.Context, c schedv1.SchedulerClient) error {
		tasks = nil
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
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	allEnded := true
	for _, t := range tasks {
		o.record(t)
	}
	for _, t := range o.tasks {
		if t.JobId == id && !terminalTask(t.State) {
			allEnded = false
		}
	}
	if allEnded {
		o.done[id] = true
	}
}

// record keeps a task attempt's newest record: an ended one is final.
// Callers hold o.mu.
func (o *observer) record(t *schedv1.Task) {
	if old := o.tasks[t.Id]; old != nil && terminalTask(old.State) && !terminalTask(t.State) {
		return
	}
	o.tasks[t.Id] = t
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
		done, pruned, last := o.done[id], o.pruned[id], o.jobs[id]
		var open []string
		for _, t := range o.tasks {
			if t.JobId == id && !terminalTask(t.State) {
				open = append(open, t.Id+" "+t.State.String())
			}
		}
		o.mu.Unlock()
		if done {
			continue
		}
		if !pruned.IsZero() {
			sort.Strings(open)
			out = append(out, fmt.Sprintf("%s (%s): the scheduler no longer knew it at %s, before the observer saw it end (last seen %s; tasks not seen ended: %v)",
				id, kind, pruned.Format("15:04:05.0"), last, open))
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
