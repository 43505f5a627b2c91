package metadataproxy

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// The secrets hook and the listener share one role session: one
// AssumeRole, with the task's session tags, for both.
func TestRoleCredentialsShareTheListenersSession(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour}
	s, _ := newListenService(t, Config{STS: st})
	sp, att := spec("task-1", "arn:aws:iam::123456789012:role/app")
	sp.Labels = map[string]string{"titus.scheduler/application": "app"}
	var wg sync.WaitGroup
	keys := make([]string, 4)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.RoleCredentials(context.Background(), sp)
			if err != nil {
				t.Errorf("RoleCredentials: %v", err)
			}
			keys[i] = c.AccessKeyID
		}()
	}
	wg.Wait()
	if _, err := s.Start(context.Background(), sp, att); err != nil {
		t.Fatal(err)
	}
	if n := st.callCount(); n != 1 {
		t.Errorf("STS calls = %d, want 1: %v", n, st.calls)
	}
	for _, k := range keys {
		if k != keys[0] || k == "" {
			t.Errorf("keys %v", keys)
		}
	}
	if got := aws.ToString(st.ins[0].SourceIdentity); got != "task-1" {
		t.Errorf("source identity %q", got)
	}
	if len(st.ins[0].Tags) == 0 {
		t.Errorf("no session tags")
	}
	// Released while the listener serves it: kept. Stop ends it.
	s.ReleaseCredentials("task-1")
	if _, found := s.sessions["task-1"]; !found {
		t.Error("session released under the listener")
	}
	if err := s.Stop(context.Background(), "task-1"); err != nil {
		t.Fatal(err)
	}
	if len(s.sessions) != 0 {
		t.Errorf("sessions left: %v", s.sessions)
	}
}

// Without a listener (no netns), ReleaseCredentials ends the session.
func TestReleaseCredentialsWithoutListener(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour}
	s, _ := newListenService(t, Config{STS: st})
	sp, _ := spec("task-2", "arn:aws:iam::123456789012:role/app")
	if _, err := s.RoleCredentials(context.Background(), sp); err != nil {
		t.Fatal(err)
	}
	s.ReleaseCredentials("task-2")
	s.ReleaseCredentials("task-2")
	if len(s.sessions) != 0 {
		t.Errorf("sessions left: %v", s.sessions)
	}
	if _, err := s.RoleCredentials(context.Background(), sp); err != nil {
		t.Fatal(err)
	}
	sp.IAMRoleARN = ""
	if _, err := s.RoleCredentials(context.Background(), sp); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("no role: err = %v", err)
	}
}

// STS refusing the role is the caller's error, wrapping ErrNoCredentials.
func TestRoleCredentialsFailure(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour, fail: true}
	s, _ := newListenService(t, Config{STS: st})
	sp, _ := spec("task-3", "arn:aws:iam::123456789012:role/app")
	if _, err := s.RoleCredentials(context.Background(), sp); !errors.Is(err, ErrNoCredentials) {
		t.Fatalf("err = %v", err)
	}
	s.ReleaseCredentials("task-3")
}
