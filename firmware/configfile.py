"""The config file as the settings page changes it: read the TOML document, apply a change set,
validate the whole result with the schema ``check-config`` uses, list old → new per key, write it
atomically; and the signed backup of the file (never of keys).

The file is rewritten by ``tomli_w``: comments inside it are lost, except the comment lines at its
top, which are kept. A write never happens when the result does not validate, and never over a
file that changed since the change was previewed (``StaleConfig``)."""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import logging
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from pydantic import ValidationError

from .config import NokboxConfig, RetentionConfig, _format_error
from .errors import ConfigError

log = logging.getLogger(__name__)

HEADER = ("# nokbox configuration. The settings page rewrites this file: comments below this header are not kept.\n"
          "# Check a hand edit with: nokbox check-config --config <this file>\n")
# Keys that take effect without a restart: the recorder's reload applies segmentation, the lines'
# names, extensions, notice modes and on/off, and retention; the page reads the review settings
# itself. Everything else is read when a process starts (audio: recorder.py _RESTART_KEYS).
LIVE_PREFIXES = ("segment.", "retention.", "review.")
LIVE_LINE_FIELDS = ("name", "extension", "notice", "enabled")
BACKUP_MAGIC = "nokbox-config-backup 1"
BACKUP_KEY = "config-backup.key"  # in DATA, 0600: Ed25519, made on first use, never in the config or the image


