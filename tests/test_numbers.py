"""Dialled numbers and caller IDs are stored only sealed to the records key, never in clear."""

from __future__ import annotations

import json
import logging
import sqlite3

from firmware.config import NokboxConfig
from firmware.recording.recorder import Recorder
from firmware.hal.audio import ArraySource
from firmware.index import CallIndex, connect

from .conftest import age_decrypt, place_calls, run_cli

RATE = 8000


def test_numbers_are_sealed_and_never_in_clear(box, age_tool, caplog, tmp_path):
    data, ident = box
    audio, labels = place_calls(RATE, 80.0, [[(3.0, 20.0)], [(10.0, 15.0)]])
    numbers = [lab[4] for line in labels for lab in line]
    assert all(numbers)
    rec = Recorder(NokboxConfig(), data, source=ArraySource(audio, RATE, 160))
    with caplog.at_level(logging.DEBUG):
        rec.start()
        assert rec.wait(60)
    idx = CallIndex(data / "index.sqlite")
    rows = [dict(r) for r in idx.calls()]
    idx.close()
    assert len(rows) == 2
    got = sorted(json.loads(age_decrypt(age_tool, ident, _write(tmp_path, r["numbers_sealed"])))["dialed"]
                 for r in rows)
    assert got == sorted(numbers)
    out = run_cli("calls", "--json", "--data", str(data))
    assert out.returncode == 0
    shown = [json.loads(ln) for ln in out.stdout.splitlines()]
    assert [c["has_number"] for c in shown] == [True, True]
    status = json.dumps(rec.status())
    for n in numbers:
        assert n not in out.stdout and n not in caplog.text and n not in status
        for f in data.rglob("*"):  # no plain file holds a number (recordings and index included)
            if f.is_file():
                assert n.encode() not in f.read_bytes()


def _write(tmp_path, blob):
    p = tmp_path / "numbers.age"
    p.write_bytes(blob)
    return p


def test_an_old_index_gains_the_column(tmp_path):
    db = tmp_path / "index.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""CREATE TABLE calls (id INTEGER PRIMARY KEY, line INTEGER NOT NULL, line_name TEXT NOT NULL,
        start_utc TEXT NOT NULL, end_utc TEXT, start_sample INTEGER NOT NULL, frames INTEGER NOT NULL DEFAULT 0,
        rate INTEGER NOT NULL, duration REAL, file TEXT NOT NULL, size INTEGER NOT NULL DEFAULT 0,
        codec TEXT NOT NULL, state TEXT NOT NULL, end_reason TEXT, lost_frames INTEGER NOT NULL DEFAULT 0);
        INSERT INTO calls (line, line_name, start_utc, start_sample, rate, file, codec, state)
        VALUES (0, 'a', '2026-01-01T00:00:00.000Z', 0, 8000, 'x', 'wav', 'finished');""")
    con.commit()
    con.close()
    con = connect(db)
    cols = {r["name"] for r in con.execute("PRAGMA table_info(calls)")}
    assert "numbers_sealed" in cols
    assert con.execute("SELECT numbers_sealed FROM calls").fetchone()[0] is None
    con.close()
