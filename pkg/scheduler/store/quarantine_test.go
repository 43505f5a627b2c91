package store

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/scheduler/wire"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// TestUnreadableRecordsAreSkippedAndQuarantined: garbage under jobs/ and
// tasks/ is skipped (the readable records load), copied once per revision
// under quarantine/, reported, and left in place; an unreadable attempt
// stands as a lost attempt with the index and attempt its key names.
func TestUnreadableRecordsAreSkippedAndQuarantined(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := StartEmbeddedEtcd(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, Logger: nopZap()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	el, err := NewElection(ctx, cli, "/t/", 30*time.Second, 128)
	if err != nil {
		t.Fatal(err)
	}
	defer el.Close()
	st, err := el.Campaign(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	var reported []string
	st.SetBadRecordHandler(func(key, _ string, _ error) { reported = append(reported, key) })
	if err := st.PutJob(ctx, &model.Job{ID: "good", State: model.JobAccepted}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateTasks(ctx, []*model.Task{{ID: "good.0.1", JobID: "good", Attempt: 1, State: task.Running}}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"/t/jobs/bad", "/t/tasks/good/good.0.2", "/t/jobs/liar"} {
		if _, err := cli.Put(ctx, k, "\xff\xff garbage"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "/t/jobs/liar", string(marshalJob(t, "someone-else"))); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		reported = nil
		jobs, err := st.Jobs(ctx)
		if err != nil || len(jobs) != 1 || jobs[0].ID != "good" {
			t.Fatalf("round %d: jobs = %v, %v; want only good", round, jobs, err)
		}
		tasks, err := st.JobTasks(ctx, "good")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, tk := range tasks {
			got = append(got, tk.ID+" "+tk.State.String()+" "+tk.Reason)
		}
		if diff := cmp.Diff([]string{"good.0.1 " + task.Running.String() + " ", "good.0.2 " + task.Lost.String() + " RecordUnreadable"}, got); diff != "" {
			t.Errorf("round %d: tasks (-want +got):\n%s", round, diff)
		}
		if diff := cmp.Diff([]string{"/t/jobs/bad", "/t/jobs/liar", "/t/tasks/good/good.0.2"}, reported); diff != "" {
			t.Errorf("round %d: reported (-want +got):\n%s", round, diff)
		}
	}
	q, err := cli.Get(ctx, "/t/quarantine/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || q.Count != 3 {
		t.Errorf("quarantine copies = %v (%v), want 3 (one per bad revision, not one per read)", q.Count, err)
	}
	for _, k := range []string{"/t/jobs/bad", "/t/tasks/good/good.0.2"} {
		if r, err := cli.Get(ctx, k); err != nil || len(r.Kvs) != 1 {
			t.Errorf("%s was removed: %v %v", k, r, err)
		}
	}
}

func marshalJob(t *testing.T, id string) []byte {
	t.Helper()
	return marshal(wire.JobToProto(&model.Job{ID: id}))
}
