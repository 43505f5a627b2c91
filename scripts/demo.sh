#!/usr/bin/env bash
# The main job, on one machine: containerd, a registry with a busybox image,
# moto (STS) and AWS's IMDS mock standing in for AWS, the scheduler with its
# embedded etcd, and one agent with the local network provider. It submits a
# service job and shows its task running with its own IP, answering its own
# metadata and IAM credentials. Idempotent; `scripts/demo.sh stop` (or
# `make demo-stop`) removes everything it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO=/var/lib/titus-demo
RUN=/run/titus-demo
BIN=$ROOT/bin
CACHE=${TITUS_CACHE:-$HOME/.cache/titus-agent}/bin
export PATH=$CACHE:$PATH
REGISTRY=127.0.0.1:15000
MOTO_PORT=15001
IMDS_PORT=15002
SCHED=127.0.0.1:17400
CIDR=198.19.254.0/24   # inside 198.18.0.0/15, the range reserved for test beds
BRIDGE=titus-demo0
ROLE=arn:aws:iam::123456789012:role/demo-app

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (make demo)"

agent() { "$BIN/titus-agent" --socket "$RUN/agent.sock" "$@"; }
sched() { "$BIN/titus-scheduler" --addr "$SCHED" "$@"; }

alive() { [[ -f $RUN/$1.pid ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# start NAME CMD... runs CMD in the background (own session), once.
start() {
  local name=$1; shift
  if alive "$name"; then echo "$name: already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  setsid "$@" >"$DEMO/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
  echo "$name: started (pid $!, log $DEMO/$name.log)"
}

wait_for() { # wait_for WHAT CMD...
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up; see $DEMO/*.log"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_all() {
  say "stopping the demo"
  # The scheduler first, so it does not replace the tasks killed below.
  if alive scheduler; then
    kill -TERM -- "-$(cat "$RUN/scheduler.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do alive scheduler || break; sleep 0.1; done
  fi
  if alive agent; then
    for t in $(agent task ls -o json 2>/dev/null | grep -o '"id": *"[^"]*"' | cut -d'"' -f4); do agent task kill --grace 2s "$t" >/dev/null 2>&1 || true; done
    for _ in $(seq 1 100); do [[ -z $(agent task ls 2>/dev/null | tail -n +2) ]] && break; sleep 0.2; done
  fi
  for p in agent scheduler imds-mock moto registry containerd; do
    if alive "$p"; then kill -TERM -- "-$(cat "$RUN/$p.pid")" 2>/dev/null || true; fi
  done
  # The agent finishes the teardowns under way before it exits.
  for _ in $(seq 1 100); do alive agent || break; sleep 0.1; done
  sleep 1
  for p in agent scheduler imds-mock moto registry containerd; do
    if alive "$p"; then kill -KILL -- "-$(cat "$RUN/$p.pid")" 2>/dev/null || true; fi
    rm -f "$RUN/$p.pid"
  done
  # Shims of the demo's containerd and their log drivers (they outlive it by design).
  for pid in $(pgrep -f "containerd-shim-runc-v2.*-address $RUN/containerd.sock" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  pkill -KILL -f "titus-logger .*--log-dir $DEMO/" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  nft delete table ip "titus_${BRIDGE//-/_}" 2>/dev/null || true
  # The agent's host firewall outlives the agent by design; the demo removes it.
  nft delete table inet "titus_fw_${BRIDGE//-/_}" 2>/dev/null || true
  nft delete table bridge "titus_fw_${BRIDGE//-/_}" 2>/dev/null || true
  for v in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^t[tp][0-9a-f]{10}$' || true); do
    [[ -e $RUN/netns ]] && ip link del "$v" 2>/dev/null || true
  done
  { grep -E " ($RUN|$DEMO)/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for l in $(losetup -a 2>/dev/null | grep -F "($DEMO/" | cut -d: -f1); do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$RUN" "$DEMO"
  echo "stopped; nothing of the demo is left"
}

if [[ ${1:-} == stop ]]; then stop_all; exit 0; fi

mkdir -p "$DEMO" "$RUN"
[[ -x $BIN/titus-agent && -x $BIN/titus-scheduler ]] || die "binaries missing: run 'make demo' (it builds them)"
(cd "$ROOT" && go build -o "$BIN/push-busybox" ./test/tools/push-busybox)

say "containerd (private root, state and socket)"
cat >"$DEMO/containerd.toml" <<EOF
version = 3
root = "$DEMO/containerd"
state = "$RUN/containerd"
imports = []
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$RUN/containerd.sock"
[ttrpc]
  address = "$RUN/containerd.sock.ttrpc"
EOF
start containerd containerd --config "$DEMO/containerd.toml"
wait_for containerd ctr --address "$RUN/containerd.sock" version

say "registry on $REGISTRY with a busybox image"
mkdir -p "$DEMO/registry"
cat >"$DEMO/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $DEMO/registry
http:
  addr: $REGISTRY
EOF
start registry docker-registry serve "$DEMO/registry.yml"
wait_for registry port_open "${REGISTRY##*:}"
IMAGE=$("$BIN/push-busybox" --registry "$REGISTRY" --repo demo/busybox --tag latest)
echo "image: $IMAGE"

say "AWS stand-ins: moto (STS) on :$MOTO_PORT, the EC2 metadata mock on :$IMDS_PORT"
start moto moto_server -H 127.0.0.1 -p "$MOTO_PORT"
start imds-mock ec2-metadata-mock -n 127.0.0.1 -p "$IMDS_PORT"
wait_for moto port_open "$MOTO_PORT"
wait_for imds-mock port_open "$IMDS_PORT"

say "scheduler on $SCHED (embedded etcd)"
start scheduler "$BIN/titus-scheduler" serve --data-dir "$DEMO/scheduler" --listen "$SCHED"
wait_for scheduler sched agent ls

say "agent (local network $CIDR on bridge $BRIDGE, metadata in every task)"
cat >"$DEMO/agent.yaml" <<EOF
socket: $RUN/agent.sock
stateDir: $DEMO/agent
logDir: $DEMO/agent/logs
containerd: {address: $RUN/containerd.sock, namespace: titus}
registries: {plainHTTP: ["$REGISTRY"]}
network:
  provider: local
  netnsDir: $RUN/netns
  local: {cidr: $CIDR, bridge: $BRIDGE}
metadata:
  enabled: true
  upstream: http://127.0.0.1:$IMDS_PORT
  stsEndpoint: http://127.0.0.1:$MOTO_PORT
  region: us-east-1
  accessKeyID: demo
  secretAccessKey: demo
isolation: {diskDir: $DEMO/agent/disks}
scheduler: {address: "$SCHED", instanceID: demo-host-1, instanceType: local, zone: us-east-1a}
metricsListen: 127.0.0.1:19101
EOF
"$BIN/titus-agent" config check -c "$DEMO/agent.yaml" >/dev/null
start agent "$BIN/titus-agent" daemon --config "$DEMO/agent.yaml"
wait_for agent agent health
for _ in $(seq 1 100); do sched agent ls 2>/dev/null | grep -q demo-host-1 && break; sleep 0.1; done
sched agent ls

say "submitting a service job"
if sched job ls -o json 2>/dev/null | grep -q '"name": *"hello"'; then
  echo "job hello is already running"
else
  cat >"$DEMO/job.yaml" <<EOF
name: hello
ownerEmail: demo@example.com
application: demo
service: {min: 1, desired: 1, max: 2}
task:
  image: $IMAGE
  command: ["sh", "-c", "mkdir -p /www && echo hello from \$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
  iamRoleArn: $ROLE
  resources: {cpuMillicores: 500, memoryMib: 128, diskMib: 256}
EOF
  sched job submit -f "$DEMO/job.yaml"
fi

TASK=""
for _ in $(seq 1 300); do
  TASK=$(agent task ls 2>/dev/null | awk '$2=="RUNNING"{print $1; exit}')
  [[ -n $TASK ]] && break
  sleep 0.1
done
[[ -n $TASK ]] || die "no task reached RUNNING; see $DEMO/agent.log"
agent task ls
IP=$(agent task get "$TASK" -o json | grep -o '"ipv4": *"[^"]*"' | cut -d'"' -f4)

say "task $TASK has its own IP: $IP"
echo "from the host:            $(printf 'GET /index.html HTTP/1.0\r\n\r\n' | busybox nc -w 3 "$IP" 8080 | tail -1)"
fetch='printf "GET /latest/meta-data/%s HTTP/1.0\r\n\r\n" "$0" | nc -w 3 169.254.169.254 80 | tail -1'
echo "its metadata, from inside: local-ipv4  = $(agent task exec "$TASK" -- sh -c "$fetch" local-ipv4)"
echo "                           instance-id = $(agent task exec "$TASK" -- sh -c "$fetch" instance-id)"
echo "                           iam role    = $(agent task exec "$TASK" -- sh -c "$fetch" iam/security-credentials/)"
echo "its IAM credentials (from STS, for its role only):"
agent metadata get "$TASK" "/latest/meta-data/iam/security-credentials/${ROLE##*/}" | grep -E '"(Code|Type|AccessKeyId|Expiration)"'

say "done"
cat <<EOF
Try:  $BIN/titus-agent --socket $RUN/agent.sock task ls
      $BIN/titus-agent --socket $RUN/agent.sock task exec $TASK -- ip addr
      $BIN/titus-scheduler --addr $SCHED job ls
      $BIN/titus-scheduler --addr $SCHED job scale <JOB> --desired 2
Stop: make demo-stop      (removes everything the demo started)
EOF
