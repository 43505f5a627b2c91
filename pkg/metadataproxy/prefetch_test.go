package metadataproxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Prefetched credentials are what Start serves: one AssumeRole per task,
// made before the task's netns existed.
func TestPrefetchedCredentialsAreServed(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour}
	s, fl := newListenService(t, Config{STS: st})
	sp, att := spec("task-1", "arn:aws:iam::123456789012:role/app")
	s.Prefetch(context.Background(), sp)
	s.Prefetch(context.Background(), sp) // again: still one fetch
	eventually(t, "the prefetch", func() bool { return st.callCount() == 1 })
	if _, err := s.Start(context.Background(), sp, att); err != nil {
		t.Fatal(err)
	}
	code, body := httpGet(t, fl.addr(att.NetNSPath), "/latest/meta-data/iam/security-credentials/app")
	if code != 200 || !strings.Contains(body, "ASIAX") {
		t.Fatalf("credentials: %d %s", code, body)
	}
	if diff := cmp.Diff([]string{"arn:aws:iam::123456789012:role/app task-1"}, st.calls); diff != "" {
		t.Errorf("AssumeRole calls (-want +got):\n%s", diff)
	}
	s.Prefetch(context.Background(), sp) // metadata running: nothing more
	time.Sleep(50 * time.Millisecond)
	if n := st.callCount(); n != 1 {
		t.Errorf("AssumeRole calls after a prefetch of a running task = %d, want 1", n)
	}
}

// The attack: credentials prefetched for one task are never served to
// another task of the same id with another role (an id reused after the
// first launch failed before its metadata started, without a Forget).
func TestPrefetchedCredentialsOfAnotherRoleAreDropped(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour}
	s, fl := newListenService(t, Config{STS: st})
	first, _ := spec("reused", "arn:aws:iam::123456789012:role/admin")
	s.Prefetch(context.Background(), first)
	eventually(t, "the prefetch", func() bool { return st.callCount() == 1 })

	second, att := spec("reused", "arn:aws:iam::123456789012:role/app")
	if _, err := s.Start(context.Background(), second, att); err != nil {
		t.Fatal(err)
	}
	if code, body := httpGet(t, fl.addr(att.NetNSPath), "/latest/meta-data/iam/security-credentials/"); code != 200 || body != "app" {
		t.Errorf("role listed: %d %q, want app", code, body)
	}
	if code, _ := httpGet(t, fl.addr(att.NetNSPath), "/latest/meta-data/iam/security-credentials/admin"); code == 200 {
		t.Error("the other task's role is served")
	}
	code, body := httpGet(t, fl.addr(att.NetNSPath), "/latest/meta-data/iam/security-credentials/app")
	if code != 200 || !strings.Contains(body, "ASIAXX") { // the second fetch's, not the first's
		t.Errorf("credentials: %d %s", code, body)
	}
}

// The same attack with the same role: a prefetched session carries the
// first task's session tags (application, job, submitter), on which trust
// and resource policies decide; a task of another application reusing
// the id gets a session of its own tags, never the first's.
func TestPrefetchedCredentialsOfAnotherApplicationAreDropped(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour}
	s, fl := newListenService(t, Config{STS: st})
	first, _ := spec("reused", "arn:aws:iam::123456789012:role/app")
	first.Labels = map[string]string{task.LabelApplication: "tenant-a"}
	s.Prefetch(context.Background(), first)
	eventually(t, "the prefetch", func() bool { return st.callCount() == 1 })

	second, att := spec("reused", "arn:aws:iam::123456789012:role/app")
	second.Labels = map[string]string{task.LabelApplication: "tenant-b"}
	if _, err := s.Start(context.Background(), second, att); err != nil {
		t.Fatal(err)
	}
	code, body := httpGet(t, fl.addr(att.NetNSPath), "/latest/meta-data/iam/security-credentials/app")
	if code != 200 || !strings.Contains(body, "ASIAXX") { // the second fetch's, not the first's
		t.Errorf("credentials: %d %s", code, body)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	var apps []string
	for _, in := range st.ins {
		for _, tag := range in.Tags {
			if aws.ToString(tag.Key) == TagApplication {
				apps = append(apps, aws.ToString(tag.Value))
			}
		}
	}
	if diff := cmp.Diff([]string{"tenant-a", "tenant-b"}, apps); diff != "" {
		t.Errorf("application tags of the AssumeRole calls (-want +got):\n%s", diff)
	}
}

// Forget and Stop end a prefetch whose task never started its metadata;
// Close ends any left.
func TestPrefetchForgotten(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour}
	s, _ := newListenService(t, Config{STS: st})
	a, _ := spec("a", "arn:aws:iam::123456789012:role/app")
	b, _ := spec("b", "arn:aws:iam::123456789012:role/app")
	c, _ := spec("c", "arn:aws:iam::123456789012:role/app")
	s.Prefetch(context.Background(), a)
	s.Prefetch(context.Background(), b)
	s.Prefetch(context.Background(), c)
	s.Forget("a")
	s.Forget("a")
	if err := s.Stop(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	left := len(s.sessions)
	s.mu.Unlock()
	if left != 1 {
		t.Errorf("prefetched after Forget and Stop: %d, want 1", left)
	}
	s.Close()
	s.mu.Lock()
	left = len(s.sessions)
	s.mu.Unlock()
	if left != 0 {
		t.Errorf("prefetched after Close: %d, want 0", left)
	}
	// No role: nothing fetched.
	none, _ := spec("none", "")
	s.Prefetch(context.Background(), none)
	if n := st.callCount(); n > 3 {
		t.Errorf("AssumeRole calls = %d, want at most 3", n)
	}
}
