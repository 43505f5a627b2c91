"""The host's moto for the VM lane's guest (test/vm/image.sh).

Run with the Python interpreter that runs the host's moto_server (the host
lane's moto, scripts/deps.sh):

    python moto.py list          the interpreter's version and every
                                 distribution moto_server needs, one per line
    python moto.py copy DIR      copy those distributions' files into DIR

The guest has no network and Debian 12 has no moto package, so the guest
runs the host lane's moto itself: the installed files of moto and of what it
needs (its requirements and its web server's, followed transitively),
read from each distribution's own record of its files, under Debian's
python3 of the same minor version (image.sh checks it).
"""

import importlib.metadata as md
import os
import re
import shutil
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement


def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()


# What moto_server needs for the services the guest's tests use (EC2, STS,
# IAM): moto itself and the web server of its "server" extra. The rest of
# that extra (CloudFormation's linter, sympy, docker, ...) serves other
# services and would triple the copy.
ROOTS = ("moto", "flask", "flask-cors")


def closure(roots=ROOTS):
    """Distributions the roots need, as {key: Distribution}."""
    dists, done = {}, {}
    todo = [(r, set()) for r in roots]
    while todo:
        name, want = todo.pop()
        k = key(name)
        if k in done and want <= done[k]:
            continue
        try:
            d = md.distribution(name)
        except md.PackageNotFoundError:
            sys.exit(f"moto.py: {name}, which moto needs, is not installed for {sys.executable}")
        done[k] = done.get(k, set()) | want
        dists[k] = d
        for r in d.requires or []:
            req = Requirement(r)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (done[k] or {""})):
                continue
            todo.append((req.name, set(req.extras)))
    return dists


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("list", "copy") or (sys.argv[1] == "copy") != (len(sys.argv) == 3):
        sys.exit("usage: moto.py list | moto.py copy DIR")
    dists = closure()
    if sys.argv[1] == "list":
        print("python %d.%d" % sys.version_info[:2])
        for k in sorted(dists):
            print(k, dists[k].version)
        return
    dst = sys.argv[2]
    for k in sorted(dists):
        d = dists[k]
        base = d.locate_file("")
        for f in d.files or []:
            src = d.locate_file(f)
            rel = os.path.relpath(src, base)
            # Only the importable tree: no scripts or data outside it.
            if rel.startswith("..") or not os.path.isfile(src):
                continue
            out = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copy2(src, out)


if __name__ == "__main__":
    main()
