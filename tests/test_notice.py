"""The recording notice with gpiozero's MockFactory, real ALSA playback through the file plugin,
and end to end through `nokbox replay`."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from firmware.audit import AuditLog
from firmware.config import parse_config
from firmware.errors import ConfigError
from firmware.hal.audio_out import AlsaSink, SimulatedSink
from firmware.index import CallIndex
from firmware.recording.notice import AnnouncementError, NoticeService, load_announcement

from .conftest import place_calls, run_cli

RATE = 8000


@pytest.fixture
def factory():
    old = Device.pin_factory
    Device.pin_factory = f = MockFactory()
    yield f
    f.reset()
    Device.pin_factory = old


def short_announcement(data: Path, seconds: float = 1.0) -> None:
    t = np.arange(int(seconds * RATE)) / RATE
    (data / "notice").mkdir(parents=True, exist_ok=True)
    sf.write(data / "notice" / "announcement.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), RATE)


class Results:
    def __init__(self):
        self.items: dict[int, object] = {}
        self.cond = threading.Condition()

    def __call__(self, key, res):
        with self.cond:
            self.items[key] = res
            self.cond.notify_all()

    def wait(self, *keys, timeout=20):
        with self.cond:
            assert self.cond.wait_for(lambda: all(k in self.items for k in keys), timeout)
        return [self.items[k] for k in keys]


def service(tmp_path, lines, sinks=None, **notice):
    cfg = parse_config({"audio": {"channels": 4}, "notice": {"gpio": "mock", **notice}, "line": lines})
    results = Results()
    modes: dict[int, str] = {}
    svc = NoticeService(cfg, cfg.lines, tmp_path, results, modes.get,
                        sinks=sinks if sinks is not None else [SimulatedSink(RATE)])
    return svc, results, modes


LINES = [{"channel": 0, "name": "민원실", "relay_pin": 17}, {"channel": 1, "name": "당직실", "relay_pin": 27}]


def test_relay_on_audio_relay_off(tmp_path, factory):
    short_announcement(tmp_path, 1.0)
    sink = SimulatedSink(RATE)
    svc, results, _ = service(tmp_path, LINES, sinks=[sink], settle_ms=50)
    pin = factory.pin(17)
    pin.clear_states()
    t0 = time.monotonic()
    svc.request(0, key=1, t0=t0)
    [res] = results.wait(1)
    svc.close()
    assert res.played and res.failure is None and res.mode == "on"
    # relay closes at once, opens after settle + 1 s of audio (gpiozero's tolerances)
    pin.assert_states_and_times([(0.0, False), (0.0, True), (1.05, False)])
    assert len(pin.states) == 3
    assert res.relay_ms < 250 and res.delay_ms >= 50
    assert sink.history[0][1] == RATE  # the whole announcement went out
    assert sink.history[0][0] - t0 == pytest.approx(res.delay_ms / 1000, abs=0.01)
    assert res.started < res.ended
    assert factory.pin(27).states[-1].state is False and len(factory.pin(27).states) == 1


def test_two_calls_at_once_share_one_output_in_order(tmp_path, factory):
    short_announcement(tmp_path, 1.0)
    svc, results, _ = service(tmp_path, LINES)
    a, b = factory.pin(17), factory.pin(27)
    a.clear_states()
    b.clear_states()
    t0 = time.monotonic()
    svc.request(0, key=1, t0=t0)
    svc.request(1, key=2, t0=t0)
    r1, r2 = results.wait(1, 2)
    svc.close()
    assert r1.played and r2.played
    assert r2.wait_ms >= 1000 > r1.wait_ms  # the second waited for the first, and says so
    # never both relays closed: line 1 closes after line 0 opened
    assert r2.started >= r1.ended
    b.assert_states_and_times([(0.0, False), (1.05, True), (1.05, False)])


def test_two_outputs_serve_simultaneous_calls_in_parallel(tmp_path, factory):
    short_announcement(tmp_path, 1.0)
    svc, results, _ = service(tmp_path, LINES, sinks=[SimulatedSink(RATE), SimulatedSink(RATE)])
    t0 = time.monotonic()
    svc.request(0, key=1, t0=t0)
    svc.request(1, key=2, t0=t0)
    r1, r2 = results.wait(1, 2)
    svc.close()
    assert r1.played and r2.played and r2.wait_ms < 250 and r1.wait_ms < 250


def test_disabled_line_and_beep_only(tmp_path, factory):
    lines = [dict(LINES[0], notice="off"), dict(LINES[1], notice="beep")]
    sink = SimulatedSink(RATE, speed=0)
    svc, results, modes = service(tmp_path, lines, sinks=[sink])
    factory.pin(17).clear_states()
    svc.request(0, key=1)
    svc.request(1, key=2)
    r1, r2 = results.wait(1, 2)
    assert (r1.played, r1.failure, r1.mode) == (False, "disabled", "off")
    assert len(factory.pin(17).states) == 1  # the relay never moved
    assert r2.played and r2.mode == "beep" and sink.history[-1][1] == int(0.25 * RATE)
    # an override (from `nokbox notice set`) wins over the config
    modes[0] = "on"
    svc.request(0, key=3)
    [r3] = results.wait(3)
    svc.close()
    assert r3.played and r3.mode == "on"
    # a disabled line is not a fault: no alarm
    assert not svc.status()[0]["alarm"]


def test_relay_fault_twice_raises_the_alarm(tmp_path, factory, caplog):
    lines = [dict(LINES[0], feedback_pin=22), LINES[1]]
    svc, results, _ = service(tmp_path, lines, sinks=[SimulatedSink(RATE, speed=0)])
    # the relay's contact never closes: the feedback input stays high (inactive)
    with caplog.at_level(logging.ERROR):
        svc.request(0, key=1)
        svc.request(0, key=2)
        r1, r2 = results.wait(1, 2)
    assert r1.failure == r2.failure == "relay_fault" and not r1.played
    assert svc.status()[0]["alarm"] and svc.status()[0]["failures_in_row"] == 2
    assert "ALARM" in caplog.text
    assert factory.pin(17).state is False  # opened again after the fault
    # a working relay clears the alarm: wire the contact so it closes with the relay
    fb = factory.pin(22)
    relay = factory.pin(17)
    relay.when_changed = None
    orig = relay._set_state

    def follow(value):
        orig(value)
        (fb.drive_low if value else fb.drive_high)()

    relay._set_state = follow
    svc.request(0, key=3)
    [r3] = results.wait(3)
    svc.close()
    assert r3.played and not svc.status()[0]["alarm"]


def test_failing_output_device(tmp_path, factory):
    svc, results, _ = service(tmp_path, LINES, sinks=[AlsaSink("no_such_notice_output")])
    svc.request(0, key=1)
    svc.request(0, key=2)
    r1, r2 = results.wait(1, 2)
    svc.close()
    assert r1.failure == "output_failed" and not r1.played
    assert factory.pin(17).state is False
    assert svc.status()[0]["alarm"]


def test_line_without_relay_on_a_real_board_is_a_config_error():
    from firmware.recording.notice import check_pins

    cfg = parse_config({"notice": {"gpio": "lgpio"}, "line": [{"channel": 0, "name": "a"}]})
    with pytest.raises(ConfigError, match=r"line\[0\].relay_pin"):
        check_pins(cfg)
    with pytest.raises(ConfigError, match=r"line\[1\].relay_pin: GPIO 17 already used by line\[0\].relay_pin"):
        parse_config({"line": [{"channel": 0, "name": "a", "relay_pin": 17},
                               {"channel": 1, "name": "b", "relay_pin": 17}]})
    with pytest.raises(ConfigError, match=r"line\[0\].relay_pin"):
        parse_config({"line": [{"channel": 0, "name": "a", "relay_pin": 40}]})


def test_line_sense_edges_go_to_the_segmenter_and_play_nothing_themselves(tmp_path, factory):
    """The sense input's raw edges (bounce and ringing included) go to the recorder's segmenter,
    which debounces them and opens the call with its one notice (tests/test_linestate.py); the
    notice service itself plays nothing on an edge."""
    short_announcement(tmp_path, 0.5)
    lines = [dict(LINES[0], sense_pin=23), LINES[1]]
    sink = SimulatedSink(RATE)
    svc, results, _ = service(tmp_path, lines, sinks=[sink])
    edges = []
    svc.on_sense = lambda line, off: edges.append((line, off))
    pin = factory.pin(23)
    pin.drive_low()  # off-hook: loop current pulls the detector low
    pin.drive_high()
    pin.drive_low()
    assert svc.sense_state() == {0: True}
    time.sleep(0.3)
    svc.close()
    assert edges == [(0, True), (0, False), (0, True)]
    assert sink.history == []


def test_button_short_press_tests_long_press_shuts_down(tmp_path, factory):
    short_announcement(tmp_path, 0.3)
    cfg = parse_config({"notice": {"gpio": "mock", "button_pin": 24, "test_line": 1}, "line": LINES})
    sink = SimulatedSink(RATE, speed=0)
    audit = AuditLog(tmp_path)
    svc = NoticeService(cfg, cfg.lines, tmp_path, Results(), lambda ch: None, sinks=[sink], audit=audit)
    shut = threading.Event()
    svc.on_shutdown = shut.set
    btn = factory.pin(24)
    btn.drive_low()
    time.sleep(0.1)
    btn.drive_high()
    deadline = time.monotonic() + 5
    while not sink.history and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.history and factory.pin(27).states[-1].state is False
    assert len(factory.pin(27).states) >= 3  # line 1's relay closed and opened for the test
    btn.drive_low()
    assert shut.wait(6)
    btn.drive_high()
    svc.close()
    actions = [e["action"] for e in audit.entries()]
    assert "system.shutdown" in actions


def test_alsa_output_through_the_file_plugin(tmp_path, factory):
    out = tmp_path / "notice-out.raw"
    conf = tmp_path / "asound.conf"
    conf.write_text(f'pcm.nbnotice {{\n type file\n slave.pcm "null"\n file "{out}"\n format "raw"\n}}\n')
    old = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = f"/usr/share/alsa/alsa.conf:{conf}"
    try:
        short_announcement(tmp_path, 0.5)
        svc, results, _ = service(tmp_path, LINES, sinks=[AlsaSink("nbnotice", RATE, 160)])
        svc.request(0, key=1)
        [res] = results.wait(1)
        svc.close()
    finally:
        if old is None:
            os.environ.pop("ALSA_CONFIG_PATH", None)
        else:
            os.environ["ALSA_CONFIG_PATH"] = old
    assert res.played
    written = np.fromfile(out, dtype="<i2")
    expect = load_announcement(tmp_path / "notice" / "announcement.wav", RATE)
    assert len(written) >= len(expect)
    assert np.array_equal(written[:len(expect)], expect)
    assert not written[len(expect):].any()  # padding to a whole period is silence


@pytest.mark.parametrize("make, message", [
    (lambda p: sf.write(p, np.zeros(16 * RATE, np.float32) + 0.1, RATE), "at most 15 s"),
    (lambda p: sf.write(p, np.clip(3 * np.sin(np.arange(RATE) / 5), -1, 1).astype(np.float32), RATE), "clipped"),
    (lambda p: sf.write(p, np.zeros(RATE, np.float32), RATE), "silent"),
    (lambda p: p.write_bytes(b"not audio at all"), "not an audio file"),
])
def test_bad_announcements_are_refused(tmp_path, make, message):
    p = tmp_path / "a.wav"
    make(p)
    with pytest.raises(AnnouncementError, match=message):
        load_announcement(p, RATE)


def test_announcement_is_resampled_and_normalised(tmp_path):
    t = np.arange(44100 * 2) / 44100
    stereo = np.stack([0.05 * np.sin(2 * np.pi * 300 * t)] * 2, axis=1).astype(np.float32)
    sf.write(tmp_path / "a.wav", stereo, 44100)
    x = load_announcement(tmp_path / "a.wav", RATE)
    assert len(x) == 2 * RATE
    assert np.max(np.abs(x)) == pytest.approx(32767 * 10 ** (-3 / 20), rel=0.01)


def test_cli_mode_change_and_upload_are_signed_in_and_audited(box, tmp_path):
    from .authutil import PASSWORD, fast_cfg, make_people

    data, _ = box
    make_people(data, fast_cfg())
    cfg = tmp_path / "nokbox.toml"
    cfg.write_text("[auth]\nargon2_memory_kib = 19456\nargon2_time_cost = 2\nargon2_parallelism = 1\n")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD["technician"] + "\n")
    signin = ["--data", str(data), "--config", str(cfg), "--as", "technician", "--as-password-file", str(pw)]
    r = run_cli("notice", "set", *signin, "--line", "1", "--mode", "off", "--reason", "회선 점검 중")
    assert r.returncode == 0, r.stderr
    idx = CallIndex(data / "index.sqlite")
    assert idx.notice_mode(1) == "off"
    idx.close()
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(20 * RATE, np.float32) + 0.1, RATE)
    r = run_cli("notice", "upload", *signin, str(long))
    assert r.returncode != 0 and "at most 15 s" in r.stderr
    good = tmp_path / "good.wav"
    sf.write(good, 0.2 * np.sin(np.arange(3 * RATE) / 3).astype(np.float32), RATE)
    r = run_cli("notice", "upload", *signin, str(good))
    assert r.returncode == 0, r.stderr
    entries = [e for e in AuditLog(data).entries() if e["action"].startswith("notice.")]
    assert [(e["action"], e["actor"], e["outcome"]) for e in entries] == [
        ("notice.mode", "technician", "ok"), ("notice.upload", "technician", "refused"),
        ("notice.upload", "technician", "ok")]
    assert entries[0]["reason"] == "회선 점검 중" and entries[0]["detail"] == {"old": "config", "new": "off"}
    # without a sign-in: refused
    r = run_cli("notice", "set", "--data", str(data), "--line", "1", "--mode", "on", "--reason", "x")
    assert r.returncode == 4 and "refused" in r.stderr


def test_replay_end_to_end_notice_per_call_and_relay_history(box, tmp_path, factory):
    from firmware.cli import main

    data, _ = box
    audio, labels = place_calls(RATE, 100.0, [[(3.0, 10.0), (50.0, 10.0)], [(8.0, 20.0)]])
    wav = tmp_path / "lines.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    cfg = tmp_path / "nokbox.toml"
    cfg.write_text('[notice]\ngpio = "mock"\n[[line]]\nchannel = 0\nname = "민원실"\nrelay_pin = 17\n'
                   '[[line]]\nchannel = 1\nname = "당직실"\nrelay_pin = 27\n')
    assert main(["replay", str(wav), "--data", str(data), "--config", str(cfg)]) == 0
    r = run_cli("calls", "--data", str(data), "--json")
    calls = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(calls) == 3
    for c in calls:
        n = c["notice"]
        assert n["played"] is True and n["failure"] is None and n["mode"] == "on"
        assert n["started"] <= n["ended"] and n["delay_ms"] is not None
    # each line's relay closed and opened once per call on that line
    for pin, line in ((17, 0), (27, 1)):
        states = [s.state for s in factory.pin(pin).states]
        closes = sum(1 for a, b in zip(states, states[1:]) if not a and b)
        assert closes == sum(1 for c in calls if c["line"] == line)
        assert states[-1] is False


def test_auto_gpio_never_falls_back_to_simulated_pins_on_a_board_with_gpio(monkeypatch):
    """A board with a GPIO chip and no lgpio must not record notices as played with relays that never
    move: 'auto' is mock only where there is no GPIO at all."""
    import os as _os

    from firmware.errors import DeviceError
    from firmware.hal import gpio

    real_exists = _os.path.exists
    monkeypatch.setattr(gpio.os.path, "exists", lambda p: True if p == "/dev/gpiochip0" else real_exists(p))
    monkeypatch.setattr(gpio, "_has_lgpio", lambda: False)
    with pytest.raises(DeviceError, match="lgpio"):
        gpio.gpio_backend("auto")
    monkeypatch.setattr(gpio, "_has_lgpio", lambda: True)
    assert gpio.gpio_backend("auto") == "lgpio"
    monkeypatch.setattr(gpio.os.path, "exists", lambda p: False if p == "/dev/gpiochip0" else real_exists(p))
    assert gpio.gpio_backend("auto") == "mock"
    assert gpio.gpio_backend("mock") == "mock"
