// Package gpu finds a host's NVIDIA GPUs and gives a task exclusive use of
// some of them: their device nodes and the driver's shared nodes
// (nvidiactl, nvidia-uvm) in the OCI spec with cgroup device rules, the
// driver's libraries and tools mounted read-only, NVIDIA_VISIBLE_DEVICES
// set; or, where the NVIDIA Container Toolkit wrote a CDI spec, the
// standard CDI injection of the same devices.
//
// Devices are only ever those Discover found under the host's configured
// device root; nothing a task writes names a device path.
package gpu
