"""Config schema: defaults, strict keys, ranges, and errors that name the key."""

from __future__ import annotations

import pytest

from firmware.config import NokboxConfig, load_config, parse_config
from firmware.errors import ConfigError

from .conftest import run_cli


def write(tmp_path, text):
    p = tmp_path / "nokbox.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid_and_simulated():
    cfg = NokboxConfig()
    assert cfg.source_kind == "simulated"
    assert cfg.audio.ring_seconds >= 30
    assert [ln.name for ln in cfg.lines] == ["회선 1", "회선 2", "회선 3", "회선 4"]
    assert cfg.web.host == "127.0.0.1"


def test_full_file_loads(tmp_path):
    p = write(tmp_path, """
[audio]
device = "hw:CARD=Device,DEV=0"
rate = 16000
channels = 8

[segment]
silence_s = 12

[[line]]
channel = 0
name = "민원실"
extension = "1234"

[[line]]
channel = 7
name = "당직실"
""")
    cfg, path = load_config(p)
    assert path == p
    assert cfg.source_kind == "alsa"
    assert [(ln.channel, ln.name) for ln in cfg.lines] == [(0, "민원실"), (7, "당직실")]
    assert cfg.segment.silence_s == 12


@pytest.mark.parametrize("text, key", [
    ("[audio]\nrat = 8000\n", "audio.rat: unknown key"),
    ("[audoi]\nrate = 8000\n", "audoi: unknown key"),
    ("[audio]\nrate = 44100\n", "audio.rate"),
    ("[audio]\nchannels = 0\n", "audio.channels"),
    ("[audio]\nring_seconds = 10\n", "audio.ring_seconds"),
    ("[segment]\npreroll_s = 0.5\n", "segment.preroll_s"),
    ("[segment]\ntrigger_db = 5\nrelease_db = 8\n", "release_db must not exceed trigger_db"),
    ("[web]\nport = 70000\n", "web.port"),
    ("[[line]]\nchannel = 9\nname = \"x\"\n", "line[0].channel: 9 is not an input channel"),
    ("[[line]]\nchannel = 1\nname = \"a\"\n[[line]]\nchannel = 1\nname = \"b\"\n",
     "line[1].channel: channel 1 already used by line[0]"),
    ("[[line]]\nchannel = 0\nname = \"a\"\nextension = \"12-34\"\n", "line[0].extension"),
    ("[[line]]\nchannel = 0\n", "line[0].name"),
    ("[audio]\nbackend = \"alsa\"\n", "audio.device: required"),
])
def test_bad_key_is_named(tmp_path, text, key):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert key in str(exc.value)


def test_toml_syntax_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[audio\nrate = 8000\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_parse_reports_every_bad_key():
    with pytest.raises(ConfigError) as exc:
        parse_config({"audio": {"rate": 1, "chanels": 2}})
    assert "audio.rate" in str(exc.value) and "audio.chanels: unknown key" in str(exc.value)


def test_check_config_cli(tmp_path):
    good = write(tmp_path, "[audio]\nchannels = 2\n")
    r = run_cli("check-config", "--config", str(good))
    assert r.returncode == 0, r.stderr
    assert "config OK" in r.stdout and "2 line(s)" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[segment]\nsilense_s = 3\n")
    r = run_cli("check-config", "--config", str(bad))
    assert r.returncode == 2
    assert "segment.silense_s: unknown key" in r.stderr


def test_check_config_describes_every_field():
    r = run_cli("check-config", "--describe")
    assert r.returncode == 0
    for key in ("audio.rate", "segment.preroll_s", "line[].channel", "web.port", "storage.opus_complexity"):
        assert key in r.stdout
    # nested defaults are the effective ones (the Korean busy tone), not the bare field defaults
    assert "segment.tones.busy.freqs = [480.0, 620.0]" in r.stdout
    assert "segment.tones.busy.on_s = 0.5" in r.stdout
    assert "storage.codec = 'opus'" in r.stdout
