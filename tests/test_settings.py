"""The settings page: a change validated with the config schema, shown old → new, written atomically,
reloaded live and audited; a bad value refused on the form with nothing written; a stale preview
refused; disabled lines record nothing and are flagged; signed backup and restore."""

from __future__ import annotations

import datetime as dt
import io
import re
import tomllib
from pathlib import Path

import pytest
import tomli_w

from firmware import configfile as cf
from firmware.audit import AuditLog
from firmware.config import parse_config
from firmware.index import KST
from firmware.people.review import review_day
from firmware.recording.recorder import Recorder
from web import create_app

from .authutil import FAST_AUTH, PASSWORD, make_people
from .test_roles import TC

DOC = {"auth": FAST_AUTH, "audio": {"channels": 2}, "simulate": {"first_call_s": 600},
       "line": [{"channel": 0, "name": "민원실", "extension": "1234"}, {"channel": 1, "name": "당직실"}]}


def _line_form(rec_cfg, **over) -> dict:
    f = {"section": "lines"}
    for ln in rec_cfg.lines:
        c = ln.channel
        f |= {f"line.{c}.name": ln.name, f"line.{c}.extension": ln.extension, f"line.{c}.notice": ln.notice}
        if ln.enabled:
            f[f"line.{c}.enabled"] = "on"
    for k, v in over.items():
        if v is None:
            f.pop(k, None)
        else:
            f[k] = v
    return f


@pytest.fixture
def page(box, tmp_path):
    data, _ = box
    path = tmp_path / "etc" / "nokbox.toml"
    path.parent.mkdir()
    path.write_text("# the office's own note\n" + tomli_w.dumps(DOC))
    path.chmod(0o640)
    cfg = parse_config(DOC)
    make_people(data, cfg)
    rec = Recorder(cfg, data, config_path=path)
    app = create_app(rec, config_path=path)
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    return tc, rec, path, data


def _hidden(r, name):
    m = re.search(rf'name="{name}" value="([^"]*)"', r.get_data(as_text=True))
    return m.group(1)


def _doc(r):
    import html

    return html.unescape(re.search(r'<textarea name="doc" hidden>(.*?)</textarea>', r.get_data(as_text=True), re.S).group(1))


def _apply(tc, r):
    return tc.post("/settings/apply", {"how": _hidden(r, "how"), "digest": _hidden(r, "digest"), "doc": _doc(r)})


def test_rename_shows_old_to_new_then_on_the_status_without_restart(page):
    tc, rec, path, data = page
    r = tc.post("/settings/preview", _line_form(rec.cfg, **{"line.0.name": "민원실 2", "line.1.extension": "77"}))
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    assert 'data-key="line[channel=0].name"' in body and "민원실 2" in body and ">민원실<" in body
    assert "1번 회선 이름 · line 1 name" in body and "바로 · at once" in body
    assert path.read_text().count("민원실 2") == 0  # nothing written before apply
    r = _apply(tc, r)
    assert r.status_code == 200 and "설정을 저장했습니다" in r.get_data(as_text=True)
    assert [ln["name"] for ln in rec.status()["lines"]] == ["민원실 2", "당직실"]  # live, no restart
    assert "민원실 2" in tc.get("/api/status").get_data(as_text=True)
    written = path.read_text()
    assert written.startswith(cf.HEADER) and "# the office's own note" in written  # the top comment is kept
    assert tomllib.loads(written)["line"][1]["extension"] == "77"
    assert path.stat().st_mode & 0o777 == 0o640
    e = [e for e in AuditLog(data).entries() if e["action"] == "config.change" and e["actor"] == "technician"][-1]
    assert e["role"] == "technician" and e["outcome"] == "ok"
    assert e["detail"]["changes"]["line[channel=0].name"] == {"old": "민원실", "new": "민원실 2"}
    assert e["detail"]["restart"] == []


@pytest.mark.parametrize("form, label", [
    ({"segment.trigger_db": "99"}, "통화 시작 감도"),
    ({"segment.trigger_db": "abc"}, "통화 시작 감도"),
    ({"segment.release_db": "30"}, "통화 유지 감도"),  # above trigger_db: the model-level check
])
def test_a_bad_value_is_refused_on_the_form_and_nothing_written(page, form, label):
    tc, rec, path, _ = page
    before = path.read_bytes()
    f = {"section": "segment", **{f"segment.{k}": f"{getattr(rec.cfg.segment, k):g}"
                                  for k in ("trigger_db", "release_db", "silence_s", "preroll_s", "tail_s",
                                            "min_level_dbfs", "speech_min_dbfs", "confirm_s", "max_call_s")}}
    r = tc.post("/settings/preview", f | form)
    body = r.get_data(as_text=True)
    assert r.status_code == 400
    assert "저장하지 않았습니다" in body or "숫자를 입력하십시오" in body
    assert label in body.split('id="error"')[1].split("</p>")[0]  # the message names the field
    key, typed = next(iter(form.items()))
    assert f'name="{key}" value="{typed}"' in body  # what was typed is kept
    assert 'class="error"' in body
    assert path.read_bytes() == before


