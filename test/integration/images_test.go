package integration

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// imagesConfig is the agent config of the image tests: the keys testenv
// would add, the metrics listener and the given images section.
func imagesConfig(dir, metrics, images string) string {
	return fmt.Sprintf("logLevel: debug\nmetricsListen: %q\nisolation:\n  diskDir: %s\nsecrets:\n  dir: %s\n%s\n",
		metrics, filepath.Join(dir, "disks"), filepath.Join(dir, "secrets"), images)
}

// restartWith stops the agent (tasks keep running), rewrites its config
// and starts it again.
func (e *agentEnv) restartWith(config string) {
	e.t.Helper()
	e.stop()
	if err := os.WriteFile(filepath.Join(e.dir, "agent.yaml"), []byte(config), 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.start()
}

// pushFiller pushes busybox plus a layer of size random bytes: an image
// whose removal frees about twice size (content and snapshot).
func pushFiller(t *testing.T, reg *testenv.Registry, repo string, size int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "filler")
	b := make([]byte, size)
	_, _ = rand.Read(b)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return testenv.PushBusyboxWith(t, reg, repo, "1", map[string]string{"filler": p})
}

// images lists the agent's images by name.
func (e *agentEnv) images() (map[string]*agentv1.ImageInfo, int64) {
	e.t.Helper()
	r, err := e.client.ListImages(e.ctx(), &agentv1.ListImagesRequest{})
	if err != nil {
		e.t.Fatalf("list images: %v", err)
	}
	out := map[string]*agentv1.ImageInfo{}
	for _, img := range r.GetImages() {
		out[img.GetName()] = img
	}
	return out, r.GetStoreBytes()
}

