package metadataproxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// nsID is a network namespace's identity: the device and inode of its
// nsfs file, the same under every path it is bind-mounted at.
type nsID struct{ dev, ino uint64 }

func netnsID(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// prepared holds listeners opened ahead of a launch in namespaces of the
// agent's namespace pool, by namespace. A prepared listener keeps its
// namespace alive, so no other namespace can have its identity while it is
// held: the listeners go to the task that gets that very namespace, or are
// closed with it (Release).
type prepared struct {
	mu   sync.Mutex
	byNS map[nsID][]net.Listener
}

// Prepare opens the metadata listeners in the (pooled) namespace at
// nsPath now, off any launch's critical path; Start of the task that gets
// this namespace, under whatever path, takes them instead of opening its
// own. Listeners already prepared for the namespace are kept.
func (s *Service) Prepare(nsPath string) error {
	id, err := netnsID(nsPath)
	if err != nil {
		return err
	}
	s.ready.mu.Lock()
	_, have := s.ready.byNS[id]
	s.ready.mu.Unlock()
	if have {
		return nil
	}
	ls, err := s.listen(nsPath)
	if err != nil {
		return fmt.Errorf("metadata: prepare listeners in %s: %w", nsPath, err)
	}
	s.ready.mu.Lock()
	defer s.ready.mu.Unlock()
	if s.ready.byNS == nil {
		s.ready.byNS = map[nsID][]net.Listener{}
	}
	if _, have := s.ready.byNS[id]; have {
		closeAll(ls)
		return nil
	}
	s.ready.byNS[id] = ls
	s.log.Debug("metadata listeners prepared", "netns", nsPath, "inode", id.ino)
	return nil
}

// Release closes the listeners prepared in the namespace at nsPath, if
// any are still unclaimed: the namespace is going away (the pool emptied,
// or a task torn down before its metadata hook ran). A namespace that is
// gone already has none.
func (s *Service) Release(nsPath string) {
	id, err := netnsID(nsPath)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("metadata: release prepared listeners", "netns", nsPath, "err", err)
		}
		return
	}
	if ls := s.take(id); ls != nil {
		s.log.Debug("metadata listeners released", "netns", nsPath, "inode", id.ino)
		closeAll(ls)
	}
}

// Prepared is how many namespaces have listeners prepared and unclaimed.
func (s *Service) Prepared() int {
	s.ready.mu.Lock()
	defer s.ready.mu.Unlock()
	return len(s.ready.byNS)
}

func (s *Service) take(id nsID) []net.Listener {
	s.ready.mu.Lock()
	defer s.ready.mu.Unlock()
	ls := s.ready.byNS[id]
	delete(s.ready.byNS, id)
	return ls
}

// listenFor gives a starting task its listeners: those prepared in its
// namespace, else new ones.
func (s *Service) listenFor(nsPath string) ([]net.Listener, error) {
	if id, err := netnsID(nsPath); err == nil {
		if ls := s.take(id); ls != nil {
			s.log.Debug("metadata listeners taken over", "netns", nsPath, "inode", id.ino)
			return ls, nil
		}
		s.log.Debug("no metadata listeners prepared", "netns", nsPath, "inode", id.ino)
	}
	return s.listen(nsPath)
}

// closePrepared closes every unclaimed prepared listener (Close).
func (s *Service) closePrepared() {
	s.ready.mu.Lock()
	all := s.ready.byNS
	s.ready.byNS = nil
	s.ready.mu.Unlock()
	for _, ls := range all {
		closeAll(ls)
	}
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		l.Close()
	}
}
