#!/usr/bin/env bash
# Installs everything the agent, its tests and its demo need on a fresh
# Debian 12 machine: Debian packages, containerd 2.x and runc built from source
# (cached), and AWS's IMDS mock. Idempotent; fast when everything is present.
set -euo pipefail

CONTAINERD_VERSION=v2.2.9
# runc for both test lanes, the host's and the VM's (test/vm/run.sh), and
# `make demo`: the AMI bake (deploy/) installs the same release. Debian 12's
# runc 1.1.5 cannot exec into a user-namespace task on its own netns.
RUNC_VERSION=v1.5.3
IMDS_MOCK_VERSION=v1.13.0
ETCD_VERSION=v3.7.3 # the go.etcd.io/etcd/*/v3 version in go.mod
CACHE="${TITUS_CACHE:-$HOME/.cache/titus-agent}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

APT_PKGS=(gcc libc6-dev libseccomp-dev pkg-config docker-registry busybox-static tini iproute2 nftables iptables e2fsprogs xfsprogs protobuf-compiler libprotobuf-dev systemd-container util-linux procps psmisc)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$BIN/.containerd-$CONTAINERD_VERSION"
if [[ ! -f "$stamp" || ! -x "$BIN/containerd" || ! -x "$BIN/containerd-shim-runc-v2" || ! -x "$BIN/ctr" ]]; then
  echo "deps: building containerd $CONTAINERD_VERSION (a few minutes the first time)"
  GOBIN="$BIN" go install \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
  touch "$stamp"
fi

# runc, with cgo and libseccomp (its seccomp filters need both), under a
# versioned name: rebuilt only when RUNC_VERSION changes. "$BIN/runc" points
# at it; the tests, the demo and the VM lane's guest payload use that one.
# Debian's runc, if installed, is left alone and never used.
runc="$BIN/runc-$RUNC_VERSION"
if [[ ! -x "$runc" ]]; then
  echo "deps: building runc $RUNC_VERSION (cgo, libseccomp)"
  gobin="$(mktemp -d "$BIN/.runc.XXXXXX")"
  (cd / && GOBIN="$gobin" CGO_ENABLED=1 go install -tags seccomp "github.com/opencontainers/runc@$RUNC_VERSION")
  "$gobin/runc" --version | grep -q '^libseccomp: ' || { rm -rf "$gobin"; echo "deps: FATAL: runc built without libseccomp" >&2; exit 1; }
  mv "$gobin/runc" "$runc" && rmdir "$gobin"
fi
ln -sfn "runc-$RUNC_VERSION" "$BIN/runc"

stamp="$BIN/.imds-mock-$IMDS_MOCK_VERSION"
if [[ ! -f "$stamp" || ! -x "$BIN/ec2-metadata-mock" ]]; then
  echo "deps: installing ec2-metadata-mock $IMDS_MOCK_VERSION"
  GOBIN="$BIN" go install "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$IMDS_MOCK_VERSION"
  touch "$stamp"
fi

stamp="$BIN/.etcd-$ETCD_VERSION"
if [[ ! -f "$stamp" || ! -x "$BIN/etcd" ]]; then
  # For the scheduler's tests against an external etcd (--etcd-endpoints).
  # `go install` refuses the server module (its go.mod replaces its siblings
  # with ../ paths), so build it as a main module against the released siblings.
  echo "deps: building etcd $ETCD_VERSION"
  src="$(cd / && go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  tmp="$(mktemp -d)"
  cp -r "$src/." "$tmp/" && chmod -R u+w "$tmp"
  (cd "$tmp" && sed -i '/^replace (/,/^)/d' go.mod && GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 && go build -o "$BIN/etcd" .)
  rm -rf "$tmp"
  touch "$stamp"
fi

if ! command -v moto_server >/dev/null; then
  echo "deps: moto_server not found; trying pip" >&2
  pip install -q 'moto[server]>=5' || { echo "deps: FATAL: moto_server is required (moto 5.x)" >&2; exit 1; }
fi

# The shim must be on containerd's PATH; link it where root's PATH finds it.
ln -sf "$BIN/containerd-shim-runc-v2" /usr/local/bin/containerd-shim-runc-v2
echo "deps: ok ($BIN)"
