"""People, roles and sign-in: accounts, Argon2id passwords and PINs, lockout, server-side sessions.

Everything lives in ``DATA/accounts.sqlite`` (WAL; one connection per call, so threads and
processes share it safely). Every decision that matters is written to the audit log.
Wall-clock times (lock expiry, idle sign-out) come from ``self.clock`` so tests can move time.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..audit import AuditLog
from ..config import AuthConfig, share_sqlite
from ..errors import NokboxError
from ..hal.clock import Clock

log = logging.getLogger(__name__)

ROLES = ("admin", "technician", "officer", "approver", "auditor")
ROLE_LABELS = {
    "admin": "계정 관리자 · Account administrator",
    "technician": "기술 담당 · Technician",
    "officer": "녹취정보 담당 · Records officer",
    "approver": "승인권자 · Approver",
    "auditor": "감사 담당 · Auditor",
}
STATES = ("active", "restricted", "disabled")
_ALL = frozenset(ROLES)

# What each role may do (mission.md, "Who uses it"). The request workflow arrives later; its
# permissions are defined here so that the separation of duties is settled now.
PERMISSIONS: dict[str, frozenset[str]] = {
    "status.view": _ALL,            # live status: no personal data
    "account.self": _ALL,           # change one's own password
    "health.view": _ALL,            # the health page and the alarm banner: no personal data
    "alarms.ack": frozenset({"technician", "admin"}),  # acknowledge an alarm (audited)
    # /metrics with a session, and a new scrape token for central monitoring (audited)
    "metrics.view": frozenset({"technician", "admin"}),
    "users.manage": frozenset({"admin"}),
    "config.view": frozenset({"technician"}),
    "config.edit": frozenset({"technician"}),
    # the day's call list: metadata (time, line, duration, notice, hold), no numbers
    "calls.list": frozenset({"technician", "approver", "auditor"}),
    # masked numbers (010-****-5678) in that list: the oversight roles. The officer sees them
    # only inside an entered request (request.search), never in a free list (seed 000).
    "numbers.masked": frozenset({"approver", "auditor"}),
    # the release workflow's requests and ledger (personal details inside are opened by the keeper,
    # which decides per request: its officer, its approvers once submitted, the auditor)
    "requests.view": frozenset({"officer", "approver", "auditor"}),
    "ledger.view": frozenset({"officer", "approver", "auditor"}),
    "request.create": frozenset({"officer"}),
    "request.search": frozenset({"officer"}),    # only within an entered request
    "call.play": frozenset({"officer"}),         # viewing (열람) within an approved request
    "request.export": frozenset({"officer"}),    # provision (제공) after approval
    "request.approve": frozenset({"approver"}),  # never one's own request
    "request.reject": frozenset({"approver"}),
    "approver.pin": frozenset({"approver"}),
    "audit.review": frozenset({"auditor"}),
    "audit.signoff": frozenset({"auditor"}),
    "audit.verify": frozenset({"auditor"}),
    "audit.export": frozenset({"auditor"}),
}
# Permissions that decide on someone's request: refused when the actor filed it.
_DECIDE_ON_REQUEST = frozenset({"request.approve", "request.reject"})
# What a restricted account (seed 001 art. 9) keeps.
_RESTRICTED_KEEPS = frozenset({"status.view", "account.self"})


class AuthError(NokboxError, PermissionError):
    """Sign-in, session or permission refused; ``reason`` is a short machine word."""

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


class PasswordPolicyError(NokboxError, ValueError):
    """A new password or PIN does not meet the policy; the message says why (Korean · English)."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    display: str
    roles: tuple[str, ...]
    state: str
    state_reason: str
    locked_until: float
    pin_set: bool
    pin_locked: bool

    def acting_role(self, perm: str) -> str:
        """The role under which this user exercises ``perm`` (for the audit entry)."""
        allowed = PERMISSIONS.get(perm, frozenset())
        for r in self.roles:
            if r in allowed:
                return r
        return ",".join(self.roles) or "-"


def can(user: User | None, perm: str, *, request_owner: str | None = None) -> bool:
    """May ``user`` do ``perm``? An officer never decides on their own request."""
    if user is None or perm not in PERMISSIONS:
        return False
    if user.state == "disabled":
        return False
    if user.state == "restricted" and perm not in _RESTRICTED_KEEPS:
        return False
    if perm in _DECIDE_ON_REQUEST and request_owner is not None and request_owner == user.name:
        return False
    return any(r in PERMISSIONS[perm] for r in user.roles)


