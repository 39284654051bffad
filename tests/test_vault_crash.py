"""Crash safety, tested the way SQLite tests atomic commit.

Every file operation of the call writer is recorded; the disk is then rebuilt as it
would be after a power cut at each operation boundary (all issued writes on disk), and
again with writes that were not yet fsynced lost or torn at random. Recovery runs on
each such disk and every call is checked: finished calls are complete and readable,
interrupted calls keep every sample older than one second before the cut.
A second test kills a real recorder process with SIGKILL mid-call.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from firmware.vault.age import X25519Identity, decrypt_bytes, generate_identity, parse_recipient, recipient_of
from firmware.vault.callfile import CallFile, Disk, recover_call
from firmware.index import CallIndex

from .conftest import ROOT, decrypt_audio, place_calls, run_cli

RATE = 8000


# -- a disk that remembers what was written and what was made durable ------------------------
@dataclass
class Op:
    kind: str
    path: str
    arg: object = None
    data: bytes = b""
    fed: int = 0  # samples the test had handed to the writer when this op was issued
    call: int = -1


@dataclass
class RecordingDisk(Disk):
    """The real file API, recorded op by op (and applied to a real directory as well)."""

    ops: list[Op] = field(default_factory=list)
    fds: dict[int, str] = field(default_factory=dict)
    fed: int = 0
    call: int = -1

    def _op(self, kind, path, arg=None, data=b""):
        self.ops.append(Op(kind, str(path), arg, bytes(data), self.fed, self.call))

    def create(self, path):
        fd = super().create(path)
        self.fds[fd] = str(path)
        self._op("create", path)
        return fd

    def pwrite(self, fd, data, offset):
        super().pwrite(fd, data, offset)
        self._op("pwrite", self.fds[fd], offset, data)

    def truncate(self, fd, size):
        super().truncate(fd, size)
        self._op("truncate", self.fds[fd], size)

    def sync(self, fd):
        super().sync(fd)
        self._op("sync", self.fds[fd])

    def close(self, fd):
        super().close(fd)
        self._op("close", self.fds.pop(fd))

    def rename(self, src, dst):
        super().rename(src, dst)
        self._op("rename", src, str(dst))

    def unlink(self, path):
        super().unlink(path)
        self._op("unlink", path)

    def sync_dir(self, path):
        super().sync_dir(path)
        self._op("sync_dir", path)


class Inode:
    def __init__(self):
        self.durable = bytearray()
        self.pending: list[tuple[str, int, bytes]] = []  # writes not yet fsynced

    def apply(self, buf: bytearray, w) -> None:
        kind, off, data = w
        if kind == "pwrite":
            if off > len(buf):
                buf.extend(bytes(off - len(buf)))
            buf[off:off + len(data)] = data
        else:
            del buf[off:]
            if off > len(buf):
                buf.extend(bytes(off - len(buf)))


def rebuild(ops: list[Op], upto: int, rng: random.Random | None) -> dict[str, bytes]:
    """The files on disk after a power cut just after ops[:upto].

    With ``rng``, each file keeps only a random prefix of its unsynced writes (the last one
    possibly torn), and directory changes after the directory's last fsync may be lost.
    """
    names: dict[str, Inode] = {}
    durable_names: dict[str, Inode] = {}
    dir_pending: list[tuple[str, str, str | None]] = []
    for op in ops[:upto]:
        if op.kind == "create":
            names[op.path] = Inode()
            dir_pending.append(("link", op.path, None))
        elif op.kind in ("pwrite", "truncate"):
            names[op.path].pending.append((op.kind, op.arg if op.kind == "pwrite" else op.arg, op.data))
        elif op.kind == "sync":
            ino = names[op.path]
            for w in ino.pending:
                ino.apply(ino.durable, w)
            ino.pending.clear()
        elif op.kind == "rename":
            names[op.arg] = names.pop(op.path)
            dir_pending.append(("rename", op.path, op.arg))
        elif op.kind == "unlink":
            names.pop(op.path)
            dir_pending.append(("unlink", op.path, None))
        elif op.kind == "sync_dir":
            durable_names = dict(names)
            dir_pending.clear()
    if rng is None:
        view = names
        keep_all = True
    else:
        # directory operations after the last directory fsync survive as a random prefix
        view = dict(durable_names)
        cut = rng.randint(0, len(dir_pending))
        for kind, a, b in dir_pending[:cut]:
            if kind == "link":
                view[a] = names.get(a) or _find(names, a) or Inode()
            elif kind == "rename" and a in view:
                view[b] = view.pop(a)
            elif kind == "unlink":
                view.pop(a, None)
        keep_all = False
    out = {}
    for name, ino in view.items():
        buf = bytearray(ino.durable)
        pend = ino.pending
        if keep_all:
            for w in pend:
                ino.apply(buf, w)
        else:
            n = rng.randint(0, len(pend))
            for w in pend[:n]:
                ino.apply(buf, w)
            if n < len(pend) and pend[n][0] == "pwrite" and rng.random() < 0.5:
                kind, off, data = pend[n]
                ino.apply(buf, (kind, off, data[:rng.randint(0, len(data))]))  # torn write
        out[name] = bytes(buf)
    return out


def _find(names, path):
    return names.get(path)


# -- the calls the crash test writes ---------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    rec_id, rec = generate_identity()
    dev_id, dev = generate_identity()
    (d / "records.txt").write_text(rec_id + "\n")
    return {"records": rec_id, "device": dev_id, "rec_pub": parse_recipient(rec),
            "dev_pub": parse_recipient(dev), "dir": d}


@pytest.fixture(scope="module", params=["wav", "flac"])
def trace(request, tmp_path_factory, keys):
    """Write three calls (short, one chunk and a bit, several chunks) and record every op.

    Both lossless codecs: recovered audio must be the very samples that were fed.
    """
    codec = request.param
    d = tmp_path_factory.mktemp("trace")
    rng = np.random.default_rng(3)
    calls = [rng.integers(-8000, 8000, size=n, dtype=np.int16) for n in (RATE * 2, RATE * 6, RATE * 21)]
    disk = RecordingDisk()
    paths = []
    for i, pcm in enumerate(calls):
        disk.call = i
        disk.fed = 0
        final = d / f"{i:08d}.{codec}.age"
        paths.append(str(final))
        cf = CallFile(final, [keys["rec_pub"]], RATE, keys["dev_pub"], codec=codec, checkpoint_s=0.5, disk=disk)
        for s in range(0, len(pcm), 1600):  # the pipeline hands over 0.1-0.2 s at a time
            disk.fed = s
            cf.write(pcm[s:s + 1600])
        disk.fed = len(pcm)
        cf.close()
    return disk.ops, calls, paths


def check_cut(tmp: Path, keys, ops, calls, paths, upto, rng):
    files = rebuild(ops, upto, rng)
    for p in list(tmp.iterdir()):
        p.unlink()
    for name, data in files.items():
        (tmp / Path(name).name).write_bytes(data)
    last = ops[upto - 1] if upto else Op("none", "")
    rec_ident = [X25519Identity(keys["records"])]
    for i, pcm in enumerate(calls):
        final = tmp / Path(paths[i]).name
        closed = any(op.kind == "sync_dir" and op.call == i and k < upto and ops[k - 1].kind == "rename"
                     for k, op in enumerate(ops))
        started = any(op.call == i for op in ops[:upto])
        recover_call(final, [keys["rec_pub"]], keys["device"])
        if closed:
            assert final.exists(), f"finished call {i} lost at cut {upto}"
            y, _ = sf.read(io.BytesIO(decrypt_bytes(final.read_bytes(), rec_ident)), dtype="int16")
            assert np.array_equal(y, pcm), f"finished call {i} damaged at cut {upto}"
        elif started:
            fed = last.fed if last.call == i else len(pcm)
            if not final.exists():
                assert fed <= RATE, f"call {i}: nothing recovered though {fed} samples were fed (cut {upto})"
                continue
            y, _ = sf.read(io.BytesIO(decrypt_bytes(final.read_bytes(), rec_ident)), dtype="int16")
            assert np.array_equal(y, pcm[:len(y)]), f"call {i}: recovered audio is not the call's (cut {upto})"
            assert len(y) >= fed - RATE, f"call {i}: lost {(fed - len(y)) / RATE:.2f} s at cut {upto}"
        for leftover in (".part", ".journal", ".recovering"):
            assert not final.with_name(final.name + leftover).exists()


def test_power_cut_at_every_operation(tmp_path, keys, trace):
    ops, calls, paths = trace
    assert len(ops) > 150
    for upto in range(len(ops) + 1):
        check_cut(tmp_path, keys, ops, calls, paths, upto, None)


def test_power_cut_with_lost_and_torn_unsynced_writes(tmp_path, keys, trace):
    ops, calls, paths = trace
    rng = random.Random(20261122)
    trials = 0
    for upto in range(1, len(ops) + 1):
        for _ in range(6):
            check_cut(tmp_path, keys, ops, calls, paths, upto, rng)
            trials += 1
    assert trials >= 1000


def test_recovered_and_finished_files_open_with_stock_age(tmp_path, keys, trace, age_tool):
    ops, calls, paths = trace
    rng = random.Random(7)
    for upto in sorted(rng.sample(range(1, len(ops) + 1), 25)):
        check_cut(tmp_path, keys, ops, calls, paths, upto, rng)
        for f in tmp_path.iterdir():
            if f.name.endswith(".age"):
                out = subprocess.run([age_tool, "-d", "-i", str(keys["dir"] / "records.txt"), str(f)],
                                     capture_output=True)
                assert out.returncode == 0, out.stderr


def test_opus_call_recovers_to_a_playable_prefix(tmp_path, keys):
    from dsp.synth import speech_like, to_int16

    pcm = to_int16(speech_like(np.random.default_rng(1), 12.0, RATE, -18.0))
    final = tmp_path / "00000001.opus.age"
    cf = CallFile(final, [keys["rec_pub"]], RATE, keys["dev_pub"], codec="opus", checkpoint_s=0.5)
    for s in range(0, len(pcm), 800):
        cf.write(pcm[s:s + 800])
    cf.abandon()  # the process dies here: no close
    res = recover_call(final, [keys["rec_pub"]], keys["device"])
    assert res is not None and res.frames >= len(pcm) - RATE
    y, _ = sf.read(io.BytesIO(decrypt_bytes(final.read_bytes(), [X25519Identity(keys["records"])])), dtype="int16")
    assert len(y) == res.frames
    n = min(len(y), len(pcm)) - 400
    assert np.corrcoef(y[:n].astype(float), pcm[:n].astype(float))[0, 1] > 0.8


KILL_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from firmware.config import parse_config
from firmware.recording.recorder import Recorder
from firmware.hal.audio import ArraySource
audio = np.load(sys.argv[3])
src = ArraySource(audio, 8000, 160, realtime=True, pace=20.0)
rec = Recorder(parse_config({"storage": {"codec": sys.argv[4]}}), sys.argv[2], source=src)
rec.start()
print("started", flush=True)
rec.wait()
"""


