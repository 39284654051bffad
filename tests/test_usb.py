"""USB sticks (firmware/hal/usb.py): FAT32 images written through mtools, exFAT images through a
loop device and the FUSE exFAT driver, and the UDisks2 backend against a real udisksd on a private
system bus. Write under a temporary name and rename last, read back, fsck clean; full, read-only,
too large, removed mid-write, retry."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess

import pytest

from firmware.hal.usb import (FAT32_MAX_FILE, FileTooLarge, StickFull, StickGone, StickReadOnly, UsbError,
                               usb_media)

from .udisks import exfat, mounted_exfat, need_root_tools, udisks  # noqa: F401 - udisks is a fixture

NAME = "nokbox-2026-0001 한글.zip"


def fat32(path, kb: int = 40 * 1024):
    if shutil.which("mkfs.vfat") is None or shutil.which("mcopy") is None:
        pytest.fail("mtools and dosfstools are required (scripts/setup.sh installs them)")
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", "NOKBOX", "-C", str(path), str(kb)], check=True,
                   capture_output=True)
    return path


def copy_out(img, name: str, dest):
    """A file of a FAT image copied out with stock mtools (not through the code under test)."""
    subprocess.run(["mcopy", "-n", "-i", str(img), f"::/{name}", str(dest)], check=True,
                   env=dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C.UTF-8"))
    return dest


def _names(img):
    r = subprocess.run(["mdir", "-b", "-i", str(img), "::"], capture_output=True, text=True,
                       env=dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C.UTF-8"))
    return {line.rsplit("/", 1)[-1] for line in r.stdout.splitlines() if line.strip()}


def test_write_read_back_and_fsck(tmp_path):
    img = fat32(tmp_path / "stick.img")
    media = usb_media("image", directory=tmp_path)
    (s,) = media.sticks()
    assert s.fs == "vfat" and not s.read_only and 30e6 < s.free <= s.size
    data = os.urandom(5 * 1024 * 1024 + 123)
    seen = []
    media.write(s.id, NAME, io.BytesIO(data), len(data), lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(data), len(data)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert hashlib.sha256(b"".join(media.read_back(s.id, NAME))).digest() == hashlib.sha256(data).digest()
    assert NAME in _names(img) and not any(n.endswith(".part") for n in _names(img))
    r = subprocess.run(["fsck.fat", "-n", str(img)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    media.eject(s.id)


def test_full_read_only_and_too_large_are_refused_before_writing(tmp_path):
    img = fat32(tmp_path / "small.img", 34 * 1024)
    media = usb_media("image", directory=tmp_path)
    (s,) = media.sticks()
    with pytest.raises(StickFull) as e:
        media.write(s.id, NAME, io.BytesIO(b""), s.free + 1)
    assert "남은 공간" in str(e.value)
    with pytest.raises(FileTooLarge) as e:
        media.write(s.id, NAME, io.BytesIO(b""), FAT32_MAX_FILE + 1)
    assert "4 GB" in str(e.value)
    img.chmod(0o444)
    try:
        assert media.sticks()[0].read_only
        with pytest.raises(StickReadOnly):
            media.write(s.id, NAME, io.BytesIO(b"x"), 1)
    finally:
        img.chmod(0o644)
    assert _names(img) == set()


def test_a_stream_longer_than_the_space_leaves_nothing(tmp_path):
    img = fat32(tmp_path / "small.img", 34 * 1024)
    media = usb_media("image", directory=tmp_path)
    (s,) = media.sticks()
    data = os.urandom(s.free + 4 * 1024 * 1024)
    with pytest.raises(StickFull):
        media.write(s.id, NAME, io.BytesIO(data), 1024)  # the caller said 1 KB: the stick fills up mid-write
    assert _names(img) == set()


def test_removed_mid_write_then_retry(tmp_path):
    img = fat32(tmp_path / "stick.img")
    media = usb_media("image", directory=tmp_path)
    (s,) = media.sticks()
    data = os.urandom(8 * 1024 * 1024)
    away = tmp_path / "pocket.img"

    def yank(done, total):
        if done >= 2 * 1024 * 1024 and img.exists():
            os.rename(img, away)  # the officer pulls the stick

    with pytest.raises(StickGone) as e:
        media.write(s.id, NAME, io.BytesIO(data), len(data), yank)
    assert "빠졌습니다" in str(e.value)
    os.rename(away, img)  # inserted again
    assert NAME not in _names(img)
    media.write(s.id, NAME, io.BytesIO(data), len(data))
    assert b"".join(media.read_back(s.id, NAME)) == data


# -- exFAT images (loop device + the FUSE exFAT driver) ------------------------------------------
def _loops_of(img) -> list[str]:
    return subprocess.run(["losetup", "-j", str(img), "-n", "-O", "NAME"], capture_output=True,
                          text=True).stdout.split()


def test_exfat_image_write_read_back_eject_and_fsck(tmp_path):
    need_root_tools()
    img = exfat(tmp_path / "SAMSUNG.img", 64)
    media = usb_media("image", directory=tmp_path)
    try:
        (s,) = media.sticks()
        assert s.fs == "exfat" and not s.read_only and 50e6 < s.free <= s.size and not s.note
        data = os.urandom(6 * 1024 * 1024 + 7)
        media.write(s.id, NAME, io.BytesIO(data), len(data))
        assert hashlib.sha256(b"".join(media.read_back(s.id, NAME))).digest() == hashlib.sha256(data).digest()
        # another page request (a new backend object) sees the same inserted stick
        assert usb_media("image", directory=tmp_path).sticks()[0].free < s.free
        with pytest.raises(StickFull):
            media.write(s.id, "big.zip", io.BytesIO(b""), s.size)
    finally:
        media.eject("SAMSUNG.img")
    assert _loops_of(img) == []
    r = subprocess.run(["fsck.exfat", "-n", str(img)], capture_output=True, text=True)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr
    with mounted_exfat(img) as mnt:
        assert sorted(os.listdir(mnt)) == [NAME]  # the Korean name as written, no .part left
        assert (mnt / NAME).read_bytes() == data


def test_exfat_image_read_only_and_pulled_mid_write(tmp_path):
    need_root_tools()
    img = exfat(tmp_path / "LOCKED.img", 32)
    media = usb_media("image", directory=tmp_path)
    img.chmod(0o444)
    try:
        (s,) = media.sticks()
        assert s.read_only
        with pytest.raises(StickReadOnly):
            media.write(s.id, NAME, io.BytesIO(b"x"), 1)
    finally:
        media.eject(s.id)
        img.chmod(0o644)
    data = os.urandom(12 * 1024 * 1024)

    def pull(done, total):  # the stick is pulled: its driver goes away under the writer
        if done >= 3 * 1024 * 1024:
            subprocess.run(["pkill", "-KILL", "-f", f"mount.exfat-fuse.*{media._mount_dir(img)}"], check=False)

    try:
        with pytest.raises(StickGone):
            media.write(s.id, NAME, io.BytesIO(data), len(data), pull)
        media.write(s.id, NAME, io.BytesIO(data), len(data))  # inserted again: the retry works
        assert b"".join(media.read_back(s.id, NAME)) == data
    finally:
        media.eject(s.id)
    assert subprocess.run(["fsck.exfat", "-n", str(img)], capture_output=True).returncode == 0


# -- UDisks2 over D-Bus: a real udisksd on a private system bus ---------------------------------
def test_udisks2_lists_mounts_writes_reads_back_and_ejects(udisks, tmp_path):
    img = exfat(tmp_path / "stick.img", 64, label="KINGSTON")
    sid = udisks.insert(img)
    media = usb_media("udisks2", bus_address=udisks.address, loop_devices=True)
    assert sid not in {s.id for s in usb_media("udisks2", bus_address=udisks.address).sticks()}  # not by default
    (s,) = [s for s in media.sticks() if s.id == sid]
    assert (s.id, s.label, s.fs, s.read_only, s.note) == (sid, "KINGSTON", "exfat", False, "")
    assert s.size == 64 * 1024 * 1024 and 50e6 < s.free < s.size and s.model == "loop: stick.img"
    data = os.urandom(5 * 1024 * 1024 + 1)
    seen = []
    media.write(s.id, NAME, io.BytesIO(data), len(data), lambda d, t: seen.append(d))
    assert seen[-1] == len(data)
    assert hashlib.sha256(b"".join(media.read_back(s.id, NAME))).digest() == hashlib.sha256(data).digest()
    with pytest.raises(StickFull):
        media.write(s.id, "big.zip", io.BytesIO(b""), s.size)
    media.eject(s.id)  # unmounted and detached through UDisks2
    assert sid not in {s.id for s in media.sticks()} and _loops_of(img) == []
    with pytest.raises(StickGone):
        media.write(s.id, NAME, io.BytesIO(b"x"), 1)
    assert subprocess.run(["fsck.exfat", "-n", str(img)], capture_output=True).returncode == 0
    with mounted_exfat(img) as mnt:
        assert sorted(os.listdir(mnt)) == [NAME] and (mnt / NAME).read_bytes() == data


def test_udisks2_read_only_stick_and_a_stick_it_cannot_use(udisks, tmp_path):
    ro = udisks.insert(exfat(tmp_path / "ro.img", 32, label="LOCKED"), read_only=True)
    other = tmp_path / "ext.img"
    with open(other, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-L", "LINUX", str(other)], check=True)
    udisks.insert(other)
    media = usb_media("udisks2", bus_address=udisks.address, loop_devices=True)
    by_label = {s.label: s for s in media.sticks()}
    assert by_label["LOCKED"].read_only and by_label["LOCKED"].id == ro
    with pytest.raises(StickReadOnly) as e:
        media.write(ro, NAME, io.BytesIO(b"x"), 1)
    assert "쓰기 금지" in str(e.value)
    assert by_label["LINUX"].note and "exFAT" in by_label["LINUX"].note  # shown, not offered
    with pytest.raises(UsbError):
        usb_media("udisks2", bus_address=f"unix:path={tmp_path}/nobus").sticks()
