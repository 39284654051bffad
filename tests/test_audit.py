"""The audit chain: appends from threads and processes, and edits/deletions detected."""

from __future__ import annotations

import json
import threading

import pytest

from firmware.audit import AuditError, AuditLog


def test_append_and_verify(tmp_path):
    log = AuditLog(tmp_path)
    threads = [threading.Thread(target=lambda i=i: log.append("test", obj=f"o{i}")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.verify() == (20, None)
    assert [e["seq"] for e in log.entries()] == list(range(1, 21))


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
def test_tampering_is_named(tmp_path, tamper):
    log = AuditLog(tmp_path)
    for i in range(5):
        log.append("test", obj=f"o{i}")
    lines = log.path.read_text().splitlines()
    if tamper == "edit":
        e = json.loads(lines[2])
        e["object"] = "other"
        lines[2] = json.dumps(e)
    elif tamper == "delete":
        del lines[2]
    else:
        lines[2], lines[3] = lines[3], lines[2]
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditError, match="entry 3"):
        log.verify()
