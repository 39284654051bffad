#!/usr/bin/env bash
# Builds the arm64 nokbox package on any host (make deb-arm64; the image needs it):
#   scripts/build-deb-arm64.sh [OUTDIR]     -> OUTDIR/nokbox_<version>_arm64.deb (default build/deb)
# On an arm64 machine this is scripts/build-deb.sh. Elsewhere it runs scripts/setup.sh and
# scripts/build-deb.sh inside an emulated Debian bookworm arm64 root filesystem (mmdebstrap, then
# systemd-nspawn through qemu-user and binfmt_misc), so the wheels are the ones pip picks for
# aarch64, pyalsaaudio and tpm2-pytss are compiled for it, and dsp's kernels are compiled ahead of
# time for the Raspberry Pi 4's CPU (NOKBOX_KERNEL_CPU, default cortex-a72). The build root is kept in
# build/arm64-root (NOKBOX_ARM64_ROOT) so a second build skips the bootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-build/deb}")
if [[ $(dpkg --print-architecture) == arm64 ]]; then
    exec scripts/build-deb.sh "$OUT"
fi
BROOT=$(realpath -m "${NOKBOX_ARM64_ROOT:-build/arm64-root}")
CPU=${NOKBOX_KERNEL_CPU:-cortex-a72}

# aarch64 binaries run through qemu-user (the F flag: the interpreter works inside a chroot)
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64
fi

if [[ ! -x "$BROOT/usr/bin/python3" ]]; then
    echo "build-deb-arm64: bootstrapping an arm64 build root in $BROOT" >&2
    rm -rf "$BROOT"
    mmdebstrap --architectures=arm64 --variant=apt \
        --include=systemd,python3,python3-venv,python3-dev,gcc,g++,pkg-config,git,ca-certificates,dpkg-dev,libasound2-dev,libasound2,alsa-utils,libsndfile1,libopus0,libogg0,libtss2-dev,fonts-nanum,mtools,dosfstools,udisks2,exfatprogs \
        bookworm "$BROOT" >&2
fi

# the tracked sources (as build-deb.sh itself copies them), in a git repository of their own
# (the build venv is kept across builds: under emulation pip takes minutes to fill it again)
[[ -d "$BROOT/src/.venv" ]] && mv "$BROOT/src/.venv" "$BROOT/venv.keep"
rm -rf "$BROOT/src"
mkdir -p "$BROOT/src" "$OUT"
[[ -d "$BROOT/venv.keep" ]] && mv "$BROOT/venv.keep" "$BROOT/src/.venv"
git ls-files -z | xargs -0 cp --parents -t "$BROOT/src"
git -C "$BROOT/src" init -q
git -C "$BROOT/src" add -A

# pip inside fetches the wheels through this host's network, so it trusts what this host trusts (a
# proxy's own CA, say): the host's bundle, read-only, for the build only (it is not in the package)
CA=()
[[ -r /etc/ssl/certs/ca-certificates.crt ]] && CA=(--bind-ro=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca.crt
                                                   -E PIP_CERT=/etc/ssl/host-ca.crt -E SSL_CERT_FILE=/etc/ssl/host-ca.crt)
systemd-nspawn --register=no --keep-unit -q -D "$BROOT" --bind="$OUT:/out" --chdir=/src "${CA[@]}" \
    -E NOKBOX_KERNEL_CPU="$CPU" -E HOME=/root -E LANG=C.UTF-8 \
    /bin/bash -c 'git config --global --add safe.directory /src && scripts/setup.sh && scripts/build-deb.sh /out' >&2
ls "$OUT"/nokbox_*_arm64.deb
