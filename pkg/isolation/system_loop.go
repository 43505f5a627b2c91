package isolation

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/pkg/hostcmd"
)

// loopSectorSize is the logical sector size of the tasks' loop devices:
// the filesystem's block size, and aligned for direct I/O on any backing
// device.
const loopSectorSize = 4096

// AttachLoop takes a free loop device (LOOP_CTL_GET_FREE) and configures
// it on img in one ioctl (LOOP_CONFIGURE: backing file, direct I/O, 4 KiB
// sectors), retrying when another process takes the same free device
// first, as losetup does. A launch with a disk used to spawn losetup and
// mount for this. containerd's mount.SetupLoop does the same but cannot
// set the sector size. Kernels before 5.8 lack LOOP_CONFIGURE: there it
// runs losetup.
func (hostSystem) AttachLoop(ctx context.Context, img string) (string, error) {
	dev, err := configureLoop(img)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
		out, err := hostcmd.Run(ctx, "losetup", "--find", "--show", "--direct-io=on", "--sector-size", fmt.Sprint(loopSectorSize), img)
		return strings.TrimSpace(string(out)), err
	}
	return dev, err
}

func configureLoop(img string) (string, error) {
	// O_DIRECT as losetup opens it: the loop driver does direct I/O only
	// on a backing file that allows it.
	back, err := os.OpenFile(img, os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("loop backing file: %w", err)
	}
	defer back.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("loop control: %w", err)
	}
	defer ctl.Close()
	for try := 1; try <= 100; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		err = configure(dev, back)
		if errors.Is(err, unix.EBUSY) {
			// Another process took it between GET_FREE and here.
			time.Sleep(time.Duration(rand.IntN(try*10)) * time.Millisecond)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("loop device %s: %w", dev, err)
		}
		return dev, nil
	}
	return "", errors.New("no free loop device after 100 tries")
}

func configure(dev string, back *os.File) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	c := unix.LoopConfig{Fd: uint32(back.Fd()), Size: loopSectorSize}
	c.Info.Flags = unix.LO_FLAGS_DIRECT_IO
	copy(c.Info.File_name[:], back.Name())
	return unix.IoctlLoopConfigure(int(f.Fd()), &c)
}
