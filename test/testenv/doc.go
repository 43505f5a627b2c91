// Package testenv starts the real components the integration tests and
// benchmarks run against — containerd, a registry, moto, the AWS IMDS mock —
// each private to the calling test (own directories, loopback ports), and
// stops them, by pid, when the test ends. A missing prerequisite fails the
// test loudly; nothing here skips.
package testenv