def test_bad_line_name_and_group_named(page):
    tc, rec, path, _ = page
    before = path.read_bytes()
    r = tc.post("/settings/preview", _line_form(rec.cfg, **{"line.1.extension": "12-34"}))
    assert r.status_code == 400 and "2번 회선 내선" in r.get_data(as_text=True)
    r = tc.post("/settings/preview", {"section": "retention", "retention.default_days": "30", "group.0.name": "민원",
                                      "group.0.channels": "1, 9", "group.0.days": "90"})
    assert r.status_code == 400 and "보존 그룹 1 회선" in r.get_data(as_text=True)
    assert path.read_bytes() == before


def test_restart_keys_are_marked_and_a_stale_preview_is_refused(page):
    tc, rec, path, data = page
    r = tc.post("/settings/preview", {"section": "notice", "notice.enabled": "on", "notice.settle_ms": "80",
                                      "notice.max_wait_s": "10"})
    assert r.status_code == 200
    row = r.get_data(as_text=True).split('data-key="notice.settle_ms"')[1].split("</tr>")[0]
    assert "50" in row and "80" in row and "다시 시작 필요" in row
    path.write_text(path.read_text() + "\n[review]\nmany_searches = 30\n")  # someone else's change meanwhile
    theirs = path.read_bytes()
    r = _apply(tc, r)
    assert r.status_code == 409 and "바뀌었습니다" in r.get_data(as_text=True)
    assert path.read_bytes() == theirs
    assert any(e["action"] == "config.change" and e["outcome"] == "refused" for e in AuditLog(data).entries())


def test_disabled_line_records_no_call_and_shows_disabled(box):
    from firmware.hal.audio import ArraySource
    from firmware.index import CallIndex

    from .conftest import place_calls

    data, _ = box
    audio, _ = place_calls(8000, 40.0, [[(3.0, 12.0)], [(4.0, 12.0)]])
    cfg = parse_config(DOC | {"line": [{"channel": 0, "name": "민원실"},
                                       {"channel": 1, "name": "당직실", "enabled": False}]})
    rec = Recorder(cfg, data, source=ArraySource(audio, 8000, 160))
    rec.start()
    assert rec.wait(60)
    st = {ln["channel"]: ln for ln in rec.status()["lines"]}
    assert st[1]["enabled"] is False and st[1]["state"] == "disabled" and st[0]["enabled"] is True
    idx = CallIndex(data / "index.sqlite")
    lines = [c["line"] for c in idx.calls()]
    idx.close()
    assert lines == [0]  # the same audio on the disabled line opened no call


def test_disabling_a_line_on_the_page_is_flagged_in_the_review(page):
    tc, rec, path, data = page
    r = tc.post("/settings/preview", _line_form(rec.cfg, **{"line.1.enabled": None}))
    assert "2번 회선 녹음" in r.get_data(as_text=True) and "끔 · off" in r.get_data(as_text=True)
    assert _apply(tc, r).status_code == 200
    assert rec.status()["lines"][1]["enabled"] is False
    rv = review_day(AuditLog(data), dt.datetime.now(KST).date(), rec.cfg.review)
    assert any(f.kind == "line_disabled" and f.actor == "technician" for f in rv.flags)


