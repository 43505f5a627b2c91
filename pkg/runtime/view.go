package runtime

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
)

// viewKey names a task's read-only image view in the snapshotter.
func viewKey(taskID string) string { return "titus-view-" + taskID }

// ImageView makes (or finds) a read-only snapshot view of image's layers for
// taskID and returns the layer directories, top first, for an overlay that
// is assembled elsewhere (e.g. with a quota'd upper dir). image is as Pull
// resolved it. RemoveView undoes it.
func (r *Runtime) ImageView(ctx context.Context, taskID string, image Image) ([]string, error) {
	ctx = r.ctx(ctx)
	img, err := r.image(image)
	if err != nil {
		return nil, err
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return nil, fmt.Errorf("layers of %s: %w", image.Name, notFoundIsImage(err))
	}
	parent := identity.ChainID(diffIDs).String()
	sn := r.client.SnapshotService(r.cfg.Snapshotter)
	key := viewKey(taskID)
	mounts, err := sn.View(ctx, key, parent, snapshots.WithLabels(map[string]string{
		"containerd.io/gc.root": "view", // keep it until RemoveView
		LabelManaged:            "true",
		LabelTaskID:             taskID,
	}))
	if errdefs.IsAlreadyExists(err) {
		mounts, err = sn.Mounts(ctx, key)
	}
	if err != nil {
		return nil, fmt.Errorf("view of %s for %s: %w", image.Name, taskID, notFoundIsImage(err))
	}
	return lowerDirs(mounts)
}

// lowerDirs extracts the layer directories from a view's mounts: a
// read-only bind of the only layer, or an overlay's lowerdir list.
func lowerDirs(ms []mount.Mount) ([]string, error) {
	if len(ms) != 1 {
		return nil, fmt.Errorf("view has %d mounts, want 1", len(ms))
	}
	m := ms[0]
	switch m.Type {
	case "bind", "rbind":
		return []string{m.Source}, nil
	case "overlay":
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
				return strings.Split(v, ":"), nil
			}
		}
	}
	return nil, fmt.Errorf("unexpected view mount %s %v", m.Type, m.Options)
}

// RemoveView removes the task's image view; a missing view is not an error.
func (r *Runtime) RemoveView(ctx context.Context, taskID string) error {
	err := r.client.SnapshotService(r.cfg.Snapshotter).Remove(r.ctx(ctx), viewKey(taskID))
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove view of %s: %w", taskID, err)
	}
	return nil
}
