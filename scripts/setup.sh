#!/usr/bin/env bash
# Installs everything nokbox needs on Debian / Raspberry Pi OS: apt packages and the Python venv.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   runtime + test tools (age, ALSA utils, Chromium, Playwright)
#   scripts/setup.sh --image  runtime + what make deb-arm64 and make image need (mmdebstrap, genimage,
#                             qemu-user and binfmt_misc for arm64, qemu-system-aarch64 for the boot check)
# Idempotent: runs apt-get only for missing packages and pip only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0 want_image=0
[[ "${1:-}" == "--test" ]] && want_test=1
[[ "${1:-}" == "--image" ]] && want_image=1

runtime_pkgs=(python3 python3-venv python3-dev gcc pkg-config libasound2-dev libasound2 alsa-utils libsndfile1 libopus0 libogg0
              libtss2-dev ca-certificates fonts-nanum mtools dosfstools udisks2 exfatprogs)
test_pkgs=(age sox opus-tools chromium fonts-noto-cjk espeak-ng asterisk-core-sounds-en-wav asterisk-moh-opsound-wav multimon-ng
           swtpm swtpm-tools tpm2-tools libtss2-tcti-swtpm0 7zip openssh-client poppler-utils
           exfat-fuse dbus-daemon udev systemd systemd-container mmdebstrap genimage fdisk)
image_pkgs=(mmdebstrap arch-test genimage mtools dosfstools e2fsprogs qemu-user-static binfmt-support qemu-system-arm
            systemd-container git fdisk qemu-utils)

pkgs=("${runtime_pkgs[@]}")
((want_test)) && pkgs+=("${test_pkgs[@]}")
((want_image)) && pkgs+=("${image_pkgs[@]}")

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Tests mount exFAT images as sticks. A kernel without exFAT (this CI's) mounts them with the FUSE
# driver; UDisks2 finds a filesystem's driver as mount.<type>, so name the FUSE one that way there.
if ((want_test)) && ! grep -qw exfat /proc/filesystems && [[ ! -e /usr/sbin/mount.exfat ]]; then
  $SUDO ln -s mount.exfat-fuse /usr/sbin/mount.exfat
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PY --version)" >&2
  $PY -m venv .venv
fi
extras="."
((want_test)) && extras=".[test,bench]"
stamp=".venv/.installed-$( (cat pyproject.toml; echo "$extras") | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  echo "setup: installing Python packages ($extras)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e "$extras"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# dsp's kernels, compiled ahead of time for this CPU (the recorder then needs no JIT, numba or LLVM
# at run time; see dsp/_jit.py); a no-op when dsp/_kernels matches the sources
NOKBOX_DSP_JIT=1 .venv/bin/python scripts/build_kernels.py
