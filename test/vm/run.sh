#!/usr/bin/env bash
# `make test-vm`: the production-kernel lane. Boots a Debian 12 guest (Debian's
# cloud kernel, cgroup v2 only, systemd as PID 1) under qemu-system-x86_64 and
# runs a defined subset of test/integration inside it, with /tmp on an XFS
# disk mounted with prjquota. See docs/operations.md ("Kernels and cgroup
# modes") and the README's test section.
#
# Cached under $TITUS_CACHE (~/.cache/titus-agent): the guest image in
# vm/<hash of image.sh, moto.py, the unit, the mirror and the host's moto>/
# (images of other recipes are removed once this one is built, unless a
# run is using them), whether KVM boots it in vm/kvm-<hash of the host
# kernel, qemu and the guest kernel>; runc is the one
# scripts/deps.sh builds for both lanes (bin/runc -> runc-<version>).
# Per run, in a temporary directory removed at exit: the payload disk (the
# test binary built here with `go test -c`, the agent, containerd, runc),
# the XFS disk and the guest's output. The guest has no network device; it
# talks to the host over one virtio-serial port. Exit status: the guest's
# `go test`'s, or 1 when the guest never reported one.
#
# `run.sh --prepare` only builds the image if it is missing and exits.
#
# Environment: TITUS_VM_RUN (the -run regex; default below), TITUS_VM_TIMEOUT
# (go test -timeout, default 40m), TITUS_VM_ACCEL (auto|kvm|tcg),
# TITUS_VM_LOG (the guest's full output, default /tmp/titus-vm.log).
set -euo pipefail
# The whole script is one compound command, so bash parses it before it
# runs any of it: editing this file during a run cannot derail that run.
{

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CACHE="${TITUS_CACHE:-$HOME/.cache/titus-agent}"
BIN="$CACHE/bin"
# What the guest runs by default (README, "Tests"): each test starts its own
# containerd, registry and agent, a minute or more apiece under TCG. The
# lane runs beside the host lane in `make test` (about 21 min of unit,
# integration and chaos), which must stay under 45 min: keep this lane
# under about 20 min with a warm image (a cold image adds 4-10). Re-adoption
# after kill -9: TestVMAgentKill9Readopts (the host lane's
# TestAgentKill9ReadoptsRunningTasks with 2 tasks, not 10: about 140 s) and
# TestVMSystemdAgentKeepsTasks (restart, watchdog kill, kill -9, stop, under
# systemd). Metadata: TestVMMetadataInTask (the host lane's metadata test
# without its flood and restart phases). Fork bomb: TestIsolation/ForkBomb
# (runtime level) and TestAgentForkBombStaysResponsive (through the agent:
# pids.max holds, the agent answers, the host forks, a neighbour runs).
# TITUS_VM_RUN runs any test in the guest (a regex as for go test -run).
DEFAULT_RUN='^(TestAgentRunToCompletion|TestAgentKillGraceThenSIGKILL|TestAgentOOMKilled|TestAgentOrphansAfterKillMidLaunch|TestIsolation|TestVMSystemdAgentKeepsTasks|TestVMAgentKill9Readopts|TestVMCgroupV2Agent|TestVMXFSQuotaNotEscapable|TestIsolationBandwidth|TestExecUserNamespaceTask|TestAgentUserNamespaceWithNetwork|TestVMMetadataInTask|TestAgentLocalNetworkGivesEachTaskItsOwnIP|TestAgentForkBombStaysResponsive)$'
RUN="${TITUS_VM_RUN:-$DEFAULT_RUN}"
TIMEOUT="${TITUS_VM_TIMEOUT:-40m}"
LOG="${TITUS_VM_LOG:-/tmp/titus-vm.log}"
ACCEL="${TITUS_VM_ACCEL:-auto}"
MEM_MIB=4096
CPUS=2

say() { echo "test-vm: $*"; }
die() { echo "test-vm: FATAL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }

[[ $(id -u) == 0 ]] || die "must run as root (the image build uses mmdebstrap in root mode)"

# Prerequisites, installed like scripts/deps.sh does; anything still missing
# afterwards is fatal.
APT_PKGS=(qemu-system-x86 mmdebstrap e2fsprogs xfsprogs)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for c in qemu-system-x86_64 mmdebstrap mkfs.ext4 go; do
  command -v "$c" >/dev/null || die "$c not found"
done
for c in containerd containerd-shim-runc-v2 ctr ec2-metadata-mock runc; do
  [[ -x "$BIN/$c" ]] || die "$BIN/$c missing (run make deps)"
done
# runc: the host lane's, built by scripts/deps.sh (production hosts run
# current runc, not Debian 12's 1.1.5).
runc="$(readlink -f "$BIN/runc")"

# The guest image, keyed by its recipe and the mirror it comes from.
key="$( { cat "$here/image.sh" "$here/moto.py" "$here/titus-vm-run.service"; bash "$here/image.sh" --inputs; } | sha256sum | cut -c1-16)"
img="$CACHE/vm/$key"
mkdir -p "$CACHE/vm"
exec 9>"$CACHE/vm/.lock"
flock 9
if [[ ! -f "$img/root.img" ]]; then
  say "building the guest image $key (mmdebstrap; a few minutes the first time)"
  t0=$(now)
  bash "$here/image.sh" "$img"
  say "image built in $(since "$t0")s"
fi
# This run uses the image until it exits (qemu inherits the descriptor,
# so the lock holds while it runs); taken under the build lock, so a run
# of another recipe cannot prune it in between.
exec 8<"$img/root.img"
flock -s 8
# Images of other recipes: this one replaces them. Remove each that no
# run is using (a run of an older checkout may be); keep the rest.
for old in "$CACHE"/vm/*/; do
  old="${old%/}"
  [[ $old == "$img" || ! -d $old ]] && continue
  if [[ ! -f $old/root.img ]] || flock -xn "$old/root.img" true; then
    say "removing the guest image of another recipe: ${old##*/} ($(du -sh "$old" | cut -f1))"
    rm -rf "$old"
  else
    say "keeping the guest image ${old##*/}: a run is using it"
  fi
done
flock -u 9
say "guest image $key: kernel $(cat "$img/kernel-version")"
if [[ ${1:-} == --prepare ]]; then
  exit 0 # image ready; nothing booted
fi

work="$(mktemp -d /var/tmp/titus-vm.XXXXXX)"
qpid=""
cleanup() {
  if [[ -n "$qpid" ]] && kill -0 "$qpid" 2>/dev/null; then
    kill "$qpid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$qpid" 2>/dev/null || true
  fi
  [[ -n "$qpid" ]] && wait "$qpid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The payload: what the guest runs, on a read-only ext4 disk.
t0=$(now)
pl="$work/payload"
mkdir -p "$pl/bin"
(cd "$repo" && go test -c -tags vmguest -o "$pl/integration.test" ./test/integration)
(cd "$repo" && go build -o "$pl/bin/" ./cmd/titus-agent ./cmd/titus-logger)
# The tools tests copy into task images (testenv.ToolBinary), static.
(cd "$repo" && CGO_ENABLED=0 go build -ldflags='-s -w' -o "$pl/bin/" ./test/tools/...)
cp "$BIN/containerd" "$BIN/containerd-shim-runc-v2" "$BIN/ctr" "$BIN/ec2-metadata-mock" "$pl/bin/"
cp "$runc" "$pl/bin/runc"
(cd "$repo" && make -s deb DIST="$pl" VERSION=0.0.0~vm ARCH=amd64 >/dev/null)
cp "$here/guest-run.sh" "$pl/"
{
  printf 'TITUS_VM_RUN=%q\n' "$RUN"
  printf 'TITUS_VM_TIMEOUT=%q\n' "$TIMEOUT"
  echo "export TITUS_TEST_TIME_SCALE=${TITUS_TEST_TIME_SCALE:-5}" # emulated CPUs: stretch the waits
  echo "export TITUS_VM_DEB=/opt/titus/titus-agent_0.0.0~vm_amd64.deb"
} >"$pl/env"
size_mib=$(($(du -sm "$pl" | cut -f1) + 64))
mkfs.ext4 -q -F -L titus-payload -d "$pl" "$work/payload.img" "${size_mib}M"
truncate -s 16G "$work/xfs.img" # sparse; formatted by the guest
say "payload ready in $(since "$t0")s (${size_mib} MiB)"

out="$work/out.log"
: >"$out"
boot() { # boot ACCEL: start qemu in the background, set qpid
  local accel="$1" cpu=max
  [[ $accel == kvm ]] && cpu=host
  : >"$out"
  qemu-system-x86_64 -name titus-vm -machine q35 -accel "$accel" -cpu "$cpu" -smp "$CPUS" -m "$MEM_MIB" \
    -nodefaults -display none -no-reboot -nic none \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 panic=-1 no_timer_check systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all systemd.show_status=0 loglevel=4" \
    -drive "file=$img/root.img,if=virtio,format=raw,snapshot=on" \
    -drive "file=$work/xfs.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$work/payload.img,if=virtio,format=raw,readonly=on" \
    -device virtio-serial-pci -chardev "file,id=out,path=$out" -device virtserialport,chardev=out,name=titus.out \
    -serial "file:$work/console.log" &
  qpid=$!
}
booted() { # booted SECONDS: wait until the guest says it booted
  local deadline=$(($(date +%s) + $1))
  while (($(date +%s) < deadline)); do
    grep -aq '^TITUS-VM: booted' "$out" && return 0
    kill -0 "$qpid" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

t0=$(now)
# Whether KVM boots this guest on this host, tried once per host kernel,
# qemu and guest kernel (what decides it; not the rest of the image, so a
# recipe change does not cost the try again): a failed try costs 60 s (KVM
# reaches the boot marker in seconds; TCG, for comparison, in about 65 s
# of guest uptime).
kvm_verdict="$CACHE/vm/kvm-$( { uname -r; qemu-system-x86_64 --version | head -1; sha256sum <"$img/vmlinuz"; } | sha256sum | cut -c1-16)"
for v in "$CACHE"/vm/kvm-*; do # verdicts of other kernels or qemus, or of older keys
  [[ -f $v && $v != "$kvm_verdict" ]] && rm -f "$v"
done
if [[ $ACCEL == auto ]]; then
  ACCEL=tcg
  if [[ -r /dev/kvm && -w /dev/kvm ]] && [[ $(cat "$kvm_verdict" 2>/dev/null) != tcg ]]; then
    # /dev/kvm is no proof: KVM guests were seen to hang at boot. Try it.
    boot kvm
    if booted 60; then ACCEL=kvm; echo kvm >"$kvm_verdict"; else
      say "KVM did not boot the guest within 60s; falling back to TCG (remembered in $kvm_verdict)"
      echo tcg >"$kvm_verdict"
      kill -9 "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; qpid=""
    fi
  elif [[ -f $kvm_verdict ]]; then
    say "KVM did not boot this guest before ($kvm_verdict); using TCG"
  fi
  [[ $ACCEL == tcg ]] && boot tcg
else
  boot "$ACCEL"
fi
say "qemu ($ACCEL, $CPUS vCPUs, $MEM_MIB MiB) pid $qpid"
booted 600 || { tail -40 "$work/console.log" >&2; die "the guest did not boot within 600s (console above)"; }
say "guest booted in $(since "$t0")s"

# Stream the guest's output as it comes: the test lines as test-integration
# shows them; the whole of it goes to $LOG.
case "$TIMEOUT" in
*h) deadline_s=$((${TIMEOUT%h} * 3600)) ;;
*m) deadline_s=$((${TIMEOUT%m} * 60)) ;;
*s) deadline_s=${TIMEOUT%s} ;;
*) die "TITUS_VM_TIMEOUT=$TIMEOUT: want a whole number of h, m or s" ;;
esac
deadline_s=$((deadline_s + 300))
# A watchdog for a wedged guest; its output stays off the pipe below.
(sleep "$deadline_s" && echo "test-vm: the guest ran past ${deadline_s}s; killed qemu" >"$work/watchdog" && kill -9 "$qpid") </dev/null >/dev/null 2>&1 &
watchdog=$!
tail -n +1 -F --pid="$qpid" "$out" 2>/dev/null |
  grep -a --line-buffered -E '^(--- |    |PASS|FAIL|ok|panic|INTEGRATION|TITUS-VM)' | grep -a --line-buffered -v '^        time=' || true
