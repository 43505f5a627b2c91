// Command fsxattr-probe is the attack of a task on its XFS project quota:
// it reads a file's extended attributes (FS_IOC_FSGETXATTR) and tries to
// give it another project ID (FS_IOC_FSSETXATTR), once with the command
// as the kernel reads it, once with high bits set in the register
// (which the kernel ignores and a careless seccomp rule would not), and
// once to project 0, which no quota limits. It
// prints one line per call: "NAME: ok" or "NAME: ERRNO". Tests copy it,
// static, into a container image.
package main

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// fsxattr is struct fsxattr of <linux/fs.h>.
type fsxattr struct {
	XFlags     uint32
	ExtSize    uint32
	NExtents   uint32
	ProjID     uint32
	CowExtSize uint32
	Pad        [8]byte
}

const (
	fsIOCFSGetXAttr = 0x801c581f
	fsIOCFSSetXAttr = 0x401c5820
)

func ioctl(fd uintptr, cmd uint64, attr *fsxattr) string {
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, uintptr(cmd), uintptr(unsafe.Pointer(attr)))
	if errno != 0 {
		return errnoName(errno)
	}
	return "ok"
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EPERM:
		return "EPERM"
	case syscall.EOPNOTSUPP:
		return "EOPNOTSUPP"
	case syscall.ENOTTY:
		return "ENOTTY"
	case syscall.EINVAL:
		return "EINVAL"
	}
	return fmt.Sprintf("errno %d (%v)", int(e), e)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: fsxattr-probe FILE|DIR")
		os.Exit(2)
	}
	flags := os.O_RDWR | os.O_CREATE
	if fi, err := os.Stat(os.Args[1]); err == nil && fi.IsDir() {
		flags = os.O_RDONLY // a directory: its project ID is what new files inherit
	}
	f, err := os.OpenFile(os.Args[1], flags, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var a fsxattr
	fmt.Println("FSGETXATTR:", ioctl(f.Fd(), fsIOCFSGetXAttr, &a))
	a.ProjID = 4242
	fmt.Println("FSSETXATTR:", ioctl(f.Fd(), fsIOCFSSetXAttr, &a))
	fmt.Println("FSSETXATTR-HIGHBITS:", ioctl(f.Fd(), fsIOCFSSetXAttr|1<<32, &a))
	// Project 0 has no limit: dropping out of the quota altogether.
	a.ProjID = 0
	fmt.Println("FSSETXATTR-PROJ0:", ioctl(f.Fd(), fsIOCFSSetXAttr, &a))
}