def test_backup_restore_round_trip_and_a_tampered_backup_is_refused(page, tmp_path):
    tc, rec, path, data = page
    r = tc.get("/settings/backup")
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    blob = r.data
    assert blob.startswith(b"nokbox-config-backup 1\n") and "민원실".encode() in blob
    key = data / cf.BACKUP_KEY
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_bytes() not in blob
    # change the line name, then restore the backup: old → new shown, then applied
    r = tc.post("/settings/preview", _line_form(rec.cfg, **{"line.0.name": "임시"}))
    assert _apply(tc, r).status_code == 200 and rec.status()["lines"][0]["name"] == "임시"

    def upload(b):
        return tc.c.post("/settings/restore", data={"csrf": tc.csrf, "file": (io.BytesIO(b), "backup.nokbox-config")},
                         content_type="multipart/form-data", environ_base={"REMOTE_ADDR": tc.addr})

    r = upload(blob)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert 'data-key="line[channel=0].name"' in r.get_data(as_text=True)
    tc._keep(r)
    assert _apply(tc, r).status_code == 200
    assert rec.status()["lines"][0]["name"] == "민원실"
    before = path.read_bytes()
    for bad in (blob.replace("민원실".encode(), "민원과".encode()), b"[audio]\nchannels = 2\n", blob[:40]):
        r = upload(bad)
        assert r.status_code == 400 and "복원하지 않았습니다" in r.get_data(as_text=True)
    assert "서명이 맞지 않습니다" in upload(blob.replace(b"1234", b"9999")).get_data(as_text=True)
    assert path.read_bytes() == before
    acts = [(e["action"], e["outcome"]) for e in AuditLog(data).entries() if e["action"].startswith("config.")]
    assert ("config.backup", "ok") in acts and ("config.restore", "ok") in acts and ("config.restore", "refused") in acts


def test_a_backup_from_another_box_is_refused(page, tmp_path):
    tc, rec, path, data = page
    other = tmp_path / "other"
    other.mkdir()
    blob = cf.make_backup(other, path.read_bytes(), 0.0)
    with pytest.raises(cf.BackupRefused, match="이 장치에서 만든 백업이 아닙니다"):
        cf.open_backup(data, blob)


def test_roles_officer_cannot_open_auditor_cannot_change(page):
    tc, rec, path, data = page
    app = tc.c.application
    before = path.read_bytes()
    for who in ("officer", "auditor"):
        t = TC(app)
        t.sign_in(who, PASSWORD[who])
        assert t.get("/settings").status_code == 403
        assert t.get("/settings/backup").status_code == 403
        assert t.post("/settings/preview", {"section": "segment", "segment.trigger_db": "12"}).status_code == 403
        assert t.post("/settings/apply", {"doc": "", "digest": ""}).status_code == 403
    assert path.read_bytes() == before


def test_write_is_atomic_and_never_writes_an_invalid_document(tmp_path):
    p = tmp_path / "nokbox.toml"
    prop = cf.propose(p, {"segment.trigger_db": 12.0})
    assert prop.changes == {"segment.trigger_db": {"old": 10.0, "new": 12.0}} and prop.restart == []
    cf.write(prop)
    assert tomllib.loads(p.read_text())["segment"]["trigger_db"] == 12.0 and p.stat().st_mode & 0o777 == 0o640
    with pytest.raises(cf.SettingsInvalid) as exc:
        cf.propose(p, {"audio.channels": 0})
    assert exc.value.fields[0][0] == "audio.channels"
    assert [x.name for x in tmp_path.iterdir()] == ["nokbox.toml"]  # no temporary file left


def _recorded(data, size, days_ago, line=0):
    """A finished call of ``size`` bytes in the index, ``days_ago`` days back."""
    import time

    from firmware.index import CallIndex

    idx = CallIndex(data / "index.sqlite")
    cid, _ = idx.open_call(line, "민원실", time.time() - days_ago * 86400, 0, 8000, "opus", lambda i: f"calls/{i}.age")
    idx.finish_call(cid, 8000 * 60, size, "hangup", 0)
    idx.close()


def test_retention_section_projects_the_disk_days(page):
    import shutil

    tc, rec, path, data = page
    free = shutil.disk_usage(data).free
    _recorded(data, int(0.65 * free), 6.5)  # a tenth of the free disk a day, on line 1
    r = tc.post("/settings/preview", {"section": "retention", "retention.default_days": "30", "group.0.name": "민원",
                                      "group.0.channels": "1", "group.0.days": "10"})
    assert r.status_code == 200
    assert _apply(tc, r).status_code == 200
    body = tc.get("/settings").get_data(as_text=True)
    assert "일</strong>치 녹음을 담을 수 있습니다" in body
    fit = body.split('id="retention-fit"')[1].split("</table>")[0]
    assert "민원" in fit and "들어감 · fits" in fit
    r = tc.post("/settings/preview", {"section": "retention", "retention.default_days": "30", "group.0.name": "민원",
                                      "group.0.channels": "1", "group.0.days": "60"})
    assert _apply(tc, r).status_code == 200
    body = tc.get("/settings").get_data(as_text=True)
    assert "모자람 · does not fit" in body and "보존 기간 전체를 담을 공간이 없습니다" in body


