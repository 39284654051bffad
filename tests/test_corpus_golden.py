"""Calls of the labelled corpus (real speech, music, tones, DTMF, caller ID, G.711) are found whole."""

from __future__ import annotations

import pytest

from dsp.segment import SegmentParams

from .corpus import LineSpec, build_line, score, segment_line


@pytest.mark.parametrize("snr,companding,seed", [(25.0, None, 11), (15.0, "mulaw", 12), (30.0, "alaw", 13)])
def test_corpus_calls_found_whole_with_exact_numbers(snr, companding, seed):
    x, labels = build_line(LineSpec(seconds=600.0, snr_db=snr, companding=companding, seed=seed))
    assert len(labels) >= 4
    s = score(labels, segment_line(x, SegmentParams()), 8000)
    assert (s["recall"], s["precision"]) == (1.0, 1.0)
    assert (s["splits"], s["merges"], s["false_calls"]) == (0, 0, 0)
    assert s["whole"] == len(labels)
    assert s["speech_lost_s"] == 0.0 and s["worst_onset_clip_ms"] == 0.0
    assert s["dialed"][0] == s["dialed"][1] and s["caller_id"][0] == s["caller_id"][1]
