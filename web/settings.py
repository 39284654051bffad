"""Every setting on the page (technician): lines, segmentation, retention with the disk days, the
notice service, time, remote syslog, network (read only); and the signed backup and restore.

A change is validated with the schema ``check-config`` uses (``firmware/configfile.py``); a bad
value is refused on the form, naming the field, and nothing is written. A good one is shown as
old → new first; applying it writes the file atomically (refused when the file changed since the
preview), asks the recorder to reload, and is audited (``config.change``)."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for

from firmware import configfile as cf
from firmware.config import NokboxConfig, RetentionGroup, SegmentConfig
from firmware.errors import ConfigError
from firmware.ipc import IpcError

from .auth import ext, requires, source

bp = Blueprint("settings", __name__)

SEGMENT_FIELDS = {
    "trigger_db": ("통화 시작 감도", "Speech trigger", "dB",
                   "잡음보다 이만큼 커야 말소리로 봅니다. 작을수록 민감합니다"),
    "release_db": ("통화 유지 감도", "Activity release", "dB",
                   "잡음보다 이만큼 크면 통화가 이어지는 것으로 봅니다 (시작 감도 이하)"),
    "silence_s": ("종료 무음 시간", "Silence to end", "초 · s", "이만큼 조용하면 통화가 끝난 것으로 봅니다"),
    "preroll_s": ("앞부분 보존", "Pre-roll", "초 · s", "첫 소리 전에 함께 저장하는 시간 (첫 음절을 놓치지 않게)"),
    "tail_s": ("뒷부분 보존", "Tail", "초 · s", "마지막 소리 뒤에 함께 저장하는 시간"),
    "min_level_dbfs": ("최저 활동 크기", "Activity floor", "dBFS", "이보다 작은 소리는 활동으로 세지 않습니다"),
    "speech_min_dbfs": ("최저 말소리 크기", "Speech floor", "dBFS",
                        "이보다 작은 소리는 말소리로 보지 않습니다 (옆 회선 누화)"),
    "confirm_s": ("시작 확인 시간", "Confirm window", "초 · s",
                  "딸깍 소리 같은 첫 신호가 말소리·신호음으로 확인되기까지 기다리는 최대 시간"),
    "max_call_s": ("최대 통화 길이", "Longest call", "초 · s", "이보다 긴 통화는 나누어 새 통화로 저장합니다"),
}
NOTICE_FIELDS = {
    "settle_ms": ("릴레이 안정 대기", "Relay settle", "ms", "릴레이가 닫힌 뒤 안내를 틀기 전 기다리는 시간"),
    "max_wait_s": ("안내 최대 대기", "Longest wait", "초 · s",
                   "이 안에 안내를 시작하지 못하면 포기하고 '출력 사용 중'으로 기록합니다"),
}
RETENTION_FIELDS = {"default_days": ("기본 보존 기간", "Default retention", "일 · days",
                                     "그룹에 들지 않은 회선의 녹음을 보관하는 기간 (이천시 조례 제8조: 30일)")}
SYSLOG_FIELDS = {
    "syslog_host": ("원격 syslog 서버", "Remote syslog server", "", "감사 기록의 봉인 지점을 보낼 서버 (TLS); 비우면 보내지 않음"),
    "syslog_port": ("포트", "Port", "", "TLS syslog 포트"),
    "syslog_ca": ("CA 인증서 파일", "CA file", "", "서버 인증서를 서명한 CA 파일의 경로; 비우면 시스템 CA"),
}
LINE_FIELDS = {"name": ("이름", "Name"), "extension": ("내선", "Extension"), "notice": ("안내 방식", "Notice"),
               "enabled": ("녹음", "Recording")}
NOTICE_MODES = ("on", "beep", "off")
SECTIONS = ("lines", "segment", "retention", "notice", "time", "syslog")


def _bounds(model, name: str) -> tuple[float | None, float | None]:
    ge = le = None
    for m in model.model_fields[name].metadata:
        ge = getattr(m, "ge", ge)
        le = getattr(m, "le", le)
    return ge, le


def _range_text(model, name: str, unit: str = "") -> str:
    ge, le = _bounds(model, name)
    unit = f" {unit}" if unit else ""
    if ge is not None and le is not None:
        return f"{ge:g} – {le:g}{unit}"
    return ""


def _who() -> dict:
    return {"actor": g.user.name, "role": "technician", "source": source()}


def _path() -> Path | None:
    p = current_app.config.get("CONFIG_PATH")
    return Path(p) if p else None


def _current() -> NokboxConfig:
    """The file's configuration now (the page's running one when there is no file to read)."""
    p = _path()
    if p is None:
        return ext().cfg
    try:
        return cf.validate(cf.parse_document(cf.read_raw(p), str(p)), str(p))
    except ConfigError:
        return ext().cfg


# -- what the page shows -----------------------------------------------------------------------
def _values(cfg: NokboxConfig) -> dict:
    """The form's values from a configuration (what was typed replaces them after a refusal)."""
    v: dict = {}
    for ln in cfg.lines:
        c = ln.channel
        v[f"line.{c}.name"], v[f"line.{c}.extension"] = ln.name, ln.extension
        v[f"line.{c}.notice"], v[f"line.{c}.enabled"] = ln.notice, "on" if ln.enabled else ""
    for k in SEGMENT_FIELDS:
        v[f"segment.{k}"] = f"{getattr(cfg.segment, k):g}"
    v["retention.default_days"] = str(cfg.retention.default_days)
    for i, grp in enumerate(cfg.retention.group):
        v[f"group.{i}.name"], v[f"group.{i}.days"] = grp.name, str(grp.days)
        v[f"group.{i}.channels"] = ", ".join(str(c + 1) for c in grp.channels)
    v["notice.enabled"] = "on" if cfg.notice.enabled else ""
    for k in NOTICE_FIELDS:
        v[f"notice.{k}"] = f"{getattr(cfg.notice, k):g}"
    v["time.ntp_servers"] = "\n".join(cfg.time.ntp_servers)
    v["time.timezone"] = cfg.time.timezone
    v["audit.syslog_host"] = cfg.audit.syslog_host or ""
    v["audit.syslog_port"] = str(cfg.audit.syslog_port)
    v["audit.syslog_ca"] = cfg.audit.syslog_ca or ""
    return v