@pytest.mark.slow
@pytest.mark.parametrize("codec,kill_after", [("wav", 1.2), ("wav", 2.0), ("wav", 3.1), ("flac", 2.0), ("opus", 2.4)])
def test_kill_9_mid_call_then_recover(box, tmp_path, age_tool, codec, kill_after):
    data, ident = box
    audio, _ = place_calls(RATE, 120.0, [[(2.0, 90.0)], [(10.0, 30.0), (60.0, 40.0)]])
    npy = tmp_path / "audio.npy"
    np.save(npy, audio)
    script = tmp_path / "rec.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT), str(data), str(npy), codec],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(kill_after)  # 20x real time: 24 to 62 s of audio in, calls in progress
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    idx = CallIndex(data / "index.sqlite")
    recording = [r["id"] for r in idx.con.execute("SELECT id FROM calls WHERE state = 'recording'")]
    idx.close()
    assert recording, "the kill should interrupt at least one call"
    r = run_cli("recover", "--data", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("verify", "--data", str(data))
    assert r.returncode == 0, r.stdout
    idx = CallIndex(data / "index.sqlite")
    rows = [dict(x) for x in idx.calls()]
    idx.close()
    for row in rows:
        assert row["state"] == "finished"
        y, _ = decrypt_audio(age_tool, ident, data / row["file"])
        assert len(y) == row["frames"]
        ref = audio[row["start_sample"]:row["start_sample"] + len(y), row["line"]]
        if codec == "opus":  # lossy: the same audio, not the same samples
            assert np.corrcoef(y.astype(float), ref.astype(float))[0, 1] > 0.8
        else:
            assert np.array_equal(y, ref)
        if row["id"] in recording:
            assert row["end_reason"] == "power_loss" and len(y) > RATE


def _writer_call(data, n_samples, codec="wav"):
    """One call through the index and the call writer, as the WriterWorker makes it."""
    from firmware.vault.keys import load_device_recovery_recipient, load_recipients

    idx = CallIndex(data / "index.sqlite")
    call_id, rel = idx.open_call(0, "회선 1", time.time(), 0, RATE, codec, lambda i: f"calls/t/{i:08d}.{codec}.age")
    idx.close()
    cf = CallFile(data / rel, load_recipients(data), RATE, load_device_recovery_recipient(data), codec=codec)
    pcm = np.random.default_rng(call_id).integers(-8000, 8000, size=n_samples, dtype=np.int16)
    cf.write(pcm)
    return call_id, cf, pcm


def test_a_cut_between_rename_and_index_update_keeps_the_length(box, age_tool):
    """The file was complete but the index still said 'recording': the journal's end record
    gives recovery the frame count and end reason, then the journal goes."""
    data, ident = box
    call_id, cf, pcm = _writer_call(data, RATE * 7)
    cf.close(keep_journal=True, end={"reason": "busy", "lost": 12})  # the cut comes here
    assert cf.journal_path.exists()
    r = run_cli("recover", "--data", str(data))
    assert r.returncode == 0, r.stderr
    idx = CallIndex(data / "index.sqlite")
    row = idx.con.execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
    idx.close()
    assert row["state"] == "finished" and row["frames"] == len(pcm) and row["end_reason"] == "busy"
    assert row["lost_frames"] == 12 and abs(row["duration"] - 7.0) < 1e-6
    assert not cf.journal_path.exists()
    y, _ = decrypt_audio(age_tool, ident, data / row["file"])
    assert np.array_equal(y, pcm)
    assert run_cli("verify", "--data", str(data)).returncode == 0


def test_a_cut_between_index_update_and_journal_deletion_leaves_nothing_behind(box):
    data, _ = box
    call_id, cf, pcm = _writer_call(data, RATE * 3)
    cf.close(keep_journal=True, end={"reason": "silence", "lost": 0})
    idx = CallIndex(data / "index.sqlite")
    idx.finish_call(call_id, cf.frames, cf.size, "silence", 0)  # the cut comes after this
    idx.close()
    assert run_cli("verify", "--data", str(data)).returncode != 0  # the stray journal is a problem
    assert run_cli("recover", "--data", str(data)).returncode == 0
    assert not cf.journal_path.exists() and cf.final.exists()
    r = run_cli("verify", "--data", str(data))
    assert r.returncode == 0, r.stdout


# -- the whole recorder, cut at a known capture position -------------------------------------------
def _speaking_call(seconds: float, at_s: float, total_s: float) -> np.ndarray:
    from dsp.synth import line_noise, speech_like, to_int16

    rng = np.random.default_rng(11)
    x = line_noise(rng, int(total_s * RATE), RATE, hiss_dbfs=-60.0)
    s = speech_like(rng, seconds, RATE, -18.0)
    a = int(at_s * RATE)
    x[a:a + len(s)] += s
    return to_int16(x)[:, None]


@pytest.mark.slow
@pytest.mark.parametrize("chunk_s,codec,cut_s", [(2.0, "wav", 11.3), (4.0, "wav", 11.3), (8.0, "wav", 11.3),
                                                  (8.0, "flac", 13.7), (4.0, "opus", 9.9), (8.0, "wav", 3.5)])
def test_a_power_cut_mid_call_loses_at_most_the_last_second(box, tmp_path, age_tool, chunk_s, codec, cut_s):
    """The recorder is killed the moment its capture reaches ``cut_s`` (the source kills its own
    process), a call in progress since 2 s. The audio written ahead of the segmenter's analysis
    (vault/ahead.py) is recovered with the call: at most 1.0 s before the cut is lost, whatever the
    analysis chunk. At 3.5 s the call was only provisional (raised, not confirmed by an 8 s chunk):
    recovery makes the call from the ahead journal alone."""
    from .killcut import lost_per_call, run_and_cut

    data, ident = box
    audio = _speaking_call(30.0, 2.0, 40.0)
    cut = int(cut_s * RATE)
    rc = run_and_cut(data, audio, cut, {"storage": {"codec": codec}, "segment": {"chunk_s": chunk_s}}, tmp_path)
    assert rc == -signal.SIGKILL
    assert list((data / "calls" / "pending").glob("*.ahead")), "the cut left no write-ahead journal"
    r = run_cli("recover", "--data", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    assert run_cli("verify", "--data", str(data)).returncode == 0
    idx = CallIndex(data / "index.sqlite")
    rows = [dict(x) for x in idx.calls()]
    idx.close()
    assert len(rows) == 1 and rows[0]["state"] == "finished", rows
    lost = lost_per_call(rows, cut)
    assert list(lost) == [rows[0]["id"]]
    assert lost[rows[0]["id"]] <= 1.0, f"{lost[rows[0]['id']]:.2f} s lost at chunk_s {chunk_s}"
    row = rows[0]
    y, _ = decrypt_audio(age_tool, ident, data / row["file"])
    assert len(y) == row["frames"] and row["start_sample"] <= 2 * RATE
    ref = audio[row["start_sample"]:row["start_sample"] + len(y), 0]
    if codec == "opus":  # lossy, and re-encoded once at recovery
        assert np.corrcoef(y.astype(float), ref.astype(float))[0, 1] > 0.8
    else:
        assert np.array_equal(y, ref)
    assert not list((data / "calls" / "pending").glob("*"))


@pytest.fixture(scope="module")
def ahead_trace(tmp_path_factory, keys):
    """A write-ahead journal of 12 s of a line's audio in 0.5 s batches (as the writer appends
    them), every file operation recorded; confirmed after 3 s."""
    from firmware.vault.ahead import AheadJournal

    d = tmp_path_factory.mktemp("ahead")
    pcm = np.random.default_rng(5).integers(-8000, 8000, size=RATE * 12, dtype=np.int16)
    disk = RecordingDisk()
    disk.call = 0
    aj = AheadJournal(d, keys["dev_pub"], {"channel": 0, "line_name": "x", "rate": RATE, "codec": "wav",
                                           "start": 1000, "wall": 0.0, "key_class": None}, disk=disk)
    step = RATE // 2
    for s in range(0, len(pcm), step):
        disk.fed = s
        aj.append(1000 + s, pcm[s:s + step])
        if s == 3 * RATE:
            aj.confirm(7, "calls/x/00000007.wav.age", 1000)
    disk.fed = len(pcm)
    aj.close()
    return disk.ops, pcm, aj.path


@pytest.mark.parametrize("lossy", [False, True])
def test_the_write_ahead_journal_survives_a_cut_at_every_operation(tmp_path, keys, ahead_trace, lossy):
    """Cut after every operation (and, lossy, with unsynced writes lost or torn): the journal reads
    back the exact samples, contiguous from the start, every batch handed to it before the one being
    written at the cut (each batch is fsynced before the next is written; the recorder hands them
    over every 0.5 s, within 0.1 s of the capture)."""
    from firmware.vault.ahead import read_ahead

    ops, pcm, path = ahead_trace
    rng = random.Random(99) if lossy else None
    for upto in range(1, len(ops) + 1):
        for _ in range(4 if lossy else 1):
            files = rebuild(ops, upto, rng)
            got = files.get(str(path))
            fed = ops[upto - 1].fed
            if got is None:  # the cut came before the journal's directory entry was durable
                assert fed <= RATE // 2
                continue
            f = tmp_path / "j.ahead"
            f.write_bytes(got)
            res = read_ahead(f, keys["device"])
            if res.meta is None:
                assert fed <= RATE // 2
                continue
            y = res.audio_from(1000)
            assert np.array_equal(y, pcm[:len(y)]), f"wrong samples at cut {upto}"
            assert len(y) >= fed, f"{(fed - len(y)) / RATE:.2f} s lost at cut {upto}"


def test_verify_leaves_a_live_write_ahead_journal_alone_and_names_a_stale_one(box):
    from firmware.vault.ahead import AheadJournal
    from firmware.vault.keys import load_device_recovery_recipient

    data, _ = box
    aj = AheadJournal(data, load_device_recovery_recipient(data), {"channel": 0, "line_name": "x", "rate": RATE,
                                                                   "codec": "wav", "start": 0, "wall": 0.0})
    aj.append(0, np.zeros(RATE // 2, np.int16))
    assert run_cli("verify", "--data", str(data)).returncode == 0  # a call in progress writes to it
    old = time.time() - 600
    os.utime(aj.path, (old, old))
    r = run_cli("verify", "--data", str(data))
    assert r.returncode != 0 and "leftover write-ahead journal" in r.stdout
    aj.close()
