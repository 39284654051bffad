"""USB sticks for the export (제공): list them, write one file safely, read it back, eject.

The interface is ``UsbMedia``; backends:

- ``udisks2`` (the box): UDisks2 over the D-Bus system bus (``dbus-fast``). A stick is a block
  device with a FAT32 or exFAT filesystem on a removable or USB drive (loop devices too when
  ``loop_devices`` is set: tests and the development box). Listing mounts it (as a desktop does
  on insertion) to show its free space; writing goes into the mount; eject syncs, unmounts and
  powers the drive off (a loop device is detached).
- ``image``: filesystem images in a folder presented as sticks (tests and the development box).
  FAT32 images are written through ``mtools`` (the kernel here has no vfat; mtools is what the
  FAT tools themselves use), so a package lands in a real FAT32 filesystem that ``fsck.fat`` checks.
  exFAT images are attached to a loop device and mounted with the FUSE exFAT driver
  (``mount.exfat-fuse``; root only), which ``fsck.exfat`` checks after the eject.

A write goes to ``NAME.part`` and is renamed last, so a cut never leaves a file that looks whole.
The checks that can be made before writing are: read-only stick, not enough free space, FAT32's
4 GiB - 1 file size limit. Nothing touches a device at import.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import NokboxError

CHUNK = 1 << 20
FAT32_MAX_FILE = 4 * 1024 ** 3 - 1
STICK_FILESYSTEMS = ("vfat", "exfat")  # what the recipient's Windows, macOS and phones read


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
    note: str = ""  # why the stick cannot be used (e.g. it cannot be mounted), shown beside it


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


def _gone() -> StickGone:
    return StickGone("쓰는 중에 USB 저장장치가 빠졌습니다: 다시 꽂고 다시 시도하십시오 · the stick was "
                     "removed while writing: insert it and try again")


def _missing(stick_id: str) -> StickGone:
    return StickGone(f"USB 저장장치가 빠졌습니다 · the stick {stick_id} is gone")


def _unreadable() -> StickGone:
    return StickGone("USB 저장장치에서 다시 읽을 수 없습니다 · cannot read the file back from the stick")


def _read_only() -> StickReadOnly:
    return StickReadOnly("USB 저장장치가 쓰기 금지 상태입니다 · the stick is read-only")


def _os_error(exc: OSError) -> UsbError:
    """What an OSError from a mounted stick means to the officer."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StickFull("쓰는 중에 USB 저장장치가 가득 찼습니다 · the stick filled up while writing")
    if exc.errno == errno.EROFS:
        return _read_only()
    if exc.errno == errno.EFBIG:
        return FileTooLarge("이 저장장치의 파일 크기 한도를 넘었습니다 · the file is larger than this stick's "
                            "filesystem allows")
    if exc.errno in (errno.ENODEV, errno.EIO, errno.ENOTCONN, errno.ENOENT, errno.ENXIO, errno.ESTALE):
        return _gone()
    return UsbError(f"USB 저장장치에 쓸 수 없습니다 · cannot write to the stick ({exc.strerror})")


def _checks(total: int, fs: str, free: int, read_only: bool) -> None:
    """The refusals that can be made before a byte is written."""
    if read_only:
        raise _read_only()
    if fs == "vfat" and total > FAT32_MAX_FILE:
        raise FileTooLarge(f"FAT32 저장장치에는 4 GB 이상의 파일을 쓸 수 없습니다 (패키지 {_mb(total)}): exFAT로 "
                           f"포맷한 저장장치를 쓰십시오 · FAT32 holds no file of 4 GiB or more ({_mb(total)})")
    if total > free:
        raise StickFull(f"USB 저장장치의 남은 공간이 부족합니다 (필요 {_mb(total)}, 남음 {_mb(free)}) · not enough "
                        f"free space on the stick (need {_mb(total)}, free {_mb(free)})")


def _free_in(root: Path) -> tuple[int, bool]:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize, bool(st.f_flag & os.ST_RDONLY)


def write_into(root: Path, name: str, src: BinaryIO, total: int, fs: str,
               progress: Callable[[int, int], None] | None = None, read_only: bool = False) -> str:
    """Write ``src`` as ``root/name`` on a mounted stick: checks first, then ``name.part``, fsync,
    rename, fsync of the folder. A failure removes the part file (when the stick is still there)
    and raises the UsbError that says why. ``read_only``: the device says it is write-protected
    (whatever its mount says)."""
    try:
        free, ro = _free_in(root)
    except OSError as exc:
        raise _os_error(exc) from None
    _checks(total, fs, free, ro or read_only)
    part = root / (name + ".part")
    done = 0
    try:
        with open(part, "wb") as f:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, root / name)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        try:
            part.unlink(missing_ok=True)
        except OSError:
            pass
        raise _os_error(exc) from None
    return name


