//go:build !vmguest

package integration

// inVMGuest reports whether this test binary is the VM lane's (built with
// -tags vmguest by test/vm/run.sh, run inside an emulated guest). Only
// figures that the guest's emulated CPU cannot meet depend on it: the
// bandwidth test's rate and the number of disk cycles.
const inVMGuest = false