wait "$qpid" 2>/dev/null || true
qpid=""
kill $(pgrep -P "$watchdog") "$watchdog" 2>/dev/null || true # its sleep too
wait "$watchdog" 2>/dev/null || true
[[ -f "$work/watchdog" ]] && cat "$work/watchdog" >&2
cp "$out" "$LOG"
cp "$work/console.log" "${LOG%.log}-console.log"

rc="$(grep -a '^TITUS-VM: exit ' "$out" | tail -1 | awk '{print $3}')"
if [[ -z "$rc" ]]; then
  tail -40 "$work/console.log" >&2
  die "the guest never reported a result (full output: $LOG, console: ${LOG%.log}-console.log)"
fi
say "guest ran for $(since "$t0")s in all; go test exit $rc (full output: $LOG)"
# How many tests ran (main_test.go's count): a run of none is a failure.
ran="$(grep -a '^INTEGRATION: [0-9]* tests ran' "$out" | tail -1 | awk '{print $2}')"
if [[ -z "$ran" || "$ran" == 0 ]]; then
  echo "test-vm: FAILED: no VM test ran (go test exit $rc)"
  exit 1
fi
say "$ran VM tests ran in the guest"
[[ $rc == 0 ]] || { echo "test-vm: FAILED"; exit 1; }
exit 0
}
