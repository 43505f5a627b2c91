package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// jobKinds are the load's job kinds, in a fixed order (the mix flag
// weighs them).
var jobKinds = []string{"short", "long", "fail", "oom", "meta", "service"}

// parseMix reads "short=4,long=1,..." into weights per kind.
func parseMix(s string) (map[string]int, error) {
	m := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 0 || !contains(jobKinds, k) {
			return nil, fmt.Errorf("mix %q: want kind=weight with kind one of %v", part, jobKinds)
		}
		m[k] = n
	}
	return m, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// apiCall is one CLI invocation as the user sees it (the CLI retries
// Unavailable inside its --timeout; that is one call).
type apiCall struct {
	op        string
	ok        bool
	err       string
	start, at time.Time // the invocation's start and end
}

// load submits jobs and works services through the titus-scheduler CLI.
type load struct {
	f    *fleet
	rng  *rand.Rand
	mix  map[string]int
	dir  string
	mu   sync.Mutex
	jobs map[string]*jobInfo // by id
	svcs []string            // live service jobs
	api  []apiCall
	seq  int
}

type jobInfo struct {
	id, kind  string
	size      uint32
	submitted time.Time
	killed    bool // killed by the load (its tasks end KilledByUser)
}

func (l *load) cli(op string, args ...string) (string, bool) {
	args = append([]string{"--addr", l.f.userCLI, "--timeout", "30s"}, args...)
	start := time.Now()
	out, err := exec.Command(l.f.cli, args...).CombinedOutput()
	c := apiCall{op: op, ok: err == nil, start: start, at: time.Now()}
	if err != nil {
		c.err = strings.TrimSpace(string(out))
		if len(c.err) > 200 {
			c.err = c.err[:200]
		}
	}
	l.mu.Lock()
	l.api = append(l.api, c)
	l.mu.Unlock()
	return strings.TrimSpace(string(out)), err == nil
}

func (l *load) spec(kind string) (*schedv1.JobSpec, uint32) {
	t := &agentv1.TaskSpec{Image: l.f.image, Resources: &agentv1.Resources{CpuMillicores: 50, MemoryMib: 32}, KillGracePeriodSeconds: 1}
	s := &schedv1.JobSpec{OwnerEmail: "chaos@example.com", Application: "chaos", Task: t}
	size := uint32(2)
	switch kind {
	case "short":
		t.Command = []string{"sh", "-c", "sleep 1"}
	case "long":
		t.Command = []string{"sleep", "15"}
		size = 1
	case "fail":
		t.Command = []string{"sh", "-c", "sleep 1; exit 3"}
		size = 1
	case "oom":
		t.Command = []string{"sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"}
		size = 1
	case "meta":
		// Credentials and metadata from inside the task; a failure exits
		// non-zero (counted apart from the platform's own failures).
		t.Command = []string{"sh", "-c", "wget -q -O /dev/null http://169.254.169.254/latest/meta-data/local-ipv4 && " +
			"wget -q -O - http://169.254.169.254/latest/meta-data/iam/security-credentials/" + roleName + " | grep -q SecretAccessKey"}
		t.IamRoleArn = roleARN
	case "service":
		t.Command = []string{"sleep", "3600"}
		s.Kind = &schedv1.JobSpec_Service{Service: &schedv1.ServiceJob{Min: 0, Desired: 2, Max: 4}}
		return s, 2
	}
	s.Kind = &schedv1.JobSpec_Batch{Batch: &schedv1.BatchJob{Size: size}}
	return s, size
}

func (l *load) pick() string {
	total := 0
	for _, k := range jobKinds {
		total += l.mix[k]
	}
	n := l.rng.IntN(max(total, 1))
	for _, k := range jobKinds {
		if n < l.mix[k] {
			return k
		}
		n -= l.mix[k]
	}
	return "short"
}

func (l *load) submit(kind string) {
	spec, size := l.spec(kind)
	b, _ := protojson.Marshal(spec)
	l.mu.Lock()
	l.seq++
	file := filepath.Join(l.dir, fmt.Sprintf("job-%d.json", l.seq))
	l.mu.Unlock()
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return
	}
	at := time.Now()
	out, ok := l.cli("job submit", "job", "submit", "-f", file)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.jobs[out] = &jobInfo{id: out, kind: kind, size: size, submitted: at}
	if kind == "service" {
		l.svcs = append(l.svcs, out)
	}
}

// workService does one thing to a live service job: scale it, kill one
// of its tasks, or kill it and submit another.
func (l *load) workService(ctx context.Context) {
	l.mu.Lock()
	if len(l.svcs) == 0 {
		l.mu.Unlock()
		return
	}
	i := l.rng.IntN(len(l.svcs))
	id := l.svcs[i]
	action := l.rng.IntN(4)
	desired := 1 + l.rng.IntN(4)
	l.mu.Unlock()
	switch action {
	case 0, 1:
		l.cli("job scale", "job", "scale", id, "--desired", strconv.Itoa(desired))
	case 2:
		var tasks []*schedv1.Task
		_ = l.f.api(ctx, func(ctx context.Context, c schedv1.SchedulerClient) error {
			r, err := c.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: id})
			tasks = r.GetTasks()
			return err
		})
		if len(tasks) > 0 {
			l.cli("task kill", "task", "kill", tasks[l.rng.IntN(len(tasks))].Id)
		}
	case 3:
		if _, ok := l.cli("job kill", "job", "kill", id); ok {
			l.mu.Lock()
			l.svcs = append(l.svcs[:i:i], l.svcs[i+1:]...)
			l.jobs[id].killed = true
			l.mu.Unlock()
			l.submit("service")
		}
	}
}

// run submits a job every 60/rate seconds (and works a service job as
// often) until ctx ends.
func (l *load) run(ctx context.Context, perMinute float64) {
	every := time.Duration(float64(time.Minute) / perMinute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		kind := l.pick()
		l.mu.Unlock()
		l.submit(kind)
		l.workService(ctx)
	}
}

// drain kills every live job through the CLI.
func (l *load) drain() {
	l.mu.Lock()
	var ids []string
	for id := range l.jobs {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	sort.Strings(ids)
	for _, id := range ids {
		l.mu.Lock()
		j := l.jobs[id]
		l.mu.Unlock()
		if j.kind == "service" && !j.killed {
			if _, ok := l.cli("job kill", "job", "kill", id); ok {
				l.mu.Lock()
				j.killed = true
				l.mu.Unlock()
			}
		}
	}
}
