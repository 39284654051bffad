"""Line rings: exact copies, wrap-around, counted overruns, blocking replay, time anchors."""

from __future__ import annotations

import threading

import numpy as np

from firmware.recording.ring import LineRings


def interleaved(frames: int, channels: int, start: int = 0) -> np.ndarray:
    i = np.arange(start, start + frames, dtype=np.int64)[:, None]
    c = np.arange(channels)[None, :]
    return ((i * 7 + c * 1000) % 65536 - 32768).astype(np.int16)


def test_rings_copy_each_channel_exactly_across_wrap():
    rings = LineRings(lines=3, capacity=1000, rate=8000, margin=0)
    chmap = [2, 0, 1]
    blocks = [interleaved(160, 3, s) for s in range(0, 2400, 160)]
    got = [[] for _ in range(3)]
    pos = 0
    for b in blocks:
        rings.write(b, chmap)
        for line in range(3):
            x, start = rings.read(line, pos, rings.write_pos)
            assert start == pos
            got[line].append(x)
            rings.release(line, rings.write_pos)
        pos = rings.write_pos
    whole = np.concatenate(blocks)
    for line, ch in enumerate(chmap):
        assert np.array_equal(np.concatenate(got[line]), whole[:, ch])
    assert rings.lost.sum() == 0


def test_overrun_is_counted_per_line_and_producer_never_waits():
    rings = LineRings(lines=2, capacity=1000, rate=8000, margin=0)
    # line 0 keeps up, line 1's consumer is stuck at 0
    for s in range(0, 3000, 100):
        rings.write(interleaved(100, 2, s), [0, 1])
        rings.release(0, rings.write_pos)
    assert rings.write_pos == 3000
    assert rings.lost[0] == 0
    assert rings.lost[1] == 2000  # everything older than the last 1000 samples
    # the stuck consumer learns the same: its read starts where audio still exists
    x, start = rings.read(1, 0, 3000)
    assert start == 2000 and len(x) == 1000
    # counting is not repeated for samples already counted
    rings.release(1, 2500)
    rings.write(interleaved(100, 2, 3000), [0, 1])
    assert rings.lost[1] == 2000


def test_blocking_ring_waits_for_the_consumer_instead_of_losing():
    rings = LineRings(lines=1, capacity=500, rate=8000, margin=0, blocking=True)
    src = interleaved(5000, 1)
    out = []

    def consumer():
        pos = 0
        while pos < 5000:
            x, start = rings.read(0, pos, rings.write_pos)
            assert start == pos
            out.append(x)
            pos += len(x)
            rings.release(0, pos)

    t = threading.Thread(target=consumer)
    t.start()
    for s in range(0, 5000, 100):
        assert rings.write(src[s:s + 100], [0])
    t.join(10)
    assert np.array_equal(np.concatenate(out), src[:, 0])
    assert rings.lost.sum() == 0


def test_blocking_write_gives_up_when_stopped():
    rings = LineRings(lines=1, capacity=200, rate=8000, margin=0, blocking=True)
    stop = threading.Event()
    assert rings.write(interleaved(200, 1), [0], stop)
    stop.set()
    assert rings.write(interleaved(100, 1), [0], stop) is False


def test_wall_time_from_anchors_survives_a_clock_step():
    rings = LineRings(lines=1, capacity=80000, rate=8000, margin=0)
    rings.anchor(wall=1000.0, mono=5.0)
    rings.write(interleaved(8000, 1), [0])
    rings.anchor(wall=1001.0, mono=6.0)
    rings.write(interleaved(8000, 1), [0])
    rings.anchor(wall=1302.0, mono=7.0)  # NTP stepped the wall clock by +300 s
    rings.write(interleaved(4000, 1), [0])
    assert rings.wall_at(4000) == 1000.5
    assert rings.wall_at(12000) == 1001.5
    assert rings.wall_at(18000) == 1302.25
