//go:build !vmguest

package integration

// inVMGuest reports whether this test binary is the VM lane's (built with
// -tags vmguest by test/vm/run.sh, run inside an emulated guest). A test
// that measures throughput adapts its figures to the guest's emulated CPU
// with it; nothing else may depend on it.
const inVMGuest = false