# -- password policy --------------------------------------------------------------------------
@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    text = resources.files("firmware.data").joinpath("common-passwords.txt").read_text(encoding="utf-8")
    return frozenset(w for w in text.splitlines() if w and not w.startswith("#"))


def password_problems(password: str, name: str = "", min_length: int = 12) -> list[str]:
    """Why ``password`` is refused (empty when it is acceptable). ASVS 2.1: length and breach list,
    no composition rules."""
    problems = []
    if len(password) < min_length:
        problems.append(f"{min_length}자 이상이어야 합니다 · must be at least {min_length} characters")
    if len(password) > 128:
        problems.append("128자 이하여야 합니다 · must be at most 128 characters")
    low = password.lower()
    common = common_passwords()
    base = re.sub(r"[0-9!@#$%^&*.?_\-]{1,4}$", "", low)
    if low in common or (base != low and base in common) or (len(set(low)) <= 2):
        problems.append("흔하거나 유출된 비밀번호입니다 · is a common or breached password")
    elif name and len(name) >= 3 and name.lower() in low:
        problems.append("계정 이름을 포함할 수 없습니다 · must not contain the account name")
    return problems


def pin_problems(pin: str) -> list[str]:
    problems = []
    if not re.fullmatch(r"[0-9]{6,12}", pin):
        problems.append("PIN은 숫자 6~12자리입니다 · a PIN is 6 to 12 digits")
    elif len(set(pin)) == 1 or pin in "01234567890123" or pin in "98765432109876" or pin in common_passwords():
        problems.append("추측하기 쉬운 PIN입니다 · the PIN is easy to guess")
    return problems


