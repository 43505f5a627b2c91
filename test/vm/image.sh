#!/usr/bin/env bash
# The guest image recipe of `make test-vm`: a Debian 12 root with Debian's
# cloud kernel, systemd as PID 1 and what the integration tests run inside.
# run.sh hashes this file (and the mirror it is built from) into the cache
# key, so editing it rebuilds the image; nothing else does.
#
#   image.sh OUTDIR
#   image.sh --inputs    (print what else the image is made from: the apt
#                         sources and the host's moto, see below)
#
# writes OUTDIR/root.img (ext4, no partition table), OUTDIR/vmlinuz and
# OUTDIR/initrd.img. The packages come from the Debian mirror the host's apt
# already uses (read from apt's own configuration, never written here).
# moto, which Debian 12 does not package, is the host lane's own: the files
# of its installed distributions (test/vm/moto.py) under /opt/moto, run by
# Debian's python3 of the same minor version as /usr/local/bin/moto_server.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

out="$1"
SUITE=bookworm
IMAGE_SIZE=3G
PACKAGES=(
  # boot: Debian's own cloud kernel, systemd as PID 1
  linux-image-cloud-amd64 initramfs-tools systemd systemd-sysv udev kmod dbus
  # what the tests run and the agent calls
  xfsprogs e2fsprogs util-linux mount procps psmisc iproute2 nftables iptables
  busybox-static tini docker-registry libseccomp2 dpkg ca-certificates
  # moto_server's interpreter (moto itself is the host's, below)
  python3
)

# The Python that runs the host's moto_server (through a pyenv shim, if
# that is how it is installed).
moto_python() {
  local bin interp arg
  bin="$(command -v moto_server)" || { echo "image.sh: moto_server not found on the host (run make deps)" >&2; return 1; }
  if grep -q 'pyenv' "$bin" 2>/dev/null && command -v pyenv >/dev/null; then
    bin="$(pyenv which moto_server)"
  fi
  read -r interp arg < <(sed -n '1s/^#![[:space:]]*//p' "$bin")
  [[ $interp == */env ]] && interp="$(command -v "$arg")"
  [[ -x $interp ]] || { echo "image.sh: cannot tell which Python runs $bin" >&2; return 1; }
  echo "$interp"
}
py="$(moto_python)"
moto_list="$("$py" "$here/moto.py" list)"

# The host's Debian mirror(s) for $SUITE, $SUITE-updates and
# $SUITE-security, as apt resolved them.
mapfile -t sources < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(IDENTIFIER)' |
  awk -v s="$SUITE" '$4 == "Packages" && $3 == "main" && ($2 == s || $2 == s "-updates" || $2 == s "-security") { print "deb " $1 " " $2 " main" }' | sort -u)
if ! printf '%s\n' "${sources[@]}" | grep -q " $SUITE main\$"; then
  echo "image.sh: the host's apt has no '$SUITE main' source (apt-get indextargets); run apt-get update" >&2
  exit 1
fi
if [[ $out == --inputs ]]; then
  printf '%s\n' "${sources[@]}" "$moto_list"
  exit 0
fi

work="$(mktemp -d /var/tmp/titus-vm-root.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"

# Units the guest must not start: they only slow a TCG boot down, or, like
# Debian's own docker-registry, would collide with the tests' private ones.
mask=(apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer
  docker-registry.service systemd-timesyncd.service man-db.timer dpkg-db-backup.timer
  getty@tty1.service systemd-networkd-wait-online.service)

mmdebstrap --variant=apt --components=main --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --customize-hook='echo titus-vm > "$1/etc/hostname"' \
  --customize-hook='printf "/dev/vda / ext4 rw,relatime 0 1\n" > "$1/etc/fstab"' \
  --customize-hook='chroot "$1" passwd -d root >/dev/null' \
  --customize-hook="chroot \"\$1\" systemctl mask ${mask[*]} >/dev/null 2>&1 || true" \
  --customize-hook='mkdir -p "$1/etc/systemd/system/multi-user.target.wants"' \
  --customize-hook='upload '"$here"'/titus-vm-run.service /etc/systemd/system/titus-vm-run.service' \
  --customize-hook='ln -s /etc/systemd/system/titus-vm-run.service "$1/etc/systemd/system/multi-user.target.wants/titus-vm-run.service"' \
  --customize-hook='rm -rf "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"*' \
  "$SUITE" "$root" "${sources[@]}"

# moto: its compiled parts are built for the host Python's minor version.
want="python$(head -1 <<<"$moto_list" | cut -d' ' -f2)"
have="$(readlink "$root/usr/bin/python3")"
if [[ $have != "$want" ]]; then
  echo "image.sh: the host's moto runs on $want ($py), the guest's python3 is $have; install moto for $have on the host" >&2
  exit 1
fi
mkdir -p "$root/opt/moto/lib"
"$py" "$here/moto.py" copy "$root/opt/moto/lib"
cat >"$root/usr/local/bin/moto_server" <<'EOF'
#!/bin/sh
# The host lane's moto (test/vm/image.sh), nothing else on its path.
PYTHONPATH=/opt/moto/lib exec /usr/bin/python3 -S -c 'import sys; from moto.server import main; sys.exit(main())' "$@"
EOF
chmod 755 "$root/usr/local/bin/moto_server"

kernel="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)"
initrd="$root/boot/initrd.img-${kernel##*/vmlinuz-}"
[[ -f "$kernel" && -f "$initrd" ]] || { echo "image.sh: no kernel or initrd in the root" >&2; exit 1; }
mkdir -p "$out"
cp "$kernel" "$out/vmlinuz.tmp" && cp "$initrd" "$out/initrd.img.tmp"
basename "$kernel" | sed 's/^vmlinuz-//' > "$out/kernel-version.tmp"
# An ext4 image straight from the directory: no loop device, no mount.
rm -f "$out/root.img.tmp"
mkfs.ext4 -q -F -L titus-root -d "$root" "$out/root.img.tmp" "$IMAGE_SIZE"
for f in vmlinuz initrd.img kernel-version root.img; do mv "$out/$f.tmp" "$out/$f"; done
