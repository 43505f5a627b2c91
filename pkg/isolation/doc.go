// Package isolation holds what keeps a task inside its limits and away from
// the host and its neighbours: the OCI options that harden a container and
// set its CPU, memory and pids limits (SpecOpts), the per-task quota'd
// writable filesystem under an overlay root (Disks, with loop-ext4 and XFS
// project-quota backends, and a DiskPool of formatted loop images made
// ahead of launches), an optional user namespace per task with its own
// range of host IDs and ID-mapped image layers (Disks.SetupUserNS,
// WithUserNS) and per-task network bandwidth shaping with tc (Bandwidth).
//
// OS side effects go through small interfaces (commander, tcOps) so the
// logic is unit-tested with fakes that record calls; test/integration runs
// the real thing.
package isolation