def hasher(cfg: AuthConfig) -> PasswordHasher:
    return PasswordHasher(time_cost=cfg.argon2_time_cost, memory_cost=cfg.argon2_memory_kib,
                          parallelism=cfg.argon2_parallelism, hash_len=32, salt_len=16, type=Type.ID)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    display TEXT NOT NULL DEFAULT '',
    roles TEXT NOT NULL,
    pw_hash TEXT NOT NULL,
    pin_hash TEXT,                    -- unused since the keeper's PIN slots hold the one approver PIN
    state TEXT NOT NULL DEFAULT 'active',
    state_reason TEXT NOT NULL DEFAULT '',
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0,
    lockouts INTEGER NOT NULL DEFAULT 0,
    pin_failures INTEGER NOT NULL DEFAULT 0,
    pin_locked INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    changed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    source TEXT NOT NULL,
    ended REAL,
    end_reason TEXT
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_id);
"""


@dataclass(frozen=True)
class Session:
    id_hash: str
    user_id: int
    csrf: str
    created: float
    last_seen: float
    source: str


class Accounts:
    """The accounts of one data directory."""

    def __init__(self, data_dir: Path, cfg: AuthConfig | None = None, audit: AuditLog | None = None,
                 clock: Clock | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "accounts.sqlite"
        self.cfg = cfg or AuthConfig()
        self.audit = audit or AuditLog(self.data_dir)
        self.clock = clock or Clock()
        self.ph = hasher(self.cfg)
        self._dummy_hash = ""
        with self._db() as con:
            con.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        share_sqlite(self.path)  # the page writes it; the keeper reads the roles
        con.execute("PRAGMA synchronous=FULL")
        return _Closing(con)

    # -- reading ----------------------------------------------------------------------------
    @staticmethod
    def _user(row: sqlite3.Row) -> User:
        return User(id=row["id"], name=row["name"], display=row["display"],
                    roles=tuple(r for r in row["roles"].split(",") if r), state=row["state"],
                    state_reason=row["state_reason"], locked_until=row["locked_until"],
                    pin_set=row["pin_hash"] is not None, pin_locked=bool(row["pin_locked"]))

    def count(self) -> int:
        with self._db() as con:
            return con.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def get(self, name: str) -> User | None:
        with self._db() as con:
            row = con.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return self._user(row) if row else None

    def users(self) -> list[User]:
        with self._db() as con:
            return [self._user(r) for r in con.execute("SELECT * FROM users ORDER BY name")]

    def _require(self, name: str) -> User:
        u = self.get(name)
        if u is None:
            raise AuthError(f"no account named {name!r}", "unknown")
        return u

    # -- creating and changing ----------------------------------------------------------------
    @staticmethod
    def _check_roles(roles) -> tuple[str, ...]:
        roles = tuple(dict.fromkeys(r.strip() for r in roles if r.strip()))
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise PasswordPolicyError(f"unknown or missing role(s) {bad or '(none)'}; roles are {', '.join(ROLES)}")
        return roles

    def _check_name(self, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._\-가-힣]{2,32}", name or ""):
            raise PasswordPolicyError("계정 이름은 2~32자 (글자, 숫자, . _ -) · account names are 2-32 letters, "
                                      "digits, '.', '_' or '-'")
        return name

    def _check_password(self, password: str, name: str) -> None:
        problems = password_problems(password, name, self.cfg.password_min_length)
        if problems:
            raise PasswordPolicyError("비밀번호 거부 · password refused: " + "; ".join(problems))

    def setup_first(self, name: str, password: str, roles=("admin",), *, source: str = "local",
                    display: str = "", take_key: bool = True) -> tuple[User, str | None]:
        """First run: create the first administrator; returns it and the audit verification key (once;
        ``take_key=False`` leaves it waiting for the first-run wizard's last step)."""
        roles = self._check_roles(roles)
        if "admin" not in roles:
            raise PasswordPolicyError("the first account must hold the admin role")
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            if con.execute("SELECT COUNT(*) FROM users").fetchone()[0]:
                con.execute("ROLLBACK")
                self.audit.append("user.setup", actor=name, role="admin", outcome="refused", source=source,
                                  reason="accounts already exist")
                raise AuthError("first-run set-up is over: accounts already exist", "setup_done")
            user = self._insert(con, name, password, roles, display)
            con.execute("COMMIT")
        self.audit.append("user.setup", actor=name, role="admin", obj=name, source=source,
                          detail={"roles": list(roles)}, reason="first administrator")
        return user, (self.audit.take_verification_key() if take_key else None)

    def _insert(self, con, name: str, password: str, roles: tuple[str, ...], display: str) -> User:
        self._check_name(name)
        self._check_password(password, name)
        if con.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise PasswordPolicyError(f"an account named {name!r} already exists")
        now = self.clock.wall()
        con.execute("INSERT INTO users (name, display, roles, pw_hash, created, changed) VALUES (?,?,?,?,?,?)",
                    (name, display, ",".join(roles), self.ph.hash(password), now, now))
        return self._user(con.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone())

    def create(self, name: str, password: str, roles, *, by: User, source: str = "local", display: str = "") -> User:
        roles = self._check_roles(roles)
        self.authorize(by, "users.manage", obj=f"user {name}", source=source)
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                user = self._insert(con, name, password, roles, display)
            except PasswordPolicyError as exc:
                con.execute("ROLLBACK")
                self.audit.append("user.create", actor=by.name, role="admin", obj=name, outcome="refused",
                                  reason=str(exc).split(":")[0], source=source)
                raise
            con.execute("COMMIT")
        self.audit.append("user.create", actor=by.name, role="admin", obj=name, source=source,
                          detail={"roles": list(roles)})
        return user

    def set_state(self, name: str, state: str, reason: str, *, by: User, source: str = "local",
                  ground: int | None = None) -> User:
        """Restrict (sign-in kept, every role suspended), disable (no sign-in) or re-enable an account.
        ``ground``: the art. 9 item (1-4) a restriction rests on, printed on its written notice."""
        if state == "restricted" and ground not in (None, 1, 2, 3, 4):
            raise PasswordPolicyError("제9조 사유는 1~4호 · the art. 9 ground is 1-4")
        if state not in STATES:
            raise PasswordPolicyError(f"state must be one of {', '.join(STATES)}")
        self.authorize(by, "users.manage", obj=f"user {name}", source=source)
        if not reason.strip():
            raise PasswordPolicyError("사유를 적어야 합니다 · a reason is required")
        if name == by.name and state != "active":
            raise PasswordPolicyError("you cannot restrict or disable your own account")
        old = self._require(name)
        with self._db() as con:
            con.execute("UPDATE users SET state = ?, state_reason = ?, changed = ? WHERE name = ?",
                        (state, reason, self.clock.wall(), name))
        action = {"active": "user.enable", "restricted": "user.restrict", "disabled": "user.disable"}[state]
        detail = {"old": old.state, "new": state}
        if state == "restricted":
            detail["ground"] = ground or 4
        self.audit.append(action, actor=by.name, role="admin", obj=name, reason=reason, source=source, detail=detail)
        if state != "active":
            self.revoke_sessions(name, by=by, reason=f"account {state}", source=source)
        return self._require(name)

    def set_roles(self, name: str, roles, reason: str, *, by: User, source: str = "local") -> User:
        roles = self._check_roles(roles)
        self.authorize(by, "users.manage", obj=f"user {name}", source=source)
        if not reason.strip():
            raise PasswordPolicyError("사유를 적어야 합니다 · a reason is required")
        old = self._require(name)
        if name == by.name and "admin" not in roles:
            raise PasswordPolicyError("you cannot remove your own admin role")
        with self._db() as con:
            con.execute("UPDATE users SET roles = ?, changed = ? WHERE name = ?",
                        (",".join(roles), self.clock.wall(), name))
        self.audit.append("user.roles", actor=by.name, role="admin", obj=name, reason=reason, source=source,
                          detail={"old": list(old.roles), "new": list(roles)})
        self.revoke_sessions(name, by=by, reason="roles changed", source=source)
        return self._require(name)

    def set_password(self, name: str, new: str, *, by: User, old: str | None = None, source: str = "local") -> None:
        """Own change (``old`` required) or an administrator's reset; ends the account's sessions."""
        target = self._require(name)
        if by.name == name:
            self.authorize(by, "account.self", obj=f"user {name}", source=source)
            if old is None:
                raise PasswordPolicyError("the current password is required")
            self.authenticate(name, old, source=source, purpose="password change")
        else:
            self.authorize(by, "users.manage", obj=f"user {name}", source=source)
        self._check_password(new, name)
        with self._db() as con:
            con.execute("UPDATE users SET pw_hash = ?, changed = ? WHERE id = ?",
                        (self.ph.hash(new), self.clock.wall(), target.id))
        self.audit.append("user.password", actor=by.name, role=by.acting_role("users.manage") if by.name != name
                          else by.acting_role("account.self"), obj=name, source=source,
                          reason="own change" if by.name == name else "reset by administrator")
        self.revoke_sessions(name, by=by, reason="password changed", source=source)

    def console_reset(self, name: str, new: str, reason: str, *, source: str = "console") -> None:
        """The last administrator's lost password, reset by root at the box's console (``nokbox user
        reset-admin``): no sign-in, so only for an administrator and only when no other active
        administrator could reset it instead. It opens nothing but the page (a password never
        decrypts a recording: the records key, an approver's PIN and a grant do); the account's
        locks and sessions end with it, and it is audited as root's."""
        target = self._require(name)
        if "admin" not in target.roles:
            raise AuthError(f"{name} is not an administrator: another administrator resets it "
                            "(nokbox user password --as ADMIN)", "not_admin")
        others = [u.name for u in self.users() if u.name != name and "admin" in u.roles and u.state == "active"]
        if others:
            raise AuthError(f"another administrator can reset it: nokbox user password {name} --as {others[0]}",
                            "admin_exists")
        if not reason.strip():
            raise AuthError("a reason is required (it is written to the audit log)", "no_reason")
        self._check_password(new, name)
        now = self.clock.wall()
        with self._db() as con:
            con.execute("UPDATE users SET pw_hash = ?, changed = ?, failures = 0, locked_until = 0, lockouts = 0 "
                        "WHERE id = ?", (self.ph.hash(new), now, target.id))
            n = con.execute("UPDATE sessions SET ended = ?, end_reason = ? WHERE user_id = ? AND ended IS NULL",
                            (now, "revoked: password reset at the console", target.id)).rowcount
        self.audit.append("user.password", actor="root", role="-", obj=name, source=source,
                          reason=f"offline reset at the console: {reason.strip()}", detail={"sessions_ended": n})

    def unlock(self, name: str, reason: str, *, by: User, source: str = "local") -> None:
        """Lift a sign-in lock and a PIN lock."""
        self.authorize(by, "users.manage", obj=f"user {name}", source=source)
        self._require(name)
        with self._db() as con:
            con.execute("UPDATE users SET failures = 0, locked_until = 0, lockouts = 0, pin_failures = 0, "
                        "pin_locked = 0 WHERE name = ?", (name,))
        self.audit.append("user.unlock", actor=by.name, role="admin", obj=name, reason=reason, source=source)

    # -- permission checks ----------------------------------------------------------------------
    def authorize(self, user: User, perm: str, *, obj: str = "", source: str = "local",
                  request_owner: str | None = None) -> None:
        """Raise AuthError (and log the refusal) unless ``user`` may do ``perm``."""
        fresh = self.get(user.name)
        if can(fresh, perm, request_owner=request_owner):
            return
        why = "own request" if (perm in _DECIDE_ON_REQUEST and request_owner == user.name) else (
            f"account {fresh.state}" if fresh and fresh.state != "active" else f"role lacks {perm}")
        self.audit.append("access.denied", actor=user.name, role=",".join(user.roles), obj=obj or perm,
                          outcome="refused", reason=why, source=source, detail={"permission": perm})
        raise AuthError(f"{user.name} may not {perm}: {why}", "forbidden")

    # -- sign-in --------------------------------------------------------------------------------
    def authenticate(self, name: str, password: str, *, source: str = "local", purpose: str = "sign-in") -> User:
        """Check a password with lockout; every outcome is logged."""
        now = self.clock.wall()
        with self._db() as con:
            row = con.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            if not self._dummy_hash:
                # a real hash of a random secret, verified for unknown names so timing does not reveal them
                self._dummy_hash = self.ph.hash(secrets.token_hex(16))
            try:
                self.ph.verify(self._dummy_hash, password)
            except VerificationError:
                pass
            self.audit.append("auth.signin", actor=name[:32], role="-", outcome="failed", reason="unknown account",
                              source=source, detail={"purpose": purpose})
            raise AuthError("이름 또는 비밀번호가 틀렸습니다 · wrong name or password", "bad_credentials")
        user = self._user(row)
        # the hash is checked before anything about the account is said: a disabled or locked account
        # costs the same time as any other and, to a wrong password, answers as an unknown name does
        try:
            self.ph.verify(row["pw_hash"], password)
            right = True
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            right = False
        blocked = "disabled" if row["state"] == "disabled" else ("locked" if row["locked_until"] > now else "")
        if blocked:
            self.audit.append("auth.signin", actor=name, role=",".join(user.roles), outcome="refused",
                              reason=f"account {blocked}" + ("" if right else ", wrong password"), source=source,
                              detail={"purpose": purpose})
            if not right:
                raise AuthError("이름 또는 비밀번호가 틀렸습니다 · wrong name or password", "bad_credentials")
            if blocked == "disabled":
                raise AuthError("사용 중지된 계정입니다 · this account is disabled", "disabled")
            raise AuthError("잠긴 계정입니다. 나중에 다시 시도하거나 관리자에게 요청하십시오 · the account is locked; "
                            "try later or ask an administrator", "locked")
        if not right:
            self._failed(con_row=row, now=now, source=source, purpose=purpose)
            raise AuthError("이름 또는 비밀번호가 틀렸습니다 · wrong name or password", "bad_credentials")
        with self._db() as con:
            # lockouts stay: a repeat offender's next lock is longer until an administrator unlocks
            con.execute("UPDATE users SET failures = 0, locked_until = 0 WHERE id = ?", (row["id"],))
            if self.ph.check_needs_rehash(row["pw_hash"]):
                con.execute("UPDATE users SET pw_hash = ? WHERE id = ?", (self.ph.hash(password), row["id"]))
        self.audit.append("auth.signin", actor=name, role=",".join(user.roles), source=source,
                          detail={"purpose": purpose})
        return self.get(name)

    def _failed(self, con_row: sqlite3.Row, now: float, source: str, purpose: str) -> None:
        name = con_row["name"]
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT failures, lockouts FROM users WHERE id = ?", (con_row["id"],)).fetchone()
            failures = row["failures"] + 1
            locked = failures >= self.cfg.lock_after
            if locked:
                minutes = min(self.cfg.lock_minutes * 2 ** row["lockouts"], 1440)
                con.execute("UPDATE users SET failures = 0, lockouts = lockouts + 1, locked_until = ? WHERE id = ?",
                            (now + minutes * 60, con_row["id"]))
            else:
                con.execute("UPDATE users SET failures = ? WHERE id = ?", (failures, con_row["id"]))
            con.execute("COMMIT")
        roles = con_row["roles"]
        self.audit.append("auth.signin", actor=name, role=roles, outcome="failed", reason="wrong password",
                          source=source, detail={"purpose": purpose, "failures": failures})
        if locked:
            self.audit.append("auth.lockout", actor=name, role=roles, outcome="locked", source=source,
                              reason=f"{self.cfg.lock_after} failed sign-ins", detail={"minutes": minutes})
            log.warning("account %s locked for %d min after %d failed sign-ins", name, minutes, self.cfg.lock_after)

    # -- approval PIN (used by the request workflow) ---------------------------------------------
    def start_session(self, user: User, source: str) -> tuple[str, str]:
        """A new server-side session: (cookie token, CSRF token). Only a hash of the token is stored."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.clock.wall()
        with self._db() as con:
            con.execute("INSERT INTO sessions (id_hash, user_id, csrf, created, last_seen, source) VALUES (?,?,?,?,?,?)",
                        (_token_hash(token), user.id, csrf, now, now, source))
        return token, csrf

    def session(self, token: str, *, source: str = "local", touch: bool = True) -> tuple[User, Session] | None:
        """The live session for ``token``; ends it (logged) when idle or too old."""
        if not token:
            return None
        h = _token_hash(token)
        now = self.clock.wall()
        with self._db() as con:
            row = con.execute("SELECT s.*, u.name AS uname FROM sessions s JOIN users u ON u.id = s.user_id "
                              "WHERE s.id_hash = ? AND s.ended IS NULL", (h,)).fetchone()
        if row is None:
            return None
        why = ""
        if now - row["last_seen"] > self.cfg.idle_minutes * 60:
            why = "idle"
        elif now - row["created"] > self.cfg.session_hours * 3600:
            why = "expired"
        user = self.get(row["uname"])
        if not why and (user is None or user.state == "disabled"):
            why = "account disabled"
        if why:
            self._end(h, why)
            if user is not None:
                self.audit.append("auth.signout", actor=user.name, role=",".join(user.roles), reason=why,
                                  source=source)
            return None
        if touch:
            with self._db() as con:
                con.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, h))
        return user, Session(h, row["user_id"], row["csrf"], row["created"], row["last_seen"], row["source"])

    def _end(self, id_hash: str, reason: str) -> None:
        with self._db() as con:
            con.execute("UPDATE sessions SET ended = ?, end_reason = ? WHERE id_hash = ? AND ended IS NULL",
                        (self.clock.wall(), reason, id_hash))

    def end_session(self, token: str, *, user: User, source: str = "local") -> None:
        self._end(_token_hash(token), "signed out")
        self.audit.append("auth.signout", actor=user.name, role=",".join(user.roles), reason="signed out",
                          source=source)

    def revoke_sessions(self, name: str, *, by: User, reason: str, source: str = "local") -> int:
        if by.name != name:
            self.authorize(by, "users.manage", obj=f"user {name}", source=source)
        u = self._require(name)
        with self._db() as con:
            n = con.execute("UPDATE sessions SET ended = ?, end_reason = ? WHERE user_id = ? AND ended IS NULL",
                            (self.clock.wall(), f"revoked: {reason}", u.id)).rowcount
        if n:
            self.audit.append("auth.revoke", actor=by.name, role=by.acting_role("users.manage"), obj=name,
                              reason=reason, source=source, detail={"sessions": n})
        return n

    def open_sessions(self) -> list[dict]:
        with self._db() as con:
            rows = con.execute("SELECT u.name, s.created, s.last_seen, s.source FROM sessions s JOIN users u "
                               "ON u.id = s.user_id WHERE s.ended IS NULL ORDER BY s.last_seen DESC").fetchall()
        now = self.clock.wall()
        return [dict(r) for r in rows if now - r["last_seen"] <= self.cfg.idle_minutes * 60]


class _Closing:
    """A sqlite3 connection used as ``with``: closed at the end (sqlite3's own ``with`` does not close)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc) -> None:
        self.con.close()


def lookup(data_dir: Path, name: str) -> User | None:
    """One account, read through a read-only connection (the key keeper checks roles this way;
    it never writes the accounts database)."""
    path = Path(data_dir) / "accounts.sqlite"
    if not path.exists():
        return None
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        row = con.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
    finally:
        con.close()
    return Accounts._user(row) if row else None


def role_check(data_dir: Path):
    """``check(name, perm)``: None when the account ``name`` may do ``perm`` now, else why not (Korean ·
    English). Reads the accounts read-only, at every call: a role taken away counts at once."""

    def check(name: str, perm: str) -> str | None:
        user = lookup(data_dir, name)
        if user is None:
            return f"계정이 없습니다 · no account named {name!r}"
        if not can(user, perm):
            roles = ",".join(user.roles) or "-"
            return (f"{name}: 이 일을 할 권한이 없습니다 · {name} ({roles}, {user.state}) may not {perm}")
        return None

    return check


def measure_hash(cfg: AuthConfig, rounds: int = 5) -> float:
    """Median seconds of one Argon2id hash with ``cfg``'s parameters."""
    ph = hasher(cfg)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ph.hash("correct horse battery staple")
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
