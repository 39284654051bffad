#!/usr/bin/env bash
# Builds the nokbox Debian package for this machine's architecture (make deb).
#   scripts/build-deb.sh [OUTDIR]        -> OUTDIR/nokbox_<version>_<arch>.deb (default build/deb)
# The package carries nokbox and every Python dependency as wheels for this architecture, pinned to
# the versions built here (/opt/nokbox/requirements.txt); postinst installs them into
# /opt/nokbox/venv with pip --no-index, so installing needs no network. dsp's kernels are compiled
# ahead of time for this CPU and shipped inside the nokbox wheel. For arm64 run it on (or in an
# emulated chroot of) an arm64 machine: scripts/build-deb-arm64.sh. Needs scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$(realpath -m "${1:-build/deb}")
ARCH=$(dpkg --print-architecture)
VERSION=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
WORK=$(mktemp -d /tmp/nokbox-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "build-deb: nokbox $VERSION for $ARCH" >&2
NOKBOX_DSP_JIT=1 .venv/bin/python scripts/build_kernels.py >&2

# a clean copy of the tracked sources plus the built kernels: setuptools writes build/ beside the
# sources it builds, and the working tree's build/lib would shadow the package in tests
mkdir -p "$WORK/src"
git ls-files -z | xargs -0 cp --parents -t "$WORK/src"
cp dsp/_kernels*.so "$WORK/src/dsp/"

WH="$WORK/root/opt/nokbox/wheels"
mkdir -p "$WH"
# every dependency as a wheel for this Python and architecture (built from source where PyPI has none:
# pyalsaaudio, tpm2-pytss); the pip cache makes a second build quick
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$WH" "$WORK/src" >&2
ls "$WH" | sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/' | sort -f > "$WORK/root/opt/nokbox/requirements.txt"

R="$WORK/root"
install -D -m 0644 -t "$R/lib/systemd/system" systemd/*.service
install -D -m 0644 systemd/sysusers.d/nokbox.conf "$R/usr/lib/sysusers.d/nokbox.conf"
install -D -m 0644 systemd/tmpfiles.d/nokbox.conf "$R/usr/lib/tmpfiles.d/nokbox.conf"
install -D -m 0644 image/deb/nokbox.toml "$R/etc/nokbox/nokbox.toml"
install -D -m 0644 image/deb/nginx-nokbox.conf "$R/etc/nginx/sites-available/nokbox"
install -D -m 0644 -t "$R/opt/nokbox/share/doc" README.md docs/*.md
mkdir -p "$R/usr/bin"
# the command at the console: as the units do, it leaves DATA's shared files (audit trail, index,
# accounts) group-readable for the three services, whoever runs it (firmware/config.py shared_mode)
printf '#!/bin/sh\nNOKBOX_SHARED_DATA=1 exec /opt/nokbox/venv/bin/nokbox "$@"\n' > "$R/usr/bin/nokbox"
chmod 0755 "$R/usr/bin/nokbox"

mkdir -p "$R/DEBIAN"
TSS=$(dpkg-query -W -f='${Package}\n' 'libtss2-esys*' 2>/dev/null | grep -v -- -dev | head -1)
SIZE=$(du -sk --exclude=DEBIAN "$R" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" -e "s/@TSS@/${TSS:-libtss2-esys-3.0.2-0}, libtss2-tctildr0/" \
    image/deb/DEBIAN/control.in > "$R/DEBIAN/control"
install -m 0644 image/deb/DEBIAN/conffiles "$R/DEBIAN/conffiles"
install -m 0755 image/deb/DEBIAN/postinst image/deb/DEBIAN/prerm image/deb/DEBIAN/postrm "$R/DEBIAN/"

mkdir -p "$OUT"
DEB="$OUT/nokbox_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$R" "$DEB" >&2
echo "$DEB"
