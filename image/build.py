"""Build the flashable Raspberry Pi 4 image from the recipe in this folder (make image).

    .venv/bin/python image/build.py --deb build/deb/nokbox_<v>_arm64.deb [--out build/image]
    .venv/bin/python image/build.py --check     # validate the recipe, print the plan; build nothing

The recipe is declarative, in the shape of rpi-image-gen: ``recipe.toml`` (variables, validated
here: a wrong key or value is named and nothing is built), ``packages.txt`` (the package list) and
``overlay/`` (files at their target paths). The files that depend on the variables (fstab, host
name, the Pi firmware's kernel command line, time servers) are rendered here into a second
overlay. Two tools then do the work, neither needing loop mounts or device-mapper:

* ``mmdebstrap`` builds the arm64 root filesystem from Debian's packages (``raspi-firmware``,
  ``linux-image-arm64``), running the target's maintainer scripts under qemu-user through
  binfmt_misc; its hooks copy the overlays in, install the nokbox package (postinst makes the
  users and the venv from the package's wheels, no network), enable the units, and strip what
  must be made per box at first boot: SSH host keys, the machine id (and the device key and TLS
  certificate, which the image never had: nokbox-firstboot.service makes them).
* ``genimage`` packs ``/boot/firmware`` into a FAT partition and the rest into ext4 (``mke2fs -d``),
  in one MBR disk image.

The data SSD is not in the image: it is mounted by its label at ``/var/lib/nokbox``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# what every image enables (besides what packages enable themselves)
UNITS = ["nokbox-firstboot.service", "nokbox-recorder.service", "nokbox-keeper.service", "nokbox-web.service",
         "nokbox-ssh-hostkeys.service", "systemd-networkd.service", "chrony.service", "avahi-daemon.service",
         "nginx.service", "ssh.service", "fake-hwclock.service", "systemd-resolved.service"]
# packages the recipe must keep: the image does not boot, or is not a nokbox, without them
REQUIRED_PACKAGES = {"raspi-firmware", "linux-image-arm64", "systemd", "systemd-sysv", "chrony", "avahi-daemon",
                     "nginx-light", "openssh-server", "fake-hwclock", "python3-venv", "systemd-resolved"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Image(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")
    device: Literal["pi4"]
    suite: Literal["bookworm", "trixie"]
    arch: Literal["arm64"]
    mirror: str = Field(pattern=r"^https?://\S+$")
    components: list[Literal["main", "contrib", "non-free", "non-free-firmware"]]
    boot_mib: int = Field(ge=128, le=1024)
    root_mib: int = Field(ge=2048, le=32768)

    @field_validator("components")
    @classmethod
    def _firmware(cls, v):
        if "main" not in v or "non-free-firmware" not in v:
            raise ValueError("needs main and non-free-firmware (raspi-firmware is in non-free-firmware)")
        return v


class System(_Strict):
    hostname: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    timezone: str = Field(pattern=r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$")
    locale: str = Field(pattern=r"^[a-z]{2}_[A-Z]{2}\.UTF-8$")
    consoles: list[str] = Field(min_length=1)

    @field_validator("consoles")
    @classmethod
    def _consoles(cls, v):
        for c in v:
            if not c.split(",")[0].startswith(("tty", "ttyS", "ttyAMA")):
                raise ValueError(f"{c!r} is not a console device (tty1, ttyS1,115200, ...)")
        return v


class Data(_Strict):
    label: str = Field(pattern=r"^[A-Z0-9_-]{1,16}$")  # ext4 labels are at most 16 bytes
    mount: str = Field(pattern=r"^/[a-z0-9/_-]+$")
    options: list[str]
    fsck: Literal[0, 1, 2]

    @field_validator("options")
    @classmethod
    def _options(cls, v):
        if "noatime" not in v:
            raise ValueError("must include noatime (every read of a recording would be a write to the SSD)")
        return v


class Network(_Strict):
    ntp: list[str] = Field(min_length=1)


class Recipe(_Strict):
    image: Image
    system: System
    data: Data
    network: Network
    packages: list[str]

    @field_validator("packages")
    @classmethod
    def _required(cls, v):
        missing = sorted(REQUIRED_PACKAGES - set(v))
        if missing:
            raise ValueError(f"packages.txt lacks {', '.join(missing)}")
        return v


class RecipeError(Exception):
    pass


def read_packages(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            if not all(c.isalnum() or c in "+-.:" for c in name):
                raise RecipeError(f"{path.name}: {name!r} is not a package name")
            out.append(name)
    return out


def load(folder: Path = HERE) -> Recipe:
    """The validated recipe; RecipeError naming the key (or file) otherwise."""
    folder = Path(folder)
    try:
        raw = tomllib.loads((folder / "recipe.toml").read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe.toml: {exc}") from None
    raw["packages"] = read_packages(folder / "packages.txt")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            key = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{key}: {msg}" if err["type"] != "extra_forbidden" else f"{key}: unknown key")
        raise RecipeError("recipe.toml: " + "; ".join(parts)) from None


# -- what depends on the variables ---------------------------------------------------------------
def rendered(r: Recipe) -> dict[str, str]:
    """The files rendered from the variables, by target path."""
    d = r.data
    return {
        "etc/hostname": f"{r.system.hostname}\n",
        "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{r.system.hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "etc/fstab": (
            "# nokbox image (image/recipe.toml): by label, so the SD card and the SSD may be any device\n"
            "LABEL=NOKBOX-ROOT\t/\text4\tdefaults,noatime,errors=remount-ro\t0\t1\n"
            "LABEL=NOKBOX-BOOT\t/boot/firmware\tvfat\tdefaults,noatime,umask=0077\t0\t2\n"
            f"# the recordings' SSD; without it the recorder does not start (RequiresMountsFor=)\n"
            f"LABEL={d.label}\t{d.mount}\text4\t{','.join(d.options)}\t0\t{d.fsck}\n"),
        # read by raspi-firmware's kernel and initramfs hooks: config.txt and cmdline.txt on the FAT
        "etc/default/raspi-firmware": (
            "# nokbox image (image/recipe.toml)\nROOTPART=LABEL=NOKBOX-ROOT\n"
            f"CONSOLES=\"{' '.join(r.system.consoles)}\"\nGPU_FREQ=360\n"),
        "etc/default/raspi-extra-cmdline": "systemd.show_status=1\n",  # (raspi-firmware adds fsck.repair=yes)
        "etc/chrony/sources.d/nokbox.sources": "".join(f"pool {s} iburst\n" for s in r.network.ntp),
        "etc/default/locale": f"LANG={r.system.locale}\n",
        "etc/locale.gen": f"{r.system.locale} UTF-8\nen_US.UTF-8 UTF-8\n",
    }


def genimage_config(r: Recipe) -> str:
    return f"""# nokbox image (image/build.py from image/recipe.toml)