class SettingsInvalid(ConfigError):
    """The changed configuration does not validate; ``fields`` lists (key, message) per problem."""

    def __init__(self, message: str, fields: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.fields = fields


class StaleConfig(ConfigError):
    """The file changed since the change was previewed: it is not overwritten."""


class BackupRefused(ConfigError):
    """A backup file that is not this box's, was altered, or does not hold a valid configuration."""


def digest(raw: bytes | None) -> str:
    return "none" if raw is None else hashlib.sha256(raw).hexdigest()


def read_raw(path: Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def parse_document(raw: bytes | None, source: str = "<config>") -> dict:
    """The TOML document of a file's bytes ({} for no file)."""
    if raw is None:
        return {}
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


def _loc(loc: tuple) -> str:
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else ("." if out else "") + str(item)
    return out


def validate(doc: dict, source: str = "<config>") -> NokboxConfig:
    """The schema's verdict on a whole document (as ``parse_config``); SettingsInvalid names each key."""
    try:
        return NokboxConfig.model_validate(doc)
    except ValidationError as exc:
        fields = []
        for err in exc.errors():
            key, msg = _loc(err["loc"]), err["msg"]
            if err["type"] in _KOREAN:
                ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in (err.get("ctx") or {}).items()}
                msg = _KOREAN[err["type"]].format(**ctx) + " · " + msg
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
                head, _, rest = msg.partition(": ")
                if rest and " " not in head:  # a model-level check names its key first
                    key, msg = head, rest
                else:  # or starts with a field of the model it checks ("release_db must not …")
                    word = msg.split(" ", 1)[0]
                    if f"{key}.{word}" in _known_keys():
                        key = f"{key}.{word}"
                msg = "다른 설정과 맞지 않습니다 · " + msg
            fields.append((key, msg))
        raise SettingsInvalid(f"{source}: {_format_error(exc)}", fields) from None


# pydantic's error types in Korean (its English message follows)
_KOREAN = {
    "less_than_equal": "{le} 이하여야 합니다", "greater_than_equal": "{ge} 이상이어야 합니다",
    "less_than": "{lt}보다 작아야 합니다", "greater_than": "{gt}보다 커야 합니다",
    "string_too_short": "{min_length}자 이상이어야 합니다", "string_too_long": "{max_length}자 이하여야 합니다",
    "too_short": "{min_length}개 이상이어야 합니다", "too_long": "{max_length}개 이하여야 합니다",
    "string_pattern_mismatch": "쓸 수 없는 문자가 있습니다", "literal_error": "허용된 값이 아닙니다",
    "int_parsing": "정수를 입력하십시오", "int_from_float": "정수를 입력하십시오", "float_parsing": "숫자를 입력하십시오",
    "bool_parsing": "켬/끔만 됩니다", "missing": "꼭 입력해야 합니다", "extra_forbidden": "알 수 없는 항목입니다",
    "string_type": "글자를 입력하십시오", "int_type": "정수를 입력하십시오", "float_type": "숫자를 입력하십시오",
}


def _known_keys() -> set[str]:
    return set(flatten(NokboxConfig()))


def apply_changes(doc: dict, changes: dict) -> dict:
    """A copy of ``doc`` with each dotted key set (a list replaces the whole list; None removes the key)."""
    import copy

    out = copy.deepcopy(doc)
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def flatten(cfg: NokboxConfig) -> dict:
    """Every effective setting by key: lines by channel (``line[channel=0].name``, undeclared lines
    as their defaults), retention groups by position, other lists whole."""
    d = cfg.model_dump()
    d.pop("line")
    out: dict = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            key = prefix + k
            if isinstance(v, dict):
                walk(v, key + ".")
            elif k == "group" and isinstance(v, list):
                for i, g in enumerate(v):
                    walk(g, f"{key}[{i}].")
            else:
                out[key] = v

    walk(d, "")
    for ln in cfg.lines:
        walk(ln.model_dump(exclude={"channel"}), f"line[channel={ln.channel}].")
    return out


def needs_restart(key: str) -> bool:
    if key.startswith(LIVE_PREFIXES):
        return False
    if key.startswith("line[channel="):
        return key.rsplit(".", 1)[-1] not in LIVE_LINE_FIELDS
    return True


@dataclass
class Proposal:
    """A validated change, not yet written: the new document and what changes."""

    path: Path
    base_digest: str  # of the file bytes the change was made against
    doc: dict
    cfg: NokboxConfig
    changes: dict = field(default_factory=dict)  # key -> {"old", "new"}
    header: str = HEADER

    @property
    def restart(self) -> list[str]:
        return [k for k in self.changes if needs_restart(k)]

    def text(self) -> str:
        return self.header + "\n" + tomli_w.dumps(self.doc)


def _header_of(raw: bytes | None) -> str:
    """The comment lines at the top of a file (kept on rewrite), or our header."""
    if not raw:
        return HEADER
    lines = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    text = "\n".join(lines) + "\n" if lines else ""
    return text if "settings page rewrites" in text else HEADER + text


def propose(path: Path, changes: dict | None = None, *, doc: dict | None = None,
            base: NokboxConfig | None = None) -> Proposal:
    """Apply ``changes`` (or take the whole ``doc``, e.g. a restore) to the file at ``path`` and
    validate the result; nothing is written. Raises SettingsInvalid."""
    path = Path(path)
    raw = read_raw(path)
    old_doc = parse_document(raw, str(path))
    old = base if base is not None else validate(old_doc, str(path))
    new_doc = doc if doc is not None else apply_changes(old_doc, changes or {})
    new = validate(new_doc, str(path))
    from .audit import config_changes

    return Proposal(path, digest(raw), new_doc, new, config_changes(flatten(old), flatten(new)), _header_of(raw))


def write(prop: Proposal) -> None:
    """Write the proposal atomically (temp file in the same folder, fsync, rename, fsync the folder),
    keeping the file's mode (new files 0640) and owner; StaleConfig when the file changed meanwhile."""
    path = prop.path
    folder = path.parent
    text = prop.text().encode("utf-8")
    validate(tomllib.loads(text.decode("utf-8")), str(path))  # what is written is what was validated
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)  # two pages applying at once: one after the other
        raw = read_raw(path)
        if digest(raw) != prop.base_digest:
            raise StaleConfig(f"{path} changed since the change was previewed")
        try:
            st = os.stat(path)
            mode, owner = st.st_mode & 0o777, (st.st_uid, st.st_gid)
        except FileNotFoundError:
            mode, owner = 0o640, None
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                if owner is not None and owner != (os.getuid(), os.getgid()):
                    try:
                        os.fchown(f.fileno(), *owner)
                    except PermissionError:
                        log.warning("cannot keep the owner of %s", path)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)  # closing drops the lock
    log.info("config written to %s (%d keys changed)", path, len(prop.changes))


