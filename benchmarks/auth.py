"""Cost of the password and PIN hash on this machine: Argon2id at the configured parameters.

    .venv/bin/python benchmarks/auth.py [--config F]

Prints the median time of one hash (what a sign-in costs the box, and what every guess costs an
attacker who stole accounts.sqlite), the memory per hash, and sign-ins per second one after
another. ASVS 4.0.3 2.4.4 / OWASP: Argon2id with at least 19 MiB, 2 passes, 1 lane; nokbox
defaults to RFC 9106's low-memory profile (64 MiB, 3 passes, 4 lanes).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.people.accounts import measure_hash  # noqa: E402
from firmware.config import AuthConfig, load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    cfg, _ = load_config(args.config) if args.config else (None, None)
    cores = os.cpu_count() or 1
    print(f"machine: {platform.machine()} {platform.processor() or ''} {cores} core(s), Python {platform.python_version()}")
    rows = [("configured" if cfg else "default", cfg.auth if cfg else AuthConfig()),
            ("ASVS/OWASP floor", AuthConfig(argon2_memory_kib=19456, argon2_time_cost=2, argon2_parallelism=1))]
    for name, a in rows:
        t = measure_hash(a, args.rounds)
        print(f"{name:>17}: Argon2id m={a.argon2_memory_kib // 1024} MiB t={a.argon2_time_cost} "
              f"p={a.argon2_parallelism}: {t * 1000:.0f} ms per hash (median of {args.rounds}); "
              f"~{1 / t:.1f} sign-ins/s one after another; {a.argon2_memory_kib // 1024} MiB per hash in flight")


if __name__ == "__main__":
    main()
