"""USB sticks for the export (제공): list them, write one file safely, read it back, eject.

The interface is ``UsbMedia``; backends:

- ``image``: filesystem images in a folder presented as sticks (tests and the development box).
  FAT32 images are written through ``mtools`` (the kernel here has no vfat; mtools is what the
  FAT tools themselves use), so a package lands in a real FAT32 filesystem that ``fsck.fat`` checks.
- ``udisks2`` (the box: UDisks2 over D-Bus) is not built yet: asking for it is a clear error.

A write goes to ``NAME.part`` and is renamed last, so a cut never leaves a file that looks whole.
The checks that can be made before writing are: read-only stick, not enough free space, FAT32's
4 GiB - 1 file size limit. Nothing touches a device at import.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import NokboxError

CHUNK = 1 << 20
FAT32_MAX_FILE = 4 * 1024 ** 3 - 1


class UsbError(NokboxError):
    """A stick cannot take the file; the message says why (Korean · English)."""


class StickGone(UsbError):
    pass


class StickFull(UsbError):
    pass


class StickReadOnly(UsbError):
    pass


class FileTooLarge(UsbError):
    pass


@dataclass(frozen=True)
class Stick:
    id: str
    label: str
    size: int
    free: int
    fs: str
    read_only: bool
    model: str


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _env() -> dict:
    return dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C.UTF-8", LANG="C.UTF-8")


def _writable(path: Path) -> bool:
    """An image is a write-protected stick when no write bit is set (also for root, whom modes do not stop)."""
    return bool(path.stat().st_mode & 0o222)


def detect_fs(path: Path) -> str | None:
    """'vfat' (FAT32) or 'exfat' from the boot sector, else None."""
    try:
        with open(path, "rb") as f:
            boot = f.read(512)
    except OSError:
        return None
    if boot[3:11] == b"EXFAT   ":
        return "exfat"
    if boot[82:90] == b"FAT32   " or boot[54:62] in (b"FAT16   ", b"FAT12   "):
        return "vfat"
    return None


class ImageMedia:
    """Every FAT image (``*.img``) in ``directory`` (or the ``images`` named) is a stick. A stick is
    read-only (its write-protect switch) when its image file has no write bit."""

    def __init__(self, directory: Path | None = None, images: list[Path] | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self.images = [Path(p) for p in images or []]

    def _paths(self) -> list[Path]:
        if self.images:
            return [p for p in self.images if p.exists()]
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.img"))

    def _path(self, stick_id: str) -> Path:
        for p in self._paths():
            if p.name == stick_id:
                return p
        raise StickGone(f"USB 저장장치가 빠졌습니다 · the stick {stick_id} is gone")

    def _mtools(self, *args: str, path: Path, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([args[0], "-i", str(path), *args[1:]], env=_env(), capture_output=True, **kw)

    def _free(self, path: Path) -> int:
        r = self._mtools("mdir", "::", path=path, text=True)
        m = re.search(r"([\d ]+) bytes free", r.stdout)
        return int(m.group(1).replace(" ", "")) if m else 0

    def sticks(self) -> list[Stick]:
        out = []
        for p in self._paths():
            fs = detect_fs(p)
            if fs != "vfat":
                continue  # exFAT images are not presented yet (see the module doc)
            out.append(Stick(p.name, p.stem, p.stat().st_size, self._free(p), fs, not _writable(p),
                             "image"))
        return out

    def write(self, stick_id: str, name: str, src: BinaryIO, total: int,
              progress: Callable[[int, int], None] | None = None) -> str:
        path = self._path(stick_id)
        if not _writable(path):
            raise StickReadOnly("USB 저장장치가 쓰기 금지 상태입니다 · the stick is read-only")
        if total > FAT32_MAX_FILE:
            raise FileTooLarge(f"FAT32 저장장치에는 4 GB 이상의 파일을 쓸 수 없습니다 (패키지 {_mb(total)}): exFAT로 "
                               f"포맷한 저장장치를 쓰십시오 · FAT32 holds no file of 4 GiB or more ({_mb(total)})")
        free = self._free(path)
        if total > free:
            raise StickFull(f"USB 저장장치의 남은 공간이 부족합니다 (필요 {_mb(total)}, 남음 {_mb(free)}) · not enough "
                            f"free space on the stick (need {_mb(total)}, free {_mb(free)})")
        part = f"::/{name}.part"
        proc = subprocess.Popen(["mcopy", "-o", "-i", str(path), "-", part], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
        done = 0
        try:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                proc.stdin.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            proc.stdin.close()
            err = proc.stderr.read().decode("utf-8", "replace")
            rc = proc.wait()
        except (BrokenPipeError, OSError):  # mcopy stopped reading: it says why on stderr
            try:
                proc.stdin.close()
            except OSError:
                pass
            err = proc.stderr.read().decode("utf-8", "replace") or "write interrupted"
            rc = proc.wait() or 1
        finally:
            for pipe in (proc.stdin, proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
        if rc != 0 or not path.exists():
            self._cleanup(path, part)
            if not path.exists():
                raise StickGone("쓰는 중에 USB 저장장치가 빠졌습니다: 다시 꽂고 다시 시도하십시오 · the stick was "
                                "removed while writing: insert it and try again")
            if "full" in err.lower() or "no space" in err.lower() or "no free cluster" in err.lower():
                raise StickFull("쓰는 중에 USB 저장장치가 가득 찼습니다 · the stick filled up while writing")
            raise UsbError(f"USB 저장장치에 쓸 수 없습니다 · cannot write to the stick ({err.strip()[:120]})")
        self._mtools("mdel", f"::/{name}", path=path)
        r = self._mtools("mren", part, f"::/{name}", path=path, text=True)
        if r.returncode != 0:
            self._cleanup(path, part)
            raise UsbError(f"파일 이름을 바꿀 수 없습니다 · cannot rename on the stick ({r.stderr.strip()[:120]})")
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        return name

    def _cleanup(self, path: Path, part: str) -> None:
        if path.exists():
            self._mtools("mdel", part, path=path)

    def read_back(self, stick_id: str, name: str) -> Iterator[bytes]:
        path = self._path(stick_id)
        proc = subprocess.Popen(["mcopy", "-n", "-i", str(path), f"::/{name}", "-"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=_env())
        try:
            yield from iter(lambda: proc.stdout.read(CHUNK), b"")
        finally:
            proc.stdout.close()
            if proc.wait() != 0:
                raise StickGone("USB 저장장치에서 다시 읽을 수 없습니다 · cannot read the file back from the stick")

    def delete(self, stick_id: str, name: str) -> None:
        self._mtools("mdel", f"::/{name}", path=self._path(stick_id))

    def eject(self, stick_id: str) -> None:
        path = self._path(stick_id)
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def usb_media(backend: str, *, directory: Path | None = None, images: list[Path] | None = None):
    if backend == "image":
        return ImageMedia(directory, images)
    raise UsbError("UDisks2 USB 지원은 아직 없습니다: release.usb_backend = \"image\" 또는 --to 폴더를 쓰십시오 · "
                   "the UDisks2 backend is not built yet")
