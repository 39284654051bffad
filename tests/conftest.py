"""Shared fixtures: an initialised data directory, the stock age tool, helpers to build line audio."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from firmware.vault.keys import init_data_dir

ROOT = Path(__file__).resolve().parent.parent
NOKBOX = [sys.executable, "-m", "firmware.cli"]


@pytest.fixture
def box(tmp_path):
    """An initialised data directory and the path of its records identity (kept outside it)."""
    data = tmp_path / "data"
    ident = tmp_path / "records-identity.txt"
    init_data_dir(data, ident)
    return data, ident


@pytest.fixture(scope="session")
def age_tool():
    path = shutil.which("age")
    if path is None:
        pytest.fail("the stock 'age' tool is required (Debian package age; scripts/setup.sh --test installs it)")
    return path


def age_decrypt(age_tool: str, identity: Path, path: Path) -> bytes:
    """Decrypt with the stock age CLI; fail the test with age's own message otherwise."""
    out = subprocess.run([age_tool, "-d", "-i", str(identity), str(path)], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


def decrypt_audio(age_tool: str, identity: Path, path: Path) -> tuple[np.ndarray, int]:
    """A recorded call's samples, decrypted with stock age and decoded with soundfile."""
    y, rate = sf.read(io.BytesIO(age_decrypt(age_tool, identity, path)), dtype="int16")
    return y, rate


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """Run ``nokbox`` as a user would (a fresh process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*NOKBOX, *args], capture_output=True, text=True, env=env, cwd=ROOT, **kw)


def place_calls(rate: int, seconds: float, plan: list[list[tuple[float, float]]], seed: int = 7):
    """Multi-line audio with calls at known times.

    ``plan[line]`` lists (start_s, talk_s) for each call on that line. Returns the
    (frames, lines) int16 audio and, per line, the labels in samples.
    """
    from dsp.synth import line_noise, make_call, to_int16

    n = int(seconds * rate)
    out = np.empty((n, len(plan)), dtype=np.int16)
    labels = []
    for ln, calls in enumerate(plan):
        rng = np.random.default_rng([seed, ln])
        x = line_noise(rng, n, rate)
        labs = []
        for start_s, talk_s in calls:
            call, lab = make_call(rng, rate, talk_s, outgoing=True)
            s = int(start_s * rate)
            assert s + len(call) <= n, "call does not fit"
            x[s:s + len(call)] += call
            labs.append((s, s + lab.first_speech, s + lab.last_speech, s + lab.end, lab.dialed))
        out[:, ln] = to_int16(x)
        labels.append(labs)
    return out, labels


# -- a TPM 2.0 for tests: Debian's swtpm simulator on a local socket ----------------------------------
def _ports() -> int:
    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


class Swtpm:
    """One simulated TPM 2.0 with its own state directory (a box's TPM chip)."""

    def __init__(self, state: Path) -> None:
        if shutil.which("swtpm") is None:
            pytest.fail("swtpm is required (Debian swtpm; scripts/setup.sh --test installs it)")
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.port = _ports()
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1", "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.proc.stderr.read()
                time.sleep(0.05)
        self.tcti = f"swtpm:host=127.0.0.1,port={self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stderr.close()
