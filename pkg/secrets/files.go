package secrets

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Mounter makes and removes the per-task tmpfs (Tmpfs is the real one).
type Mounter interface {
	// Mount mounts an empty tmpfs of size bytes, mode 0700, on dir.
	Mount(dir string, size int64) error
	// Unmount unmounts dir; not mounted is not an error.
	Unmount(dir string) error
	// Mounted says whether dir is a mount point.
	Mounted(dir string) (bool, error)
}

// TmpfsSize is the size of a task's tmpfs: every value at its limit plus
// a page for each file and directory.
const TmpfsSize = task.MaxSecretsTotalBytes + (task.MaxSecrets*(task.MaxSecretPathDepth+1)+1)*4096

// Files keeps each task's file secrets in a tmpfs of its own at
// Root/<task id>. Root itself should be mode 0700 on a host path no task
// is given (the agent's runtime dir, never its state dir).
type Files struct {
	Root    string
	Mounter Mounter
}

// Dir is the task's secrets directory on the host.
func (f *Files) Dir(taskID string) string { return filepath.Join(f.Root, taskID) }

// Write makes the task's tmpfs afresh (whatever an earlier try left is
// unmounted first) and writes the values of file secrets into it, root's
// and mode 0400 until Chown gives them to the task's user. On failure it
// removes what it made.
func (f *Files) Write(taskID string, values []Value) (dir string, err error) {
	if taskID == "" || filepath.Base(taskID) != taskID || taskID == "." || taskID == ".." {
		return "", fmt.Errorf("secrets: bad task id %q", taskID)
	}
	dir = f.Dir(taskID)
	if err := f.Remove(taskID); err != nil {
		return "", err
	}
	if err := os.MkdirAll(f.Root, 0o700); err != nil {
		return "", fmt.Errorf("secrets: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("secrets: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.Remove(taskID))
		}
	}()
	if err := f.Mounter.Mount(dir, TmpfsSize); err != nil {
		return "", fmt.Errorf("secrets: mount tmpfs on %s: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", fmt.Errorf("secrets: %w", err)
	}
	defer root.Close()
	for _, v := range values {
		if v.Ref.SecretAsOrDefault() != task.SecretAsFile {
			continue
		}
		p := v.Ref.SecretPath()
		if d := path.Dir(p); d != "." {
			if err := root.MkdirAll(d, 0o700); err != nil {
				return "", fmt.Errorf("secrets: directory of %s: %w", p, err)
			}
		}
		// O_EXCL: validation made paths unique; nothing is overwritten.
		fh, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
		if err != nil {
			return "", fmt.Errorf("secrets: file %s: %w", p, err)
		}
		_, werr := fh.Write(v.Data)
		if err := errors.Join(werr, fh.Close()); err != nil {
			return "", fmt.Errorf("secrets: write %s: %w", p, err)
		}
	}
	return dir, nil
}

// Chown gives the task's user dir and everything below it: directories
// 0500, files 0400. It follows no symlink (there are none: only the agent
// writes there, before the task exists).
func Chown(dir string, uid, gid int) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("secrets: %w", err)
	}
	defer root.Close()
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o400)
		switch {
		case d.IsDir():
			mode = 0o500
		case !d.Type().IsRegular():
			return fmt.Errorf("secrets: %s is not a regular file", p)
		}
		if err := root.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("secrets: chown %s: %w", p, err)
		}
		if err := root.Chmod(p, mode); err != nil {
			return fmt.Errorf("secrets: chmod %s: %w", p, err)
		}
		return nil
	})
}

// Remove unmounts the task's tmpfs (its values are gone with it) and
// removes its directory. Safe to repeat.
func (f *Files) Remove(taskID string) error {
	dir := f.Dir(taskID)
	for i := 0; ; i++ { // stacked mounts (a crash between two tries) come off one by one
		mounted, err := f.Mounter.Mounted(dir)
		if err != nil {
			return fmt.Errorf("secrets: %w", err)
		}
		if !mounted {
			break
		}
		if i == 16 {
			return fmt.Errorf("secrets: %s is still mounted", dir)
		}
		if err := f.Mounter.Unmount(dir); err != nil {
			return fmt.Errorf("secrets: unmount %s: %w", dir, err)
		}
	}
	// Not RemoveAll: with the tmpfs gone the directory is empty, and if an
	// unmount silently failed, a value must not be deleted piecemeal from
	// under a running task or left on a disk: say so instead.
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("secrets: %w", err)
	}
	return nil
}

// Reap removes the tmpfs of every task not in keep and returns their ids.
func (f *Files) Reap(keep map[string]bool) ([]string, error) {
	ents, err := os.ReadDir(f.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	var reaped []string
	var errs []error
	for _, e := range ents {
		if keep[e.Name()] {
			continue
		}
		if err := f.Remove(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, e.Name())
	}
	return reaped, errors.Join(errs...)
}
