package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// putRaw writes a record's bytes as some other agent version would have.
func putRaw(t *testing.T, dir string, kv map[string][]byte) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, StateFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(tasksBucket)
		if err != nil {
			return err
		}
		for k, v := range kv {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// The record written by the previous agent (version 1: no version field,
// isolation.UserNS and specs.Mount embedded) still restores, whole.
func TestStoreLoadsVersion1Record(t *testing.T) {
	v1, err := os.ReadFile("testdata/record-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	putRaw(t, dir, map[string][]byte{"job-1.0.1": v1})
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	want := &taskrunner.Record{Version: taskrunner.RecordVersion, Spec: task.Spec{ID: "job-1.0.1", OwnerEmail: "team@example.com",
		Image: "registry.example.com/app:1", Command: []string{"sleep", "3600"}, Env: map[string]string{"A": "1"},
		KillGracePeriod: 10 * time.Second, Resources: task.Resources{CPUMillicores: 500, MemoryMiB: 256, DiskMiB: 1024, NetworkMbps: 100, Pids: 1024},
		Labels: map[string]string{isolation.LabelUserNS: "true"}, IAMRoleARN: "arn:aws:iam::123456789012:role/app",
		Network: task.NetworkRequest{SecurityGroupIDs: []string{"sg-1"}}}}
	for i, st := range []task.State{task.Accepted, task.Preparing, task.Starting, task.Running} {
		want.Status.Advance(st, task.ReasonAccepted, "", t0.Add(time.Duration(i)*time.Second))
	}
	ids := []taskrunner.IDMapping{{ContainerID: 0, HostID: 200000, Size: 65536}}
	want.Resources = taskrunner.Resources{
		Image: &runtime.Image{Name: "registry.example.com/app:1", Digest: "sha256:" + strings.Repeat("ab", 32),
			MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1234},
		Network: &task.NetworkAttachment{IPv4: "198.18.0.5", MAC: "0e:00:00:00:00:05", NetNSPath: "/run/netns/job-1.0.1", SecurityGroupIDs: []string{"sg-1"}},
		Disk: &taskrunner.DiskInfo{Backend: "loop-ext4", ImagePath: "/var/lib/titus/disks/img/job-1.0.1.img",
			MountPath: "/var/lib/titus/disks/rootfs/job-1.0.1", UserNS: &taskrunner.UserNS{UIDMap: ids, GIDMap: ids}},
		Metadata:  &taskrunner.MetadataInfo{Addresses: []string{"169.254.169.254:80"}},
		Mounts:    []taskrunner.Mount{{Destination: "/etc/resolv.conf", Type: "bind", Source: "/var/lib/titus/resolv.conf", Options: []string{"rbind", "ro"}}},
		Env:       map[string]string{"TITUS_TASK_ID": "job-1.0.1"},
		Container: true, Pid: 4242,
	}
	if diff := cmp.Diff([]*taskrunner.Record{want}, got); diff != "" {
		t.Fatalf("version 1 record (-want +got):\n%s", diff)
	}
	// Written back, it is version 2, and reads back the same.
	if err := s.Save(got[0]); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	s.db.View(func(tx *bolt.Tx) error {
		raw = bytes.Clone(tx.Bucket(tasksBucket).Get([]byte("job-1.0.1")))
		return nil
	})
	if !bytes.Contains(raw, []byte(`"version":2`)) {
		t.Errorf("saved record has no version 2: %s", raw)
	}
	again, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]*taskrunner.Record{want}, again); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
}

// Records that cannot be read are quarantined, byte for byte, and stay
// there across restarts; the good ones load.
func TestStoreQuarantinesUnreadableRecords(t *testing.T) {
	dir := t.TempDir()
	good := []byte(`{"version":2,"spec":{"id":"good"},"status":{"state":"Running"}}`)
	bad := map[string][]byte{
		"garbage":  []byte(`{"spec":{"id":"garbage"`),
		"wrongkey": []byte(`{"version":2,"spec":{"id":"someone-else"}}`),
		"future":   []byte(`{"version":99,"spec":{"id":"future"}}`),
		"badtype":  []byte(`{"spec":{"id":"badtype","resources":{"cpuMillicores":"lots"}}}`),
	}
	kv := map[string][]byte{"good": good}
	for k, v := range bad {
		kv[k] = v
	}
	putRaw(t, dir, kv)
	for start := range 2 {
		s, err := OpenStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := s.Load()
		if start == 0 && !errors.Is(err, ErrCorruptRecord) {
			t.Errorf("first load: err = %v, want ErrCorruptRecord", err)
		}
		if start == 1 && err != nil {
			t.Errorf("second load: %v (the bad records are out of the way)", err)
		}
		if len(recs) != 1 || recs[0].Spec.ID != "good" {
			t.Errorf("start %d: loaded %v, want only good", start, recs)
		}
		q, err := s.Quarantined()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"badtype", "future", "garbage", "wrongkey"}, q); diff != "" {
			t.Errorf("start %d: quarantine (-want +got):\n%s", start, diff)
		}
		s.db.View(func(tx *bolt.Tx) error {
			for k, v := range bad {
				if got := tx.Bucket(quarantineBucket).Get([]byte(k)); !bytes.Equal(got, v) {
					t.Errorf("quarantined %s = %q, want the bytes as they were", k, got)
				}
			}
			return nil
		})
		s.Close()
	}
}

// A state file that is not a database, or is damaged, stops the agent
// with an error that names the file and says what to do; the file is left
// as it was.
func TestOpenStoreCorruptFile(t *testing.T) {
	for _, tt := range []struct {
		name    string
		content func(t *testing.T, path string)
	}{
		{"garbage", func(t *testing.T, path string) {
			os.WriteFile(path, bytes.Repeat([]byte("not a bbolt file "), 1000), 0o600)
		}},
		{"truncated", func(t *testing.T, path string) { os.WriteFile(path, []byte("x"), 0o600) }},
		{"damaged meta pages", func(t *testing.T, path string) {
			dir := filepath.Dir(path)
			s, err := OpenStore(dir)
			if err != nil {
				t.Fatal(err)
			}
			s.Save(record("a", task.Accepted))
			s.Close()
			b, _ := os.ReadFile(path)
			for i := 0; i < 2*4096 && i < len(b); i += 7 {
				b[i] ^= 0xff
			}
			os.WriteFile(path, b, 0o600)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, StateFile)
			tt.content(t, path)
			before, _ := os.ReadFile(path)
			_, err := OpenStoreTimeout(dir, 100*time.Millisecond)
			if !errors.Is(err, ErrStateCorrupt) {
				t.Fatalf("err = %v, want ErrStateCorrupt", err)
			}
			for _, want := range []string{path, "mv " + path, "docs/operations.md"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "another agent") {
				t.Errorf("error %q blames another agent", err)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Error("the corrupt file was changed")
			}
		})
	}
}

func TestOpenStoreLockedSaysSo(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = OpenStoreTimeout(dir, 50*time.Millisecond)
	if !errors.Is(err, ErrStateLocked) || !strings.Contains(err.Error(), "another agent") {
		t.Fatalf("err = %v, want ErrStateLocked naming another agent", err)
	}
}
