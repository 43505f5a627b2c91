package chaos

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// keepLogs copies every process's whole log (scheduler replicas, etcd
// members, agents and their containerds, every restart's file) into a new
// directory outside the test's temporary ones, which the run removes, and
// returns it. A missed objective is read against these logs.
func (f *fleet) keepLogs(seed uint64) (string, error) {
	dir, err := os.MkdirTemp("", fmt.Sprintf("titus-chaos-logs-%d-", seed))
	if err != nil {
		return "", err
	}
	var errs []error
	keep := func(prefix, from string) {
		logs, _ := filepath.Glob(filepath.Join(from, "*.log"))
		for _, p := range logs {
			if err := copyFile(p, filepath.Join(dir, prefix+"-"+filepath.Base(p))); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for i, r := range f.replicas {
		keep(fmt.Sprintf("replica%d", i), r.dir)
	}
	for _, m := range f.etcd {
		keep("etcd-"+m.name, m.dir)
	}
	for _, h := range f.hosts {
		keep(h.sim.InstanceID, filepath.Dir(h.agent.Proc.LogPath))
		keep(h.sim.InstanceID, filepath.Dir(h.ctd.Proc.LogPath))
	}
	if len(errs) > 0 {
		return dir, fmt.Errorf("keep logs: %v", errs)
	}
	return dir, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
