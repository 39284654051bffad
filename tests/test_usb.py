"""USB sticks as FAT32 images written through mtools (firmware/hal/usb.py): write under a temporary
name and rename last, read back, fsck clean; full, read-only, too large, removed mid-write."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess

import pytest

from firmware.hal.usb import FAT32_MAX_FILE, FileTooLarge, StickFull, StickGone, StickReadOnly, usb_media

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