image boot.vfat {{
	vfat {{
		label = "NOKBOX-BOOT"
	}}
	mountpoint = "/boot/firmware"
	size = {r.image.boot_mib}M
}}

image root.ext4 {{
	ext4 {{
		label = "NOKBOX-ROOT"
		use-mke2fs = true
		features = "^metadata_csum_seed"
	}}
	mountpoint = "/"
	size = {r.image.root_mib}M
}}

image {r.image.name}.img {{
	hdimage {{
		partition-table-type = "mbr"
	}}
	partition boot {{
		partition-type = 0xC
		bootable = true
		image = "boot.vfat"
	}}
	partition root {{
		partition-type = 0x83
		image = "root.ext4"
	}}
}}
"""


def customize_commands(r: Recipe, deb_name: str) -> list[str]:
    """Shell run by mmdebstrap's customize hooks (``$1`` is the root filesystem)."""
    q = shlex.quote
    chroot = 'chroot "$1"'
    return [
        # the package, as a box installs it (in a chroot postinst only enables its units)
        f'{chroot} dpkg -i /var/tmp/{q(deb_name)} && rm -f "$1/var/tmp/{deb_name}"',
        f'{chroot} systemctl enable {" ".join(UNITS)}',
        f'{chroot} systemctl disable systemd-timesyncd.service 2>/dev/null || true',
        f'ln -sf /usr/share/zoneinfo/{r.system.timezone} "$1/etc/localtime" && echo {q(r.system.timezone)} > "$1/etc/timezone"',
        f'{chroot} locale-gen >/dev/null',
        'ln -sf /run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"',
        # no password anywhere: root locked, no other login user
        f'{chroot} passwd -l root >/dev/null',
        # what must differ per box is made at its first boot, never carried by the image
        'rm -f "$1"/etc/ssh/ssh_host_*',
        ': > "$1/etc/machine-id" && rm -f "$1/var/lib/dbus/machine-id"',
        'rm -f "$1/etc/nokbox/device.key" && rm -rf "$1/etc/nokbox/tls"',
        # config.txt and cmdline.txt from the rendered /etc/default/raspi-firmware, with the kernel,
        # initrd and dtbs, without a second initramfs run
        f'KV=$(ls "$1"/boot/vmlinuz-* | sed "s|.*/vmlinuz-||" | sort -V | tail -1) && '
        f'{chroot} env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$KV"',
        'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1/var/log/"*.log',
    ]


