package integration

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestImageGCKeepsQuarantinedTaskImage: a task whose record is quarantined
// keeps running unmanaged for an operator to debug; its image must stay
// (image GC, prune and rm skip it: the agent no longer lists the task, but
// its container still names the image), until the operator removes the
// container. With no images.gc.storePath, the percentage watermarks are
// of the filesystem of containerd's own content store (the test's
// containerd root, not /var/lib/containerd), and no collection fails.
func TestImageGCKeepsQuarantinedTaskImage(t *testing.T) {
	begin(t)
	metrics := testenv.Addr(testenv.FreePort(t))
	ctd := testenv.StartContainerd(t)
	reg := testenv.StartRegistry(t)
	e := &agentEnv{t: t, ctd: ctd, reg: reg, image: testenv.PushBusybox(t, reg, "busybox", "latest")}
	victimImage := testenv.PushBusybox(t, reg, "quarantine/app", "1")
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host},
		Config: imagesConfig("{{DIR}}", metrics, "images:\n  gc:\n    interval: 1s\n    minAge: 0s\n")})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	s := e.spec("victim", "sleep", "1000")
	s.Image = victimImage
	e.launch(s)
	e.waitState("victim", stRunning, 30*time.Second)
	t.Cleanup(func() { e.killContainer("victim") })
	e.launch(e.spec("done", "true"))
	e.waitFinal("done")

	// The record of victim cannot be read after a restart: quarantined,
	// its container left running.
	e.stop()
	db, err := bolt.Open(filepath.Join(e.dir, "state", "tasks.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("tasks")).Put([]byte("victim"), []byte(`{"spec":{"id":"victim","resources":`))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	e.start()
	if e.containerPid("victim") == "" {
		t.Fatalf("the quarantined task's container is not running\n%s", e.agent.Log())
	}

	imgs, _ := e.images()
	if got := imgs[victimImage].GetUsedBy(); !slices.Equal(got, []string{"victim"}) {
		t.Errorf("image ls: %s used by %v, want the quarantined task's container", victimImage, got)
	}
	out, err := e.cli("image", "rm", victimImage)
	if err == nil || !strings.Contains(out, "in use") || !strings.Contains(out, "victim") {
		t.Errorf("image rm of the quarantined task's image: %v\n%s", err, out)
	}
	if out, err := e.cli("image", "prune", "--min-age", "0s"); err != nil {
		t.Fatalf("image prune: %v\n%s", err, out)
	}
	imgs, _ = e.images()
	if imgs[victimImage] == nil {
		t.Fatalf("prune removed the quarantined task's image; left %v", mapsKeys(imgs))
	}
	if imgs[e.image] != nil {
		t.Errorf("prune kept %s, which nothing uses", e.image)
	}

	// Collections ran (interval 1s) against the content store's own
	// filesystem: the default 85%% of its size, no failure logged.
	time.Sleep(testenv.Scaled(2 * time.Second))
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(ctd.Root, "io.containerd.content.v1.content"), &st); err != nil {
		t.Fatal(err)
	}
	want := float64(int64(st.Blocks)*st.Bsize) * 0.85
	page := scrape(t, metrics)
	if got := metricValue(page, "titus_agent_image_gc_high_watermark_bytes"); math.Abs(got-want) > want/100 {
		t.Errorf("high watermark %v bytes, want 85%% of the content store's filesystem, %v\n%s", got, want, grepLines(page, "watermark"))
	}
	if log := e.agent.Log(); strings.Contains(log, "image garbage collection") {
		t.Errorf("a collection failed:\n%s", grepLines(log, "image garbage collection"))
	}

	// The operator ends the container: the image is unused now.
	e.killContainer("victim")
	if out, err := e.cli("image", "rm", victimImage); err != nil {
		t.Errorf("image rm once the container is gone: %v\n%s", err, out)
	}
}
