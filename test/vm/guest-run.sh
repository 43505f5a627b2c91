#!/bin/bash
# Runs inside the VM lane's guest (started by titus-vm-run.service from the
# read-only payload disk at /opt/titus): checks the guest is what the lane
# promises (cgroup v2 only, systemd PID 1), puts an XFS filesystem mounted
# with prjquota on /tmp (so every test's agent directory, and with it its
# disk directory, is on it and the XFS backend is chosen), runs the selected
# integration tests and reports `TITUS-VM: exit N` before powering off.
# Everything goes to the host over the virtio-serial port titus.out.
set -u
P=/opt/titus
port=/dev/virtio-ports/titus.out
for _ in $(seq 100); do [[ -e $port ]] && break; sleep 0.1; done
exec >"$port" 2>&1

rc=1
finish() {
  echo "TITUS-VM: exit $rc"
  sync
  sleep 0.5
  echo o >/proc/sysrq-trigger # power off now: the root is a throwaway snapshot
}
trap finish EXIT

echo "TITUS-VM: booted $(uname -r) in $(cut -d' ' -f1 /proc/uptime)s, cgroup fs $(stat -fc %T /sys/fs/cgroup), PID 1 $(cat /proc/1/comm)"
fail() { echo "TITUS-VM: FATAL: $*"; exit 1; }
[[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]] || fail "/sys/fs/cgroup is not cgroup v2"
awk '$3 == "cgroup" { found = 1 } END { exit !found }' /proc/mounts && fail "a cgroup v1 hierarchy is mounted"
[[ $(cat /proc/1/comm) == systemd ]] || fail "PID 1 is not systemd"
echo "TITUS-VM: cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"

# The second disk: XFS with project quotas, as production data volumes.
mkfs.xfs -q -f /dev/vdb || fail "mkfs.xfs /dev/vdb"
mount -o prjquota /dev/vdb /tmp || fail "mount /dev/vdb with prjquota"
chmod 1777 /tmp
grep ' /tmp ' /proc/mounts | grep -q prjquota || fail "/tmp is not mounted with prjquota"
echo "TITUS-VM: /tmp is $(findmnt -no FSTYPE,OPTIONS /tmp)"

export TITUS_CACHE=$P TITUS_TEST_BIN_DIR=$P/bin PATH=$P/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# shellcheck source=/dev/null
source $P/env # TITUS_VM_RUN (the -run regex), TITUS_VM_TIMEOUT and test env
echo "TITUS-VM: runc $(runc --version | head -1 | awk '{print $3}'), containerd $(containerd --version | awk '{print $3}')"
mkdir -p /tmp/work && cd /tmp/work || fail "cd /tmp/work"
start=$(cut -d' ' -f1 /proc/uptime)
$P/integration.test -test.v -test.count=1 -test.timeout="$TITUS_VM_TIMEOUT" -test.run "$TITUS_VM_RUN"
rc=$?
echo "TITUS-VM: suite took $(awk -v s="$start" '{printf "%.0f", $1 - s}' /proc/uptime)s"