# -- disk days ------------------------------------------------------------------------------------
def retention_fit(per_channel: dict[int, float], stored: int, free: int, reserve: int,
                  retention: RetentionConfig, channels: list[int]) -> dict:
    """Whether each retention fits the disk at the recent call volume. ``per_channel``: bytes a day per
    input channel; ``stored``: bytes of recordings now kept; ``free``: free bytes; ``reserve``: the
    'disk full' margin. Steady state keeps about (bytes a day × days) per group."""
    space = max(0, free + stored - reserve)
    groups = []
    seen: set[int] = set()
    for g in retention.group:
        chans = [c for c in g.channels if c in channels]
        seen.update(chans)
        bpd = sum(per_channel.get(c, 0.0) for c in chans)
        groups.append({"name": g.name, "channels": chans, "days": g.days, "bytes_per_day": bpd, "need": bpd * g.days})
    rest = [c for c in channels if c not in seen]
    if rest:
        bpd = sum(per_channel.get(c, 0.0) for c in rest)
        groups.append({"name": "default", "channels": rest, "days": retention.default_days, "bytes_per_day": bpd,
                       "need": bpd * retention.default_days})
    total_bpd = sum(g["bytes_per_day"] for g in groups)
    need = sum(g["need"] for g in groups)
    for g in groups:  # a group fits when the disk holds every group's steady state with it
        g["fits"] = need <= space if g["bytes_per_day"] else True
    return {"space": space, "bytes_per_day": total_bpd, "need": need, "fits": need <= space,
            "days": (space / total_bpd) if total_bpd else None, "groups": groups}


# -- signed backups -------------------------------------------------------------------------------
def _backup_key(data_dir: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(data_dir) / BACKUP_KEY
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        log.info("made the config backup signing key %s", p)
        return key
    return Ed25519PrivateKey.from_private_bytes(raw)


def backup_key_id(data_dir: Path) -> str:
    """A short fingerprint of this box's backup key (shown on the page and in the file)."""
    from cryptography.hazmat.primitives import serialization

    pub = _backup_key(data_dir).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(pub).hexdigest()[:16]


def _signed_part(created: str, key_id: str, body: bytes) -> bytes:
    return f"{BACKUP_MAGIC}\n{created}\n{key_id}\n".encode() + body


def make_backup(data_dir: Path, raw: bytes, now: float) -> bytes:
    """The config file's bytes with this box's Ed25519 signature in a short header."""
    key = _backup_key(data_dir)
    kid = backup_key_id(data_dir)
    created = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    sig = base64.b64encode(key.sign(_signed_part(created, kid, raw))).decode()
    head = f"{BACKUP_MAGIC}\ncreated {created}\nkey {kid}\nsignature {sig}\n\n"
    return head.encode() + raw


def open_backup(data_dir: Path, blob: bytes) -> dict:
    """The TOML document inside a backup made by this box; BackupRefused (Korean · English) otherwise."""
    from cryptography.exceptions import InvalidSignature

    head, sep, body = blob.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").split("\n")
    fields = dict(ln.split(" ", 1) for ln in lines[1:] if " " in ln)
    if not sep or lines[0] != BACKUP_MAGIC or not {"created", "key", "signature"} <= fields.keys():
        raise BackupRefused("설정 백업 파일이 아닙니다 · this is not a nokbox configuration backup")
    kid = backup_key_id(data_dir)
    if fields["key"] != kid:
        raise BackupRefused("이 장치에서 만든 백업이 아닙니다. 복원할 수 없습니다 · the backup was not made by this box "
                            "and cannot be restored here")
    try:
        sig = base64.b64decode(fields["signature"], validate=True)
        _backup_key(data_dir).public_key().verify(sig, _signed_part(fields["created"], kid, body))
    except (InvalidSignature, ValueError):
        raise BackupRefused("서명이 맞지 않습니다. 파일이 바뀌었거나 손상되었습니다 · the signature does not verify: the "
                            "file was altered or damaged") from None
    try:
        return parse_document(body, "backup")
    except ConfigError as exc:
        raise BackupRefused(f"백업 안의 설정을 읽을 수 없습니다 · the configuration inside cannot be read: {exc}") from None