def mmdebstrap_argv(r: Recipe, rootfs: Path, overlay: Path, rendered_dir: Path, deb: Path) -> list[str]:
    argv = ["mmdebstrap", f"--architectures={r.image.arch}", "--variant=apt",
            f"--components={','.join(r.image.components)}", f"--include={','.join(r.packages)}",
            # raspi-firmware's kernel hook copies the kernel, initrd and dtbs here
            '--setup-hook=mkdir -p "$1/boot/firmware"',
            # after the packages (a file in place before them would be a conffile conflict for dpkg);
            # the last hook then writes config.txt and cmdline.txt from them
            f"--customize-hook=sync-in {rendered_dir} /",
            f"--customize-hook=sync-in {overlay} /",
            f"--customize-hook=upload {deb} /var/tmp/{deb.name}"]
    argv += [f"--customize-hook={c}" for c in customize_commands(r, deb.name)]
    argv += [r.image.suite, str(rootfs), r.image.mirror]
    return argv


def check_overlay(folder: Path = HERE) -> list[str]:
    """Problems with the overlay: every file must sit at a real target path."""
    problems = []
    allowed = ("etc/", "usr/", "opt/", "var/")
    for p in sorted((folder / "overlay").rglob("*")):
        rel = p.relative_to(folder / "overlay").as_posix()
        if p.is_file() and not rel.startswith(allowed):
            problems.append(f"overlay/{rel}: not under {', '.join(allowed)}")
        if p.is_file() and p.stat().st_size == 0:
            problems.append(f"overlay/{rel}: empty")
    return problems


def build(r: Recipe, deb: Path, out: Path, work: Path | None = None, log=sys.stderr) -> Path:
    for tool in ("mmdebstrap", "genimage", "mke2fs", "mcopy"):
        if shutil.which(tool) is None:
            raise RecipeError(f"{tool} is not installed (scripts/setup.sh --image)")
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() and os.uname().machine != "aarch64":
        raise RecipeError("arm64 binaries cannot run here: enable binfmt_misc for qemu-aarch64 "
                          "(mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64)")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work or tempfile.mkdtemp(prefix="nokbox-image-", dir=out))
    rootfs, ren, gtmp = work / "rootfs", work / "rendered", work / "genimage-tmp"
    for path, text in rendered(r).items():
        (ren / path).parent.mkdir(parents=True, exist_ok=True)
        (ren / path).write_text(text)
    t0 = time.monotonic()
    subprocess.run(mmdebstrap_argv(r, rootfs, HERE / "overlay", ren, Path(deb).resolve()), check=True,
                   stdout=log, stderr=log)
    t1 = time.monotonic()
    (work / "genimage.cfg").write_text(genimage_config(r))
    shutil.rmtree(gtmp, ignore_errors=True)
    subprocess.run(["genimage", "--rootpath", str(rootfs), "--tmppath", str(gtmp), "--inputpath", str(work),
                    "--outputpath", str(out), "--config", str(work / "genimage.cfg")], check=True,
                   stdout=log, stderr=log)
    # the kernel and initrd beside the image, for a qemu-system-aarch64 boot (tests/test_image.py)
    for pattern in ("vmlinuz-*", "initrd.img-*"):
        for f in (rootfs / "boot").glob(pattern):
            shutil.copy2(f, out / f.name.split("-")[0])
    print(f"image: mmdebstrap {t1 - t0:.0f} s, genimage {time.monotonic() - t1:.0f} s", file=log)
    return out / f"{r.image.name}.img"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deb", type=Path, help="the arm64 nokbox package (scripts/build-deb-arm64.sh)")
    p.add_argument("--out", type=Path, default=ROOT / "build/image")
    p.add_argument("--check", action="store_true", help="validate the recipe and print the plan only")
    args = p.parse_args(argv)
    try:
        r = load()
        problems = check_overlay()
        if problems:
            raise RecipeError("; ".join(problems))
        if args.check:
            deb = args.deb or Path("nokbox_VERSION_arm64.deb")
            print(f"recipe OK: {r.image.name} ({r.image.device}, {r.image.suite} {r.image.arch}), "
                  f"{len(r.packages)} packages, data {r.data.label} at {r.data.mount}")
            print(shlex.join(mmdebstrap_argv(r, Path("ROOTFS"), HERE / "overlay", Path("RENDERED"), deb)))
            return 0
        if args.deb is None or not args.deb.is_file():
            raise RecipeError("--deb: the arm64 nokbox package is needed (make deb-arm64)")
        img = build(r, args.deb, args.out)
    except RecipeError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 2
    print(img)
    return 0


if __name__ == "__main__":
    sys.exit(main())