func (e *agentEnv) waitImages(what string, cond func(map[string]*agentv1.ImageInfo) bool) map[string]*agentv1.ImageInfo {
	e.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		imgs, _ := e.images()
		if cond(imgs) {
			return imgs
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("images: %s: never; have %v\nagent log:\n%s", what, mapsKeys(imgs), e.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mapsKeys(m map[string]*agentv1.ImageInfo) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestImageGCWatermarksAndPrePull: images listed in the config are pulled
// at start (a missing one is counted, a registry that never answers does
// not hold readiness); past the high watermark the least recently used
// unused images go until the low watermark, and an image a running task
// holds never goes, however full the store, until the task is gone.
func TestImageGCWatermarksAndPrePull(t *testing.T) {
	begin(t)
	ctd := testenv.StartContainerd(t)
	reg := testenv.StartRegistry(t)
	busy := testenv.PushBusybox(t, reg, "tenant-a/app", "1")
	f1 := pushFiller(t, reg, "filler1", 3<<20)
	f2 := pushFiller(t, reg, "filler2", 3<<20)
	f3 := pushFiller(t, reg, "filler3", 3<<20)
	// A registry that accepts connections and never answers.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	var held []net.Conn
	var heldMu sync.Mutex
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			heldMu.Lock()
			held = append(held, c)
			heldMu.Unlock()
		}
	}()
	t.Cleanup(func() {
		heldMu.Lock()
		defer heldMu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	metrics := testenv.Addr(testenv.FreePort(t))
	phase1 := fmt.Sprintf(`images:
  gc:
    enabled: false
  prePull: [%q, %q, %q, %q, %q]
  prePullWait: 3s
`, f1, f2, f3, reg.Host+"/missing/app:1", hole.Addr().String()+"/never/app:1")
	e := &agentEnv{t: t, ctd: ctd, reg: reg, image: busy}
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host, hole.Addr().String()},
		Config: imagesConfig("{{DIR}}", metrics, phase1)})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	// Pre-pull: three pulled, the missing one counted, and the agent
	// ready while the pull from the silent registry still hangs.
	imgs := e.waitImages("pre-pulled", func(m map[string]*agentv1.ImageInfo) bool {
		return m[f1] != nil && m[f2] != nil && m[f3] != nil
	})
	deadline := time.Now().Add(testenv.Scaled(15 * time.Second))
	for !strings.Contains(e.agent.Log(), "agent ready") {
		if time.Now().After(deadline) {
			t.Fatalf("agent never ready with a pre-pull hanging\n%s", e.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if log := e.agent.Log(); !strings.Contains(log, "pre-pulls not done; reporting ready") || !strings.Contains(log, "missing/app:1") {
		t.Errorf("agent log lacks the pre-pull wait or failure:\n%s", log)
	}
	page := scrape(t, metrics)
	if ok, bad := metricValue(page, `titus_agent_image_prepulls_total{outcome="ok"}`), metricValue(page, `titus_agent_image_prepulls_total{outcome="error"}`); ok != 3 || bad != 1 {
		t.Errorf("prepulls ok=%v error=%v\n%s", ok, bad, grepLines(page, "prepull"))
	}
	if imgs[f1].GetLastUsed().AsTime().After(imgs[f2].GetLastUsed().AsTime()) {
		t.Errorf("pre-pulled in order, yet f1 used after f2: %v %v", imgs[f1].GetLastUsed().AsTime(), imgs[f2].GetLastUsed().AsTime())
	}

	// Tenant A's task holds its image from here on.
	e.launch(e.spec("tenant-a", "sleep", "1000"))
	e.waitState("tenant-a", agentv1.TaskState_TASK_STATE_RUNNING, 30*time.Second)
	imgs, used := e.images()
	if got := imgs[busy].GetUsedBy(); !slices.Equal(got, []string{"tenant-a"}) {
		t.Fatalf("%s used by %v, want tenant-a", busy, got)
	}
	unique := imgs[f1].GetSizeBytes() - imgs[busy].GetSizeBytes() // what removing f1 frees
	if unique < 3<<20 {
		t.Fatalf("filler image frees %d bytes, want over 3 MiB (sizes %d, %d)", unique, imgs[f1].GetSizeBytes(), imgs[busy].GetSizeBytes())
	}

	// Just past the high watermark; the low one needs two fillers gone:
	// the two least recently used (f1, f2) go, f3 and the held image stay.
	phase2 := fmt.Sprintf("images:\n  gc:\n    highWatermark: \"%d\"\n    lowWatermark: \"%d\"\n    minAge: 0s\n    interval: 1s\n", used-1, used-unique*3/2)
	e.restartWith(imagesConfig(e.dir, metrics, phase2))
	e.waitImages("f1 and f2 collected", func(m map[string]*agentv1.ImageInfo) bool { return m[f1] == nil && m[f2] == nil })
	time.Sleep(testenv.Scaled(2500 * time.Millisecond)) // more collections
	imgs, after := e.images()
	if imgs[f3] == nil || imgs[busy] == nil {
		t.Errorf("collected past the low watermark: left %v", mapsKeys(imgs))
	}
	page = scrape(t, metrics)
	if n, b := metricValue(page, `titus_agent_images_removed_total{trigger="gc"}`), metricValue(page, `titus_agent_image_removed_bytes_total{trigger="gc"}`); n != 2 || b < float64(2*unique)*0.9 {
		t.Errorf("gc metrics: removed %v images, %v bytes; want 2, ~%d", n, b, 2*unique)
	}
	if s := metricValue(page, "titus_agent_image_store_bytes"); s <= 0 || s > float64(used-unique*3/2) || after > used-unique*3/2 {
		t.Errorf("store %v (ls %d) after collection, want at most the low watermark %d", s, after, used-unique*3/2)
	}

	// However full: everything unused goes, the held image never.
	e.restartWith(imagesConfig(e.dir, metrics, "images:\n  gc:\n    highWatermark: \"1\"\n    lowWatermark: \"1\"\n    minAge: 0s\n    interval: 1s\n"))
	e.waitImages("f3 collected", func(m map[string]*agentv1.ImageInfo) bool { return m[f3] == nil })
	time.Sleep(testenv.Scaled(2500 * time.Millisecond))
	if imgs, _ := e.images(); imgs[busy] == nil {
		t.Fatalf("the image of running task tenant-a was collected\n%s", e.agent.Log())
	}
	if tk := e.get("tenant-a"); tk.GetState() != agentv1.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("tenant-a is %s", tk.GetState())
	}
	if !strings.Contains(e.agent.Log(), "image store above the low watermark after collection") {
		t.Errorf("no warning that the held rest keeps the store above the low watermark")
	}
	// Once the task is gone, its image is just another unused one.
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "tenant-a"}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("tenant-a")
	e.waitImages("the released image collected", func(m map[string]*agentv1.ImageInfo) bool { return m[busy] == nil })
}

// TestImageRemovalRacesLaunches: prune runs in a loop while tasks launch
// and pull: no launch loses its image to it, and tenant B's task on the
// image tenant A's running task holds, once ended, does not release A's
// hold. The CLI refuses rm of a held or pinned image with the reason.
func TestImageRemovalRacesLaunches(t *testing.T) {
	begin(t)
	ctd := testenv.StartContainerd(t)
	reg := testenv.StartRegistry(t)
	// Distinct content each: an image with the target of a held one is
	// held too (removing it would free nothing).
	imgA := pushFiller(t, reg, "tenant-a/app", 64<<10)
	pinned := pushFiller(t, reg, "base/pinned", 64<<10)
	var race []string
	for i := range 3 {
		race = append(race, pushFiller(t, reg, fmt.Sprintf("tenant-b/app%d", i), 64<<10))
	}
	cfg := fmt.Sprintf("images:\n  pinned: [%q]\n  prePull: [%q]\n  gc:\n    highWatermark: \"1\"\n    lowWatermark: \"1\"\n    minAge: 0s\n    interval: 1s\n", pinned, pinned)
	e := &agentEnv{t: t, ctd: ctd, reg: reg, image: imgA}
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	e.launch(e.spec("a-long", "sleep", "1000"))
	e.waitState("a-long", agentv1.TaskState_TASK_STATE_RUNNING, 30*time.Second)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var prunes, pruned int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := e.client.PruneImages(e.ctx(), &agentv1.PruneImagesRequest{MinAge: durationpb.New(0)})
			if err != nil {
				t.Errorf("prune: %v", err)
				return
			}
			prunes++
			pruned += len(r.GetRemoved())
			if slices.Contains(r.GetRemoved(), imgA) || slices.Contains(r.GetRemoved(), pinned) {
				t.Errorf("prune removed a held or pinned image: %v", r.GetRemoved())
			}
		}
	}()
	var ids []string
	for i := range 12 {
		s := e.spec(fmt.Sprintf("b-%d", i), "true")
		s.OwnerEmail = "tenant-b@example.com"
		s.Image = race[i%len(race)]
		if i%4 == 3 {
			s.Image = imgA // B on A's image
		}
		e.launch(s)
		ids = append(ids, s.GetId())
		if i%2 == 1 { // two at a time
			for _, id := range ids[len(ids)-2:] {
				tk := e.waitFinal(id)
				wantState(t, tk, stFinished, task.ReasonCompleted, 0)
			}
		}
	}
	close(stop)
	wg.Wait()
	if pruned == 0 {
		t.Errorf("%d prunes removed nothing: the race was not run", prunes)
	}
	t.Logf("%d prunes removed %d images during 12 launches", prunes, pruned)
	imgs := e.waitImages("tenant A's image held by a-long alone after B's tasks", func(m map[string]*agentv1.ImageInfo) bool {
		return m[imgA] != nil && slices.Equal(m[imgA].GetUsedBy(), []string{"a-long"})
	})
	if imgs[pinned] == nil || !imgs[pinned].GetPinned() {
		t.Fatalf("pinned image: %+v", imgs[pinned])
	}

	// The CLI: ls, rm refused for held and pinned images, prune.
	out, err := e.cli("image", "ls")
	if err != nil || !strings.Contains(out, imgA) || !strings.Contains(out, "a-long") || !strings.Contains(out, "image store:") {
		t.Errorf("image ls: %v\n%s", err, out)
	}
	out, err = e.cli("image", "rm", imgA)
	if err == nil || !strings.Contains(out, "in use by task a-long") || !strings.Contains(out, "failedprecondition") {
		t.Errorf("image rm of a held image: %v\n%s", err, out)
	}
	out, err = e.cli("image", "rm", "tenant-a/app:1")
	if err == nil || !strings.Contains(out, "notfound") {
		t.Errorf("image rm of a name not here (docker.io/tenant-a/app:1): %v\n%s", err, out)
	}
	out, err = e.cli("image", "rm", pinned)
	if err == nil || !strings.Contains(out, "pinned") {
		t.Errorf("image rm of a pinned image: %v\n%s", err, out)
	}
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "a-long"}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("a-long")
	deadline := time.Now().Add(testenv.Scaled(20 * time.Second))
	for {
		// The GC may take it first; either way it goes once released.
		out, err = e.cli("image", "rm", imgA)
		if err == nil && strings.Contains(out, "removed "+imgA) || strings.Contains(out, "notfound") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("image rm after the task ended: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := e.cli("image", "prune", "--min-age", "0s"); err != nil || !strings.Contains(out, "image store now") {
		t.Errorf("image prune: %v\n%s", err, out)
	}
	imgs, _ = e.images()
	if len(imgs) != 1 || imgs[pinned] == nil {
		t.Errorf("after prune: %v, want only the pinned image", mapsKeys(imgs))
	}
}