def _clock_state() -> dict:
    """``timedatectl show`` where systemd runs; else unknown."""
    exe = shutil.which("timedatectl")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe, "show"], capture_output=True, text=True, timeout=3).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)


def _network() -> list[dict]:
    import socket

    import psutil

    rows = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        ips = [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
        rows.append({"name": name, "addresses": ips})
    return rows


def _disk(cfg: NokboxConfig) -> dict:
    """Bytes a day per line over the last week (the call index) against the free disk."""
    data = Path(ext().data_dir)
    try:
        du = shutil.disk_usage(data)
    except OSError:
        return {}
    per, stored = {}, 0
    db = data / "index.sqlite"
    if db.exists():
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
            try:
                since = dt.datetime.fromtimestamp(time.time() - 7 * 86400, dt.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%S")
                row = con.execute("SELECT MIN(start_utc), COALESCE(SUM(size), 0) FROM calls").fetchone()
                stored = int(row[1] or 0)
                first = con.execute("SELECT MIN(start_utc) FROM calls WHERE start_utc >= ?", (since,)).fetchone()[0]
                if first:
                    t0 = dt.datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
                    days = max(time.time() - t0, 3600.0) / 86400
                    for line, size in con.execute("SELECT line, SUM(size) FROM calls WHERE start_utc >= ? "
                                                  "GROUP BY line", (since,)):
                        per[int(line)] = float(size or 0) / days
            finally:
                con.close()
        except sqlite3.Error:
            pass
    fit = cf.retention_fit(per, stored, du.free, cfg.retention.disk_full_free_mb * 1024 * 1024, cfg.retention,
                           [ln.channel for ln in cfg.lines])
    return fit | {"free": du.free, "total": du.total, "stored": stored}


def _page(values: dict | None = None, errors: dict | None = None, error: str = "", message: str = "",
          code: int = 200, cfg: NokboxConfig | None = None):
    cfg = cfg or _current()
    path = _path()
    clock = _clock_state()
    return render_template(
        "settings.html", cfg=cfg, v=values or _values(cfg), errors=errors or {}, error=error, message=message,
        path=path, writable=path is not None, lines=cfg.lines, groups=max(len(cfg.retention.group), 0) + 1,
        segment=[(k, *t, _range_text(SegmentConfig, k)) for k, t in SEGMENT_FIELDS.items()],
        notice=[(k, *t, _range_text(type(cfg.notice), k)) for k, t in NOTICE_FIELDS.items()],
        days_range=_range_text(type(cfg.retention), "default_days", "일 · days"),
        group_days_range=_range_text(RetentionGroup, "days", "일 · days"),
        port_range=_range_text(type(cfg.audit), "syslog_port"), syslog=SYSLOG_FIELDS,
        clock=clock, network=_network(), disk=_disk(cfg), notice_modes=NOTICE_MODES,
        backup_key=cf.backup_key_id(ext().data_dir) if (Path(ext().data_dir) / cf.BACKUP_KEY).exists() else ""), code


@bp.get("/settings")
@requires("config.view")
def index():
    msg = {"applied": "설정을 저장하고 적용했습니다 · settings saved and applied"}.get(request.args.get("ok", ""), "")
    return _page(message=msg)


@bp.get("/settings/lines")
@requires("config.view")
def lines():
    """The line map's link: the lines section of the settings page."""
    return redirect(url_for("settings.index") + "#lines")


# -- reading the form --------------------------------------------------------------------------
class _FormError(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message


def _number(form, name: str, kind=float):
    text = form.get(name, "").strip()
    try:
        return kind(text)
    except ValueError:
        raise _FormError(name, "숫자를 입력하십시오 · enter a number") from None


def _changes(section: str, form, cfg: NokboxConfig) -> dict:
    """The change set (dotted keys) a section's form asks for."""
    if section == "lines":
        old = {ln.channel: ln for ln in cfg.lines}
        out = []
        for c in sorted(old):
            entry = old[c].model_dump(exclude_none=True)
            entry.update(name=form.get(f"line.{c}.name", "").strip(), extension=form.get(f"line.{c}.extension", "").strip(),
                         notice=form.get(f"line.{c}.notice", ""), enabled=form.get(f"line.{c}.enabled") == "on")
            out.append(entry)
        return {"line": out}
    if section == "segment":
        return {f"segment.{k}": _number(form, f"segment.{k}") for k in SEGMENT_FIELDS}
    if section == "retention":
        groups = []
        for i in range(len(cfg.retention.group) + 1):
            name = form.get(f"group.{i}.name", "").strip()
            if not name:
                continue  # an empty name removes the group (the last row adds one)
            chans = []
            for part in form.get(f"group.{i}.channels", "").replace(",", " ").split():
                if not part.isdigit() or not 1 <= int(part) <= 32:
                    raise _FormError(f"group.{i}.channels", "회선 번호(1부터)를 쉼표로 나누어 쓰십시오 · line numbers "
                                                            "from 1, separated by commas")
                chans.append(int(part) - 1)
            groups.append({"name": name, "channels": chans, "days": _number(form, f"group.{i}.days", int)})
        return {"retention.default_days": _number(form, "retention.default_days", int), "retention.group": groups}
    if section == "notice":
        return {"notice.enabled": form.get("notice.enabled") == "on",
                **{f"notice.{k}": _number(form, f"notice.{k}", int if k == "settle_ms" else float)
                   for k in NOTICE_FIELDS}}
    if section == "time":
        return {"time.ntp_servers": [s.strip() for s in form.get("time.ntp_servers", "").split() if s.strip()],
                "time.timezone": form.get("time.timezone", "").strip()}
    if section == "syslog":
        return {"audit.syslog_host": form.get("audit.syslog_host", "").strip() or None,
                "audit.syslog_port": _number(form, "audit.syslog_port", int),
                "audit.syslog_ca": form.get("audit.syslog_ca", "").strip() or None}
    raise _FormError("", "알 수 없는 설정 묶음입니다 · unknown settings section")


def _field_of(key: str, doc: dict) -> str:
    """The form field of a schema key (``line[2].name`` → ``line.<its channel>.name``)."""
    import re

    m = re.match(r"^line\[(\d+)\]\.?(\w*)", key)
    if m:
        lines = doc.get("line") or []
        i = int(m.group(1))
        ch = lines[i].get("channel", i) if i < len(lines) else i
        return f"line.{ch}.{m.group(2) or 'name'}"
    m = re.match(r"^retention\.group\[(\d+)\]\.?(\w*)", key)
    if m:
        return f"group.{m.group(1)}.{m.group(2) or 'name'}"
    return key


def label_of(field: str) -> str:
    """Korean · English name of a form field or a config key, for messages and the confirmation."""
    import re

    m = re.match(r"^line(?:\.|\[channel=)(\d+)\]?\.(\w+)$", field)
    if m:
        ko, en = LINE_FIELDS.get(m.group(2), (m.group(2), m.group(2)))
        n = int(m.group(1)) + 1
        return f"{n}번 회선 {ko} · line {n} {en.lower()}"
    m = re.match(r"^(?:group\.|retention\.group\[)(\d+)\]?\.(\w+)$", field)
    if m:
        ko = {"name": "이름", "channels": "회선", "days": "보존 기간"}.get(m.group(2), m.group(2))
        return f"보존 그룹 {int(m.group(1)) + 1} {ko} · retention group {int(m.group(1)) + 1} {m.group(2)}"
    section, _, name = field.partition(".")
    table = {"segment": SEGMENT_FIELDS, "notice": NOTICE_FIELDS, "retention": RETENTION_FIELDS,
             "audit": SYSLOG_FIELDS}.get(section, {})
    if name in table:
        return f"{table[name][0]} · {table[name][1]}"
    return {"notice.enabled": "안내 방송 전체 · notice service", "time.ntp_servers": "NTP 서버 · NTP servers",
            "time.timezone": "시간대 · time zone", "retention.group": "보존 그룹 · retention groups"}.get(field, field)


@bp.post("/settings/preview")
@requires("config.edit")
def preview():
    """A section's form: refused on the form (field named, typed values kept), or old → new to confirm."""
    form = request.form
    section = form.get("section", "")
    cfg = _current()
    typed = _values(cfg) | {k: v for k, v in form.items() if k not in ("csrf", "section")}
    boxes = {"lines": "line.", "notice": "notice."}.get(section)
    for key in list(typed):  # an unticked box is absent from the form
        if boxes and key.startswith(boxes) and key.endswith(".enabled") and key not in form:
            typed[key] = ""
    path = _path()
    if path is None:
        return _page(typed, error="설정 파일이 지정되지 않아 바꿀 수 없습니다 (--config) · no config file to write "
                                  "(start with --config)", code=409)
    if section not in SECTIONS:
        return _page(typed, error="알 수 없는 설정 묶음입니다 · unknown settings section", code=400)
    try:
        changes = _changes(section, form, cfg)
        prop = cf.propose(path, changes)
    except _FormError as exc:
        return _page(typed, {exc.field: exc.message}, error=f"{label_of(exc.field)}: {exc.message}", code=400)
    except cf.SettingsInvalid as exc:
        doc = cf.apply_changes(cf.parse_document(cf.read_raw(path)), changes)
        errs = {}
        for key, msg in exc.fields:
            errs.setdefault(_field_of(key, doc), msg)
        named = "; ".join(f"{label_of(k)}: {m}" for k, m in errs.items())
        return _page(typed, errs, error=f"저장하지 않았습니다. 값을 고치십시오 · nothing was saved; correct: {named}",
                     code=400)
    except ConfigError as exc:
        return _page(typed, error=f"설정 파일을 읽을 수 없습니다 · the config file cannot be read: {exc}", code=409)
    return _confirm(prop, "page")


def _confirm(prop: cf.Proposal, how: str):
    rows = [{"key": k, "label": label_of(k), "old": _show(c["old"]), "new": _show(c["new"]),
             "restart": cf.needs_restart(k)} for k, c in prop.changes.items()]
    return render_template("settings_confirm.html", rows=rows, doc=prop.text(), digest=prop.base_digest,
                           how=how, path=prop.path, message="", error="")


def _show(value) -> str:
    if value is True:
        return "켬 · on"
    if value is False:
        return "끔 · off"
    if value is None or value == "" or value == []:
        return "(없음 · none)"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


@bp.post("/settings/apply")
@requires("config.edit")
def apply():
    """Write the previewed document (refused when the file changed since), reload, audit."""
    import tomllib

    form = request.form
    path = _path()
    how = "restore" if form.get("how") == "restore" else "page"
    if path is None:
        return _page(error="설정 파일이 지정되지 않아 바꿀 수 없습니다 · no config file to write", code=409)
    try:
        doc = tomllib.loads(form.get("doc", ""))
        prop = cf.propose(path, doc=doc)
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        return _page(error=f"저장하지 않았습니다 · nothing was saved: {exc}", code=400)
    prop.base_digest = form.get("digest", "")
    try:
        cf.write(prop)
    except cf.StaleConfig:
        ext().audit.append("config.change", **_who(), obj=str(path), outcome="refused",
                           reason="the file changed since the preview")
        return _page(error="미리 보기 뒤에 설정 파일이 바뀌었습니다 (다른 사람이 바꿨을 수 있습니다). 저장하지 않았습니다; "
                           "다시 확인하십시오 · the config file changed since the preview (someone else may have "
                           "changed it); nothing was saved, check again", code=409)
    except OSError as exc:
        return _page(error=f"설정 파일을 쓸 수 없습니다 · cannot write the config file ({exc.strerror})", code=500)
    restart = prop.restart
    ext().audit.append("config.restore" if how == "restore" else "config.change", **_who(), obj=str(path),
                       outcome="ok", reason="settings page" if how == "page" else "restored from a signed backup",
                       detail={"changes": prop.changes, "restart": restart})
    ext().cfg = prop.cfg
    note = _reload()
    message = "설정을 저장했습니다 · settings saved. " + note
    if restart:
        message += (" 다시 시작해야 적용되는 항목 · takes effect after a restart: "
                    + ", ".join(label_of(k) for k in restart))
    return _page(message=message, cfg=prop.cfg)


def _reload() -> str:
    rec = current_app.config["RECORDER"]
    try:
        if hasattr(rec, "client"):  # the recorder process, over its socket
            res = rec.reload(actor=g.user.name, role="technician")
            ok, err = res.get("reloaded"), res.get("error", "")
        else:  # an in-process recorder (tests, `nokbox serve`)
            ok = rec.reload(_path())
            err = getattr(rec, "config_error", "")
    except IpcError as exc:
        return f"녹음기에 알리지 못했습니다; 녹음기가 다시 시작하면 적용됩니다 · the recorder was not told ({exc.message})"
    if ok:
        return "녹음기가 새 설정을 읽었습니다 · the recorder reloaded."
    return f"녹음기가 새 설정을 거부하고 기존 설정을 유지합니다 · the recorder refused the file: {err}"


# -- backup and restore ------------------------------------------------------------------------
@bp.get("/settings/backup")
@requires("config.view")
def backup():
    """The config file with this box's Ed25519 signature (never a key)."""
    path = _path()
    raw = cf.read_raw(path) if path else None
    if raw is None:
        raw = cf.HEADER.encode()  # built-in defaults: an empty document
    blob = cf.make_backup(ext().data_dir, raw, time.time())
    ext().audit.append("config.backup", **_who(), obj=str(path or "built-in defaults"), outcome="ok",
                       detail={"sha256": cf.digest(raw), "key": cf.backup_key_id(ext().data_dir)})
    name = f"nokbox-config-{dt.datetime.now().strftime('%Y%m%d-%H%M')}.nokbox-config"
    return Response(blob, mimetype="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.post("/settings/restore")
@requires("config.edit")
def restore():
    """An uploaded backup: refused unless this box signed it and it validates; else old → new."""
    path = _path()
    if path is None:
        return _page(error="설정 파일이 지정되지 않아 복원할 수 없습니다 · no config file to write", code=409)
    up = request.files.get("file")
    if up is None or not up.filename:
        return _page(error="백업 파일을 고르십시오 · choose a backup file", code=400)
    blob = up.read(cf_limit() + 1)
    try:
        if len(blob) > cf_limit():
            raise cf.BackupRefused("백업 파일이 너무 큽니다 · the file is too large for a configuration backup")
        doc = cf.open_backup(ext().data_dir, blob)
        prop = cf.propose(path, doc=doc)
    except cf.BackupRefused as exc:
        ext().audit.append("config.restore", **_who(), obj=str(path), outcome="refused", reason=str(exc)[:200])
        return _page(error=f"복원하지 않았습니다 · not restored: {exc}", code=400)
    except cf.SettingsInvalid as exc:
        ext().audit.append("config.restore", **_who(), obj=str(path), outcome="refused", reason="invalid config")
        return _page(error=f"백업 안의 설정이 올바르지 않아 복원하지 않았습니다 · the configuration in the backup is not "
                           f"valid; not restored: {exc}", code=400)
    except ConfigError as exc:
        return _page(error=f"설정 파일을 읽을 수 없습니다 · the config file cannot be read: {exc}", code=409)
    return _confirm(prop, "restore")


def cf_limit() -> int:
    return 128 * 1024