def test_retention_fit_projects_disk_days():
    r = parse_config({"audio": {"channels": 2}, "retention": {"default_days": 30, "group": [
        {"name": "민원", "channels": [0], "days": 365}]}}).retention
    fit = cf.retention_fit({0: 1e6, 1: 2e6}, stored=0, free=int(100e6), reserve=0, retention=r, channels=[0, 1])
    assert fit["days"] == pytest.approx(100e6 / 3e6)
    assert [(g["name"], g["need"]) for g in fit["groups"]] == [("민원", 365e6), ("default", 60e6)]
    assert not fit["fits"]


@pytest.mark.browser
def test_browser_rename_live_and_bad_value_refused(box, tmp_path):
    import shutil

    from playwright.sync_api import sync_playwright

    from web import serve

    from .test_web import CHROMIUM_ARGS
    from .test_web_notice import sign_in

    data, _ = box
    path = tmp_path / "nokbox.toml"
    path.write_text(tomli_w.dumps(DOC))
    cfg = parse_config(DOC)
    make_people(data, cfg)
    rec = Recorder(cfg, data, config_path=path)
    rec.start()
    server = serve(rec, "127.0.0.1", 0, config_path=path)
    url = f"http://127.0.0.1:{server.port}/"
    free = shutil.disk_usage(data).free
    _recorded(data, int(0.05 * free), 6.5)
    shots = Path("build/screenshots/settings")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            pg = b.new_page(viewport={"width": 1280, "height": 900})
            sign_in(pg, url, "technician")
            pg.goto(url + "settings")
            pg.screenshot(path=str(shots / "settings.png"), full_page=True)
            pg.fill("#segment-trigger_db", "99")
            pg.click("#form-segment button[type=submit]")
            pg.wait_for_load_state()
            assert "통화 시작 감도" in pg.locator("#error").inner_text()
            assert pg.locator("#segment-trigger_db").input_value() == "99"
            pg.locator("#segment-trigger_db").scroll_into_view_if_needed()
            pg.screenshot(path=str(shots / "refused.png"))
            pg.goto(url + "settings")
            pg.fill("#line-0-name", "민원 상담실")
            pg.click("#form-lines button[type=submit]")
            pg.wait_for_load_state()
            assert "민원 상담실" in pg.locator("#changes").inner_text()
            pg.screenshot(path=str(shots / "confirm.png"), full_page=True)
            pg.click("#apply")
            pg.wait_for_load_state()
            assert "설정을 저장했습니다" in pg.locator("#message").inner_text()
            pg.goto(url)
            assert "민원 상담실" in pg.locator("main").inner_text()  # the status page, no restart
            pg.screenshot(path=str(shots / "status-after-rename.png"), full_page=True)
            b.close()
    finally:
        server.close()
        rec.stop()
    assert "민원 상담실" in path.read_text()


def test_segmenter_skips_a_disabled_line_and_resumes_when_enabled():
    """Segment level: line 2 switched off during its first call's time and on again before its second."""
    import queue

    from firmware.config import LineConfig
    from firmware.recording.pipeline import SegmenterWorker
    from firmware.recording.recorder import segment_params
    from firmware.recording.ring import LineRings

    from .conftest import place_calls

    rate = 8000
    audio, _ = place_calls(rate, 50.0, [[(3.0, 8.0), (28.0, 8.0)], [(3.0, 8.0), (28.0, 8.0)]])
    cfg = parse_config(DOC)
    rings = LineRings(2, rate * 60, rate, 0)
    out: queue.Queue = queue.Queue()
    sw = SegmenterWorker(rings, cfg.lines, segment_params(cfg, rate), out)
    sw.lines[1].cfg = LineConfig(channel=1, name="당직실", enabled=False)

    def feed(a, b):
        for s in range(a, b, 160):
            rings.write(audio[s:min(b, s + 160)], [0, 1])
            while sw.step():
                pass

    feed(0, 22 * rate)
    assert sw.lines[1].call_key is None and sw.lines[1].paused
    sw.lines[1].cfg = LineConfig(channel=1, name="당직실", enabled=True)  # what a reload does
    feed(22 * rate, len(audio))
    rings.eof = True
    while not sw.finished():
        sw.step()
    opened = []
    while not out.empty():
        item = out.get()
        if item[0] == "open":
            opened.append((item[2], round(item[3] / rate)))
    assert len([t for ln, t in opened if ln == 0]) == 2
    line2 = [t for ln, t in opened if ln == 1]
    assert len(line2) == 1 and line2[0] > 22  # only the call after it was enabled again
