"""The data directory and the records key pair.

Until the vault issue seals the identity, the box keeps only the public recipient
(``keys/recipient.txt``); the identity goes to ``--identity-out`` (or is shown once)
and is never written under the data directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .age import generate_identity, parse_recipient
from .errors import DataDirError, VaultError
from .index import connect

MARKER = "nokbox.json"


def init_data_dir(data: Path, identity_out: Path | None = None) -> tuple[str, str]:
    """Create the data directory and a new records key pair. Returns (identity, recipient)."""
    data = Path(data)
    if (data / MARKER).exists():
        raise VaultError(f"{data} is already initialised; refusing to replace its records key")
    for sub in ("keys", "calls", "run"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o750)
    identity, recipient = generate_identity()
    if identity_out is not None:
        identity_out = Path(identity_out)
        if identity_out.resolve().is_relative_to(data.resolve()):
            raise VaultError("the identity must not be stored inside the data directory")
        fd = os.open(identity_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# nokbox records identity, created {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            f.write(f"# public key: {recipient}\n{identity}\n")
    (data / "keys" / "recipient.txt").write_text(recipient + "\n")
    connect(data / "index.sqlite").close()
    (data / MARKER).write_text(json.dumps({"format": 1, "created": time.time()}) + "\n")
    return identity, recipient


def load_recipients(data: Path) -> list[bytes]:
    """The public keys recordings are encrypted to."""
    data = Path(data)
    path = data / "keys" / "recipient.txt"
    if not (data / MARKER).exists() or not path.exists():
        raise DataDirError(f"{data} is not an initialised nokbox data directory (run: nokbox init --data {data})")
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(parse_recipient(line))
    if not out:
        raise VaultError(f"{path}: no recipient")
    return out
