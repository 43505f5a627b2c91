//go:build vmguest

package integration

// inVMGuest: see lane_host_test.go.
const inVMGuest = true
