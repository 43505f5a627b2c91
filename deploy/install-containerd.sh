#!/bin/sh
# Install containerd ${CONTAINERD_VERSION} (2.x) and runc ${RUNC_VERSION} from
# their GitHub releases, with containerd's own systemd unit. Run as root.
set -eu
arch=amd64
cd /tmp
curl -fsSLO "https://github.com/containerd/containerd/releases/download/v${CONTAINERD_VERSION}/containerd-${CONTAINERD_VERSION}-linux-${arch}.tar.gz"
curl -fsSLO "https://github.com/containerd/containerd/releases/download/v${CONTAINERD_VERSION}/containerd-${CONTAINERD_VERSION}-linux-${arch}.tar.gz.sha256sum"
sha256sum -c "containerd-${CONTAINERD_VERSION}-linux-${arch}.tar.gz.sha256sum"
tar -C /usr/local -xzf "containerd-${CONTAINERD_VERSION}-linux-${arch}.tar.gz"
curl -fsSL -o /usr/local/lib/systemd/system/containerd.service --create-dirs \
  "https://raw.githubusercontent.com/containerd/containerd/v${CONTAINERD_VERSION}/containerd.service"
# runc 1.2 or later: exec into a task in its own user namespace needs its
# two-stage namespace join. The upstream release binary is static, with libseccomp.
curl -fsSLO "https://github.com/opencontainers/runc/releases/download/v${RUNC_VERSION}/runc.${arch}"
curl -fsSLO "https://github.com/opencontainers/runc/releases/download/v${RUNC_VERSION}/runc.sha256sum"
grep " \*\?runc.${arch}\$" runc.sha256sum | sha256sum -c
install -m 0755 "runc.${arch}" /usr/local/sbin/runc
/usr/local/sbin/runc --version
# cgroup v2 with systemd as the cgroup manager (AL2023 and Ubuntu 24.04 boot cgroup v2).
mkdir -p /etc/containerd
/usr/local/bin/containerd config default |
  sed 's/SystemdCgroup = false/SystemdCgroup = true/' > /etc/containerd/config.toml
systemctl daemon-reload
systemctl enable containerd.service
