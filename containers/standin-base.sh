#!/usr/bin/env bash
# Build a local stand-in for the images' base (python:3.11-slim-bookworm) where Docker Hub is out
# of reach but a Debian mirror is not: an air-gapped build host, a sandbox behind a proxy.
#
#   containers/standin-base.sh [--wheels DIR] TAG
#
# Debian bookworm (debootstrap --variant=minbase) with Debian's python3.11 and its venv module,
# `python` on the PATH as in the official image, this host's CA bundle (so a TLS-intercepting
# proxy the host trusts is trusted inside), and a pip configuration that names that bundle.
# --wheels DIR copies DIR's wheels into /opt/wheels and makes it pip's find-links (a wheelhouse
# for what no reachable index holds, such as torch X+cpu where download.pytorch.org is blocked).
#
# Then: containers/build-and-smoke.sh --base TAG. A stand-in differs from the pinned base (Debian's
# Python patch release, not python.org's), so it checks the Dockerfiles' steps and the images'
# behaviour, not the base itself. Needs root and debootstrap.
set -euo pipefail

usage="usage: containers/standin-base.sh [--wheels DIR] TAG"
case "${1:-}" in
  -h | --help) echo "$usage"; exit 0 ;;
esac
command -v debootstrap >/dev/null 2>&1 || { echo "standin-base: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "standin-base: needs root (debootstrap and chroot)" >&2; exit 2; }
wheels=""
if [ "${1:-}" = "--wheels" ]; then
  wheels=$(realpath "${2:?--wheels needs a folder}")
  shift 2
fi
tag=${1:?$usage}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT

echo "standin-base: debootstrap bookworm from $mirror (a minute or so)"
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/dev/null
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount --bind /proc "$root/proc"
chroot "$root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv >/dev/null'
umount "$root/proc"
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ntimeout = 120\nretries = 1\n' >"$root/etc/pip.conf"
if [ -n "$wheels" ]; then
  mkdir -p "$root/opt/wheels"
  cp "$wheels"/*.whl "$root/opt/wheels/"
  printf 'find-links = /opt/wheels\n' >>"$root/etc/pip.conf"
fi
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
: >"$root/etc/resolv.conf"
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' - "$tag" >/dev/null
docker run --rm "$tag" python -c 'import sys, tomllib, venv; print("standin-base:", sys.version.split()[0])'
echo "standin-base: built $tag"
