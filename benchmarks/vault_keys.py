"""Vault key costs and storage capacity: prints figures, asserts nothing.

    .venv/bin/python benchmarks/vault_keys.py [--tries 5]

- PIN unlock: scrypt parameters, time per try here (the KDF alone and the whole audited
  unlock_with_pin), an estimate for a Raspberry Pi 4, and what that means for an offline
  PIN search by someone who has both the SSD and the device secret (whole-box thief, root).
- The same per backend: with the device secret in a key file, and sealed in a TPM 2.0 (Debian's
  swtpm simulator started here) whose dictionary-attack lockout bounds any search (default policy:
  10 tries, then one per 10 minutes): the time per try and the time to search 6- and 8-digit PINs.
- Recovery passphrase unlock (stock age's scrypt work factor).
- How many years of 16 lines x 8 busy hours a day fit on 1 TB at 16 kbit/s Opus
  (about 2 KB/s per line) plus the measured age overhead.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.vault.age import AgeWriter, generate_identity, parse_recipient  # noqa: E402
from firmware.config import parse_config  # noqa: E402
from firmware.hal.devicekey import FileDeviceSecret  # noqa: E402
from firmware.vault.keys import init_data_dir, unlock_with_passphrase, unlock_with_pin  # noqa: E402
from firmware.vault.sealing import PIN_LOG_N, RECOVERY_LOG_N, _scrypt  # noqa: E402

# scrypt is memory-bandwidth bound; a Pi 4 (Cortex-A72 1.5 GHz, LPDDR4) runs it about 4-6x slower
# than one core of a current x86 desktop. This is an estimate, not a measurement on a Pi.
PI4_FACTOR = (4.0, 6.0)


def timed(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _swtpm(state: Path):
    """A simulated TPM 2.0 on a free local port; (process, TCTI string) or None without swtpm."""
    import shutil
    import socket
    import subprocess

    if shutil.which("swtpm") is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--server",
                             f"type=tcp,port={port},bindaddr=127.0.0.1", "--ctrl",
                             f"type=tcp,port={port + 1},bindaddr=127.0.0.1", "--flags", "not-need-init,startup-clear"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, f"swtpm:host=127.0.0.1,port={port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def tpm_backend(n: int) -> None:
    from firmware.hal.devicekey import TpmDeviceSecret

    print("\nPIN unlock per backend")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tpm").mkdir()
        started = _swtpm(tmp / "tpm")
        if started is None:
            print("  tpm: swtpm is not installed (scripts/setup.sh --test installs it); skipped")
            return
        proc, tcti = started
        try:
            policy = (10, 600, 86400)
            dev = TpmDeviceSecret(tmp / "device.tpm", tcti)
            cfg = parse_config({"vault": {"device_secret": "tpm", "tpm_tcti": tcti, "tpm_blob": str(dev.path),
                                          "pin_backoff_s": 0.0}})
            pin = "48291357"
            init_data_dir(tmp / "data", device=dev, passphrase="K7Q2M-9XWZD-4RTHB-NP0VC", pin=pin, tpm_policy=policy)
            unlock = timed(lambda: unlock_with_pin(tmp / "data", cfg, "approver", pin), n)
            kdf = timed(lambda: _scrypt(pin, os.urandom(16), PIN_LOG_N), n)
            print(f"  file: {kdf * 1000:6.0f} ms per offline guess (scrypt alone); the search is offline, "
                  "bounded only by the thief's cores (above)")
            print(f"  tpm:  {unlock * 1000:6.0f} ms per try here (scrypt + TPM unseal of the device secret and the "
                  "slot's factor, swtpm; a real TPM adds tens of ms)")
            tries, recovery_s, _ = policy
            print(f"        no offline guess: the slot key needs the TPM's factor, which it unseals only for the "
                  f"right PIN and counts every wrong one ({tries} tries, then one every {recovery_s} s)")
            for digits in (6, 8):
                half = 10 ** digits / 2
                years = (max(0.0, half - tries) * recovery_s + tries * unlock) / (365 * 86400)
                print(f"        a {digits}-digit PIN, on average: {years:,.1f} years of the TPM's pace "
                      "(one box, one TPM: no parallel search)")
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tries", type=int, default=5)
    args = ap.parse_args()
    n = args.tries
    print(f"machine: {os.cpu_count()} CPU(s), {sys.platform}; median of {n} runs each\n")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        key = tmp / "dev.key"
        cfg = parse_config({"vault": {"device_key_file": str(key), "pin_backoff_s": 0.0}})
        pin, passphrase = "482913", "K7Q2M-9XWZD-4RTHB-NP0VC"
        t = time.perf_counter()
        init_data_dir(tmp / "data", device=FileDeviceSecret(key), passphrase=passphrase, pin=pin)
        t_init = time.perf_counter() - t

        kdf = timed(lambda: _scrypt(pin, os.urandom(16), PIN_LOG_N), n)
        unlock = timed(lambda: unlock_with_pin(tmp / "data", cfg, "approver", pin), n)
        mem = 128 * 8 * (1 << PIN_LOG_N) / 2**20
        print("PIN unlock")
        print(f"  scrypt N=2^{PIN_LOG_N}, r=8, p=1 ({mem:.0f} MiB) + HKDF with the device secret + ChaCha20-Poly1305")
        print(f"  KDF alone:             {kdf * 1000:7.1f} ms per try here")
        print(f"  unlock_with_pin:       {unlock * 1000:7.1f} ms per try here (state file, index mirror, audit fsync)")
        lo, hi = (unlock * f for f in PI4_FACTOR)
        print(f"  Raspberry Pi 4 (est.): {lo * 1000:7.0f}-{hi * 1000:.0f} ms per try")
        for digits in (6, 8):
            space = 10 ** digits
            here = space * kdf / 2 / 86400  # expected half the space, one core
            print(f"  offline search of a {digits}-digit PIN with SSD + device secret, one core here: "
                  f"{here:,.1f} days on average ({here / (os.cpu_count() or 1):,.1f} on all {os.cpu_count()} cores)")
        print("  with the SSD alone (no device secret): the key also needs 256 unknown bits: no search possible")

        pp = timed(lambda: unlock_with_passphrase(tmp / "data", passphrase), max(1, min(n, 3)))
        mem = 128 * 8 * (1 << RECOVERY_LOG_N) / 2**20
        print("\nrecovery passphrase unlock (stock age scrypt stanza)")
        print(f"  scrypt N=2^{RECOVERY_LOG_N}, r=8, p=1 ({mem:.0f} MiB): {pp:.2f} s here, "
              f"{pp * PI4_FACTOR[0]:.1f}-{pp * PI4_FACTOR[1]:.1f} s on a Pi 4 (est.)")
        print("  100-bit generated passphrase: 2^99 tries on average; not searchable")
        print(f"  nokbox init with passphrase + PIN: {t_init:.2f} s here")

    tpm_backend(n)

    # -- capacity ----------------------------------------------------------------------
    print("\nstorage: 16 lines x 8 busy hours a day, Opus 16 kbit/s (2,000 B/s per line)")
    call_s = 180.0
    payload = int(2000 * call_s)
    _, rec = generate_identity()
    buf = io.BytesIO()
    w = AgeWriter(buf, [parse_recipient(rec)])
    w.write(os.urandom(payload))
    w.close()
    overhead = len(buf.getvalue()) / payload - 1
    print(f"  age overhead measured on a {call_s:.0f} s call: {overhead * 100:.3f} % "
          f"({len(buf.getvalue()) - payload} bytes: header, nonce, 16-byte tag per 64 KiB)")
    ogg = 0.01  # Ogg page headers around Opus packets, roughly 1 % at 16 kbit/s (the codec branch measures it)
    per_day = 16 * 8 * 3600 * 2000 * (1 + overhead) * (1 + ogg)
    print(f"  per day: {per_day / 1e9:.3f} GB (incl. ~{ogg * 100:.0f} % Ogg framing, an estimate)")
    for label, usable in (("1 TB (10^12 B)", 1e12), ("1 TB less 5 % ext4 reserve and free-space margin", 0.95e12)):
        for days_a_year, what in ((365, "every day"), (250, "working days only")):
            years = usable / (per_day * days_a_year)
            print(f"  {label}, {what}: {years:.1f} years")
    three = 0.95e12 / (per_day * 365)
    print(f"  a 3-year retention (seed 003) of this load every day needs {per_day * 365 * 3 / 1e12:.2f} TB: "
          f"{'fits' if three >= 3 else 'does NOT fit'} on 1 TB; 30 days (seed 001 art. 8) needs "
          f"{per_day * 30 / 1e9:.0f} GB")

if __name__ == "__main__":
    main()
