"""The auditor's daily review: the day's lookups per person, what needs attention, sign-off.

Reads the audit log only. A day is a calendar day in Korea (KST). Sign-offs are themselves
audit entries (``review.signoff``), so the record of who reviewed what is as tamper-evident
as what they reviewed.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ..audit import AuditLog, parse_utc
from ..config import ReviewConfig

KST = ZoneInfo("Asia/Seoul")
SIGNOFF = "review.signoff"

# Actions that look at recordings or their metadata (the request workflow writes them).
LOOKUPS = {
    "request.search": "검색 · search",
    "request.view": "신청 열람 · request viewed",
    "request.play": "재생(열람) · playback",
    "request.export": "내보내기(제공) · export",
    "call.play": "재생(열람) · playback",
    "call.view": "조회 · view",
    "ledger.view": "관리대장 조회 · ledger",
}
FLAG_LABELS = {
    "outside_hours": "근무시간 외 조회 · lookup outside office hours",
    "many_searches": "과다 검색 · many searches",
    "no_request": "신청 없는 검색 · search without a request",
    "pin_failure": "PIN 실패 · PIN failure",
    "notice_disabled": "고지 안내 꺼짐 · notice disabled",
    "line_disabled": "회선 녹음 꺼짐 · line recording disabled",
    "lockout": "계정 잠김 · account locked",
    "denied": "권한 없는 접근 시도 · refused access",
    "user_change": "계정·권한 변경 · account or role change",
    "other_parties": "다른 사람의 통화가 검색됨 · a search returned other parties' calls",
    "resubmitted": "반려 후 재신청 · resubmitted after a rejection",
    "export_outside_hours": "근무시간 외 제공 · export outside office hours",
}
_USER_CHANGES = {"user.create", "user.roles", "user.restrict", "user.disable", "user.enable", "user.password",
                 "user.unlock", "user.setup"}


@dataclass
class Flag:
    kind: str
    actor: str
    seq: int
    time_local: str
    text: str

    @property
    def label(self) -> str:
        return FLAG_LABELS[self.kind]


@dataclass
class DayReview:
    day: dt.date
    people: dict[str, Counter] = field(default_factory=dict)
    lookups: list[dict] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    events: int = 0
    signoff: dict | None = None


def local_day(entry: dict) -> dt.date:
    return parse_utc(entry["time_utc"]).astimezone(KST).date()


def _hm(s: str) -> dt.time:
    h, m = s.split(":")
    return dt.time(int(h), int(m))


def _notice_off(e: dict) -> bool:
    if e["action"] == "notice.disabled":
        return True
    if e["action"] == "notice.mode" and isinstance(e["detail"], dict) and e["detail"].get("new") == "off":
        return True  # a line's notice switched off on the page or with `nokbox notice mode`
    if e["action"].startswith("config.") and isinstance(e["detail"], dict):
        for key, change in (e["detail"].get("changes") or {}).items():
            new = change.get("new") if isinstance(change, dict) else change
            if "notice" in key and new in (False, "off", "disabled", 0):
                return True
    return False


def _line_off(e: dict) -> bool:
    """A line's recording switched off (``line[].enabled`` new false): by the settings page (keys by
    channel, ``line[channel=2].enabled``) or a reload of a hand-edited file (the whole ``line`` list)."""
    if not (e["action"].startswith("config.") and isinstance(e["detail"], dict)):
        return False
    for key, change in (e["detail"].get("changes") or {}).items():
        if not isinstance(change, dict):
            continue
        if key.startswith("line[") and key.endswith(".enabled") and change.get("new") is False:
            return True
        if key == "line" and isinstance(change.get("new"), list):
            was = {ln.get("channel"): ln.get("enabled", True) for ln in change.get("old") or [] if isinstance(ln, dict)}
            if any(isinstance(ln, dict) and ln.get("enabled", True) is False and was.get(ln.get("channel"), True)
                   for ln in change["new"]):
                return True
    return False


def review_day(log: AuditLog, day: dt.date, cfg: ReviewConfig) -> DayReview:
    """Everything the auditor needs for one day."""
    rv = DayReview(day=day)
    people: dict[str, Counter] = defaultdict(Counter)
    start, end = _hm(cfg.office_start), _hm(cfg.office_end)
    for e in log.entries():
        if e["action"] == SIGNOFF and e["object"] == day.isoformat() and e["outcome"] == "ok":
            rv.signoff = e
        local = parse_utc(e["time_utc"]).astimezone(KST)
        if local.date() != day:
            continue
        rv.events += 1
        t = local.strftime("%H:%M:%S")

        def flag(kind: str, text: str = "", e=e, t=t) -> None:
            rv.flags.append(Flag(kind, e["actor"], e["seq"], t, text or e["action"]))

        if e["action"] in LOOKUPS:
            people[e["actor"]][e["action"]] += 1
            rv.lookups.append(e | {"time_local": t, "label": LOOKUPS[e["action"]]})
            detail = e["detail"] if isinstance(e["detail"], dict) else {}
            outside = local.weekday() not in cfg.office_days or not start <= local.time() < end
            if outside:
                flag("outside_hours", f"{LOOKUPS[e['action']]} {e['object']}")
                if e["action"] == "request.export":
                    flag("export_outside_hours", e["object"])
            named = (e["object"] or "").startswith("request:") and e["object"] != "request:-"
            if e["action"] == "request.search" and not (named or detail.get("request")):
                flag("no_request", e["object"] or "")
            if e["action"] == "request.search" and detail.get("other_parties"):
                flag("other_parties", f"{e['object']}: {detail['other_parties']} / {detail.get('results')}")
        elif e["action"] == "request.submit" and isinstance(e["detail"], dict) and e["detail"].get("after_rejection"):
            flag("resubmitted", f"{e['object']} (반려 · rejected: {', '.join(e['detail']['after_rejection'])})")
        elif e["action"] in ("auth.pin_failure", "auth.pin_locked"):
            flag("pin_failure", e["reason"])
        elif e["action"] in ("keys.unlock", "keys.pin.lockout") and e["outcome"] in ("denied", "locked") and \
                "PIN" in (e["reason"] or "") + (e["object"] or "").replace("pin-slot", "PIN"):
            flag("pin_failure", f"{e['object']}: {e['reason']}")
        elif e["action"] == "auth.lockout":
            flag("lockout", e["reason"])
        elif e["action"] == "access.denied":
            flag("denied", f"{e['object']} ({e['reason']})")
        elif e["action"] in _USER_CHANGES and e["outcome"] == "ok":
            flag("user_change", f"{e['action']} {e['object']} {e['reason']}".strip())
        if _notice_off(e):
            flag("notice_disabled", e["reason"] or e["action"])
        if _line_off(e):
            flag("line_disabled", e["reason"] or e["action"])
    for actor, counts in people.items():
        if counts["request.search"] > cfg.many_searches:
            rv.flags.append(Flag("many_searches", actor, 0, "", f"{counts['request.search']} > {cfg.many_searches}"))
    rv.people = dict(sorted(people.items()))
    return rv


def overdue_days(log: AuditLog, today: dt.date, limit: int = 366) -> list[dt.date]:
    """Past days (since the log began, at most ``limit`` back) that nobody signed off, newest first."""
    first: dt.date | None = None
    signed: set[str] = set()
    for e in log.entries():
        d = local_day(e)
        if first is None or d < first:  # the earliest day, even if the clock once stepped back
            first = d
        if e["action"] == SIGNOFF and e["outcome"] == "ok":
            signed.add(e["object"])
    if first is None:
        return []
    out = []
    d = today - dt.timedelta(days=1)
    while d >= first and len(out) < limit and (today - d).days <= limit:
        if d.isoformat() not in signed:
            out.append(d)
        d -= dt.timedelta(days=1)
    return out
