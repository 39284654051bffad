"""The export package: an AES-256 ZIP that stock 7-Zip opens with the generated password (and only
with it), whose manifest ``sha256sum -c`` checks and whose signature ``ssh-keygen -Y verify`` checks."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from firmware.release import package
from firmware.vault import signing
from firmware.vault.keys import device_for


@pytest.fixture(scope="module")
def seven_zip():
    exe = shutil.which("7z") or shutil.which("7zz")
    if exe is None:
        pytest.fail("7-Zip is required (Debian 7zip; scripts/setup.sh --test installs it)")
    return exe


def _wav(seed: int, seconds: float = 2.0) -> tuple[bytes, np.ndarray]:
    y = (np.random.default_rng(seed).normal(0, 3000, int(8000 * seconds))).astype(np.int16)
    b = io.BytesIO()
    sf.write(b, y, 8000, format="WAV", subtype="PCM_16")
    return b.getvalue(), y


def _build(box, tmp_path, **kw):
    data, _ = box
    device = device_for(data)
    (w1, y1), (w2, y2) = _wav(1), _wav(2, 3.0)
    calls = [package.PackedCall(11, "민원실 (1)", "2026-03-04 09:12:03", 2.0, [w1[:1000], w1[1000:]]),
             package.PackedCall(12, "당직실 (2)", "2026-03-04 10:01:40", 3.0, [w2])]
    pkg = package.build(tmp_path / "2026-0042.zip", "2026-0042", [("신청인 · Requester", "홍길동"),
                        ("목적 · Purpose", "분쟁 확인")], calls, "nokbox-audit-cp-1 42 abc",
                        lambda m: signing.sign(data, device, m), extra={"receipt.pdf": b"%PDF-1.7 receipt"}, **kw)
    return data, pkg, (y1, y2)


def test_seven_zip_opens_it_with_the_password_and_everything_checks(box, tmp_path, seven_zip):
    data, pkg, (y1, y2) = _build(box, tmp_path)
    assert re.fullmatch(r"([2-9A-HJ-NP-Z]{4}-){4}[2-9A-HJ-NP-Z]{4}", pkg.password) and package.password_bits() >= 90
    assert not (tmp_path / "2026-0042.zip.part").exists()
    out = tmp_path / "x"
    r = subprocess.run([seven_zip, "x", f"-p{pkg.password}", f"-o{out}", str(pkg.path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["MANIFEST.sha256", "MANIFEST.sha256.sig", "RELEASE.txt", "call-01.wav", "call-02.wav",
                     "receipt.pdf"]
    r = subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=out, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count(": OK") == 4, r.stdout
    signers = tmp_path / "allowed_signers"
    signers.write_text(signing.allowed_signers(signing.public_line(data)) + "\n")
    verify = ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "nokbox-export", "-n", "file", "-s",
              str(out / "MANIFEST.sha256.sig")]
    assert subprocess.run(verify, input=(out / "MANIFEST.sha256").read_bytes(), capture_output=True).returncode == 0
    assert np.array_equal(sf.read(out / "call-01.wav", dtype="int16")[0], y1)
    assert np.array_equal(sf.read(out / "call-02.wav", dtype="int16")[0], y2)
    release = (out / "RELEASE.txt").read_text()
    assert "2026-0042" in release and "홍길동" in release and "nokbox-audit-cp-1 42 abc" in release
    assert f"call-01.wav\t11\t민원실 (1)\t2026-03-04 09:12:03\t2.0\t{pkg.files['call-01.wav']}" in release
    # one changed byte: in a file the manifest catches it, in the manifest the signature does
    wav = bytearray((out / "call-02.wav").read_bytes())
    wav[500] ^= 1
    (out / "call-02.wav").write_bytes(bytes(wav))
    assert subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=out, capture_output=True).returncode != 0
    man = bytearray((out / "MANIFEST.sha256").read_bytes())
    man[3] = ord("0") if man[3] != ord("0") else ord("1")
    (out / "MANIFEST.sha256").write_bytes(bytes(man))
    assert subprocess.run(verify, input=(out / "MANIFEST.sha256").read_bytes(), capture_output=True).returncode != 0


def test_a_wrong_password_opens_nothing(box, tmp_path, seven_zip):
    _, pkg, _ = _build(box, tmp_path)
    wrong = "2222-3333-4444-5555-6666"
    r = subprocess.run([seven_zip, "x", f"-p{wrong}", f"-o{tmp_path / 'y'}", str(pkg.path)], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "Wrong password" in r.stdout + r.stderr
    assert not any((tmp_path / "y").glob("*.wav")) or all(p.stat().st_size == 0 for p in (tmp_path / "y").glob("*.wav"))


def test_reading_it_back_finds_any_damage(box, tmp_path):
    data, pkg, _ = _build(box, tmp_path)
    line = signing.public_line(data)
    check = lambda m, s: signing.verify(line, m, s)  # noqa: E731
    assert package.check(pkg.path, pkg.password, check) == []
    blob = bytearray(pkg.path.read_bytes())
    blob[len(blob) // 3] ^= 0xFF  # a flipped byte inside the first file's data
    pkg.path.write_bytes(bytes(blob))
    assert package.check(pkg.path, pkg.password, check)


def test_a_package_cut_short_leaves_nothing_that_looks_complete(box, tmp_path):
    def refuse(m):
        raise OSError("the stick was pulled out")

    data, _ = box
    with pytest.raises(OSError):
        package.build(tmp_path / "p.zip", "2026-0042", [], [package.PackedCall(1, "1", "-", 1.0, [_wav(3)[0]])],
                      "cp", refuse)
    assert list(tmp_path.glob("p.zip*")) == []