def read_from(root: Path, name: str) -> Iterator[bytes]:
    try:
        with open(root / name, "rb") as f:
            yield from iter(lambda: f.read(CHUNK), b"")
    except OSError:
        raise _unreadable() from None


def _mount_of(source: str) -> Path | None:
    """Where ``source`` (a device path) is mounted, from this process's mount table."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == source:
            return Path(parts[1].replace("\\040", " "))
    return None


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True)


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
        raise _missing(stick_id)

    def _mtools(self, *args: str, path: Path, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([args[0], "-i", str(path), *args[1:]], env=_env(), capture_output=True, **kw)

    def _free(self, path: Path) -> int:
        r = self._mtools("mdir", "::", path=path, text=True)
        m = re.search(r"([\d ]+) bytes free", r.stdout)
        return int(m.group(1).replace(" ", "")) if m else 0

    # -- exFAT: a loop device and the FUSE driver; the state lives in the system (losetup, the mount
    # table), not in this object, so every page request sees the same "inserted" stick.
    @staticmethod
    def _loop_of(path: Path) -> str | None:
        r = _run("losetup", "-j", str(path.resolve()), "-O", "NAME", "-n")
        devs = r.stdout.split()
        return devs[0] if r.returncode == 0 and devs else None

    @staticmethod
    def _mount_dir(path: Path) -> Path:
        tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "nokbox-usb" / f"{path.stem}-{tag}"

    def _exfat_root(self, path: Path) -> Path:
        """Mount an exFAT image (attaching a loop device first) and return the mount point."""
        loop = self._loop_of(path)
        if loop is None:
            args = ["losetup", "-f", "--show"] + ([] if _writable(path) else ["-r"]) + [str(path.resolve())]
            r = _run(*args)
            if r.returncode != 0:
                raise UsbError(f"exFAT 이미지를 연결할 수 없습니다 · cannot attach the exFAT image ({r.stderr.strip()[:120]})")
            loop = r.stdout.strip()
        root = _mount_of(loop)
        if root is not None:
            try:
                os.statvfs(root)
                return root
            except OSError:  # its FUSE driver died (the stick was pulled): clear the dead mount
                _run("umount", "-l", str(root))
        root = self._mount_dir(path)
        root.mkdir(parents=True, exist_ok=True)
        opts = "ro" if not _writable(path) else "rw"
        r = _run("mount.exfat-fuse", "-o", opts, loop, str(root))
        if r.returncode != 0:
            _run("losetup", "-d", loop)
            raise UsbError(f"exFAT 저장장치를 열 수 없습니다 · cannot mount the exFAT stick ({r.stderr.strip()[:120]})")
        return root

    def _exfat_eject(self, path: Path) -> None:
        loop = self._loop_of(path)
        if loop is None:
            return
        root = _mount_of(loop)
        if root is not None:
            os.sync()
            r = _run("umount", str(root))
            if r.returncode != 0:
                raise UsbError(f"USB 저장장치를 꺼낼 수 없습니다 (사용 중) · cannot unmount the stick ({r.stderr.strip()[:120]})")
            try:
                root.rmdir()
            except OSError:
                pass
        _run("losetup", "-d", loop)
        # the FUSE driver closes the device a moment after umount returns; until it has, the kernel
        # only marks the loop to clear: wait, so the eject returns when the stick is really free
        deadline = time.monotonic() + 10
        while self._loop_of(path) is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def sticks(self) -> list[Stick]:
        out = []
        for p in self._paths():
            fs = detect_fs(p)
            if fs == "vfat":
                out.append(Stick(p.name, p.stem, p.stat().st_size, self._free(p), fs, not _writable(p), "image"))
            elif fs == "exfat":
                try:
                    free, ro = _free_in(self._exfat_root(p))
                    out.append(Stick(p.name, p.stem, p.stat().st_size, free, fs, ro or not _writable(p), "image"))
                except (UsbError, OSError) as exc:
                    out.append(Stick(p.name, p.stem, p.stat().st_size, 0, fs, True, "image", note=str(exc)))
        return out

    def write(self, stick_id: str, name: str, src: BinaryIO, total: int,
              progress: Callable[[int, int], None] | None = None) -> str:
        path = self._path(stick_id)
        if detect_fs(path) == "exfat":
            return write_into(self._exfat_root(path), name, src, total, "exfat", progress)
        _checks(total, "vfat", self._free(path), not _writable(path))
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
                raise _gone()
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
        if detect_fs(path) == "exfat":
            yield from read_from(self._exfat_root(path), name)
            return
        proc = subprocess.Popen(["mcopy", "-n", "-i", str(path), f"::/{name}", "-"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=_env())
        try:
            yield from iter(lambda: proc.stdout.read(CHUNK), b"")
        finally:
            proc.stdout.close()
            if proc.wait() != 0:
                raise _unreadable()

    def delete(self, stick_id: str, name: str) -> None:
        path = self._path(stick_id)
        if detect_fs(path) == "exfat":
            (self._exfat_root(path) / name).unlink(missing_ok=True)
            return
        self._mtools("mdel", f"::/{name}", path=path)

    def eject(self, stick_id: str) -> None:
        path = self._path(stick_id)
        if detect_fs(path) == "exfat":
            self._exfat_eject(path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())


UD = "org.freedesktop.UDisks2"
UD_PATH = "/org/freedesktop/UDisks2"


def _bytes_str(v) -> str:
    return bytes(v).rstrip(b"\0").decode("utf-8", "replace") if v else ""


class UDisks2Media:
    """USB sticks through UDisks2 on the D-Bus system bus (``bus_address`` overrides the bus, for
    tests that run their own ``udisksd``). Every call connects, asks and disconnects: the page's
    worker threads share nothing, and a restarted udisksd is simply met on the next call.

    The page process needs UDisks2's polkit actions ``filesystem-mount``, ``power-off-drive`` and
    ``loop-delete`` without interaction (the appliance's polkit rule grants them to its user)."""

    def __init__(self, bus_address: str | None = None, loop_devices: bool = False, timeout: float = 30.0) -> None:
        self.bus_address = bus_address or None
        self.loop_devices = loop_devices
        self.timeout = timeout

    # -- D-Bus ----------------------------------------------------------------------------
    def _calls(self, calls: list[tuple[str, str, str, str, list]]) -> list:
        """Run (path, interface, member, signature, body) calls in order on one connection."""
        try:
            return asyncio.run(self._acalls(calls))
        except UsbError:
            raise
        except (OSError, EOFError, asyncio.TimeoutError) as exc:
            raise UsbError("USB 관리 서비스(UDisks2)에 연결할 수 없습니다 · cannot reach UDisks2 on the system bus "
                           f"({type(exc).__name__})") from None

    async def _acalls(self, calls) -> list:
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        bus = await asyncio.wait_for(MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM).connect(),
                                     self.timeout)
        out = []
        try:
            for path, iface, member, sig, body in calls:
                reply = await asyncio.wait_for(bus.call(Message(destination=UD, path=path, interface=iface,
                                                                member=member, signature=sig, body=body)),
                                               self.timeout)
                if reply.message_type == MessageType.ERROR:
                    detail = reply.body[0] if reply.body else ""
                    raise _UDisksError(reply.error_name or "", str(detail))
                out.append(reply.body)
        finally:
            bus.disconnect()
        return out

    def _objects(self) -> dict:
        (body,) = self._calls([(UD_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", "", [])])
        return {path: {iface: {k: v.value for k, v in props.items()} for iface, props in ifaces.items()}
                for path, ifaces in body[0].items()}

    @staticmethod
    def _no_ui():
        from dbus_fast import Variant

        return {"auth.no_user_interaction": Variant("b", True)}

    # -- which block devices are sticks ----------------------------------------------------
    def _candidates(self, objs: dict) -> dict[str, dict]:
        out = {}
        for path, ifaces in objs.items():
            block = ifaces.get(f"{UD}.Block")
            fsys = ifaces.get(f"{UD}.Filesystem")
            if block is None or fsys is None or block.get("HintIgnore"):
                continue
            fs = block.get("IdType", "")
            drive = objs.get(block.get("Drive", "/"), {}).get(f"{UD}.Drive")
            loop = ifaces.get(f"{UD}.Loop")
            if drive is not None:
                if not (drive.get("Removable") or drive.get("ConnectionBus") == "usb"):
                    continue
                model = " ".join(x for x in (drive.get("Vendor", ""), drive.get("Model", "")) if x).strip()
            elif loop is not None and self.loop_devices:
                part_of = objs.get(ifaces.get(f"{UD}.Partition", {}).get("Table", "/"), {}).get(f"{UD}.Loop")
                backing = _bytes_str((loop or part_of or {}).get("BackingFile"))
                model = f"loop: {Path(backing).name}" if backing else "loop"
            else:
                continue
            out[path.rsplit("/", 1)[-1]] = {"path": path, "block": block, "fs": fsys, "drive": drive,
                                            "drive_path": block.get("Drive", "/"), "loop": loop, "fstype": fs,
                                            "model": model}
        return out

    def _find(self, stick_id: str) -> dict:
        c = self._candidates(self._objects()).get(stick_id)
        if c is None:
            raise _missing(stick_id)
        return c

    def _mount(self, c: dict) -> Path:
        points = c["fs"].get("MountPoints") or []
        if points:
            return Path(_bytes_str(points[0]))
        try:
            ((where,),) = self._calls([(c["path"], f"{UD}.Filesystem", "Mount", "a{sv}", [self._no_ui()])])
        except _UDisksError as exc:
            raise UsbError(f"USB 저장장치를 열(마운트할) 수 없습니다 · cannot mount the stick ({exc.detail[:160]})") from None
        return Path(where)

    # -- the UsbMedia interface ------------------------------------------------------------
    def sticks(self) -> list[Stick]:
        out = []
        for sid, c in sorted(self._candidates(self._objects()).items()):
            block, fstype = c["block"], c["fstype"]
            size = int(block.get("Size", 0))
            label = block.get("IdLabel", "") or sid
            if fstype not in STICK_FILESYSTEMS:
                out.append(Stick(sid, label, size, 0, fstype or "?", True, c["model"],
                                 note="FAT32 또는 exFAT로 포맷된 저장장치만 쓸 수 있습니다 · only FAT32 or exFAT sticks"))
                continue
            try:
                free, ro = _free_in(self._mount(c))
                out.append(Stick(sid, label, size, free, fstype, ro or bool(block.get("ReadOnly")), c["model"]))
            except (UsbError, OSError) as exc:
                out.append(Stick(sid, label, size, 0, fstype, True, c["model"], note=str(exc)))
        return out

    def write(self, stick_id: str, name: str, src: BinaryIO, total: int,
              progress: Callable[[int, int], None] | None = None) -> str:
        c = self._find(stick_id)
        return write_into(self._mount(c), name, src, total, c["fstype"], progress,
                          read_only=bool(c["block"].get("ReadOnly")))

    def read_back(self, stick_id: str, name: str) -> Iterator[bytes]:
        yield from read_from(self._mount(self._find(stick_id)), name)

    def delete(self, stick_id: str, name: str) -> None:
        try:
            (self._mount(self._find(stick_id)) / name).unlink(missing_ok=True)
        except OSError:
            pass

    def eject(self, stick_id: str) -> None:
        """Sync, unmount, then power the drive off (a loop device: detach it), so the officer
        can pull the stick."""
        c = self._find(stick_id)
        os.sync()
        calls = []
        if c["fs"].get("MountPoints"):
            calls.append((c["path"], f"{UD}.Filesystem", "Unmount", "a{sv}", [self._no_ui()]))
        if c["drive"] is not None and c["drive"].get("CanPowerOff"):
            calls.append((c["drive_path"], f"{UD}.Drive", "PowerOff", "a{sv}", [self._no_ui()]))
        elif c["drive"] is not None and c["drive"].get("Ejectable"):
            calls.append((c["drive_path"], f"{UD}.Drive", "Eject", "a{sv}", [self._no_ui()]))
        elif c["loop"] is not None:
            calls.append((c["path"], f"{UD}.Loop", "Delete", "a{sv}", [self._no_ui()]))
        try:
            self._calls(calls)
        except _UDisksError as exc:
            raise UsbError(f"USB 저장장치를 꺼낼 수 없습니다 · cannot eject the stick ({exc.detail[:160]})") from None
        # UDisks2 drops the stick's object when udev reports the device gone, a moment after the
        # call returns: wait for it, so a list made right after the eject no longer offers the stick
        deadline = time.monotonic() + self.timeout
        while stick_id in self._candidates(self._objects()) and time.monotonic() < deadline:
            time.sleep(0.1)


class _UDisksError(UsbError):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name, self.detail = name, detail


def usb_media(backend: str, *, directory: Path | None = None, images: list[Path] | None = None,
              bus_address: str | None = None, loop_devices: bool = False):
    if backend == "image":
        return ImageMedia(directory, images)
    if backend == "udisks2":
        return UDisks2Media(bus_address, loop_devices)
    raise UsbError(f"알 수 없는 USB 방식 · unknown USB backend {backend!r}")
