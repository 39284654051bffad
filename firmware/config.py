"""Typed configuration: defaults in code, then /etc/nokbox/nokbox.toml or --config.

One strict schema: unknown keys are rejected, ranges are checked, every field is
described. Errors name the key (``line[1].channel``) and the problem.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/nokbox/nokbox.toml")
DEFAULT_DATA_DIR = Path("/var/lib/nokbox")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class AudioConfig(_Strict):
    """Where line audio comes from."""

    backend: Literal["auto", "alsa", "simulated"] = Field(
        "auto",
        description="auto: ALSA when 'device' is set, otherwise the built-in simulated lines.",
    )
    device: str | None = Field(
        None, description="ALSA PCM name of the capture device, e.g. 'hw:CARD=Device,DEV=0'."
    )
    rate: Literal[8000, 16000] = Field(8000, description="Capture sample rate in Hz.")
    channels: int = Field(
        4, ge=1, le=32, description="Number of interleaved input channels (one per line)."
    )
    period_ms: int = Field(
        20, ge=5, le=100, description="ALSA period length in milliseconds (one read)."
    )
    periods: int = Field(4, ge=2, le=64, description="ALSA periods in the hardware buffer.")
    ring_seconds: float = Field(
        30.0,
        ge=30.0,
        le=600.0,
        description="Seconds of lag each line's ring absorbs before audio is lost "
        "(pre-roll and hang-over are added on top).",
    )
    reopen_max_s: float = Field(
        10.0, ge=0.5, le=300.0, description="Longest back-off between tries to reopen a lost device."
    )


class ToneConfig(_Strict):
    """One call-progress tone: frequencies and cadence."""

    freqs: list[float] = Field(..., min_length=1, max_length=3, description="Frequencies in Hz (1-3).")
    on_s: float = Field(0.0, ge=0.0, le=10.0, description="Tone burst length; 0 with off_s 0 = continuous.")
    off_s: float = Field(0.0, ge=0.0, le=10.0, description="Pause between bursts; 0 = continuous tone.")

    @model_validator(mode="after")
    def _freqs(self) -> "ToneConfig":
        if any(not 100.0 <= f <= 3400.0 for f in self.freqs):
            raise ValueError("freqs: every frequency must be within 100-3400 Hz")
        if (self.off_s > 0) != (self.on_s > 0):
            raise ValueError("on_s and off_s: set both for a cadenced tone, neither for a continuous one")
        return self


class TonesConfig(_Strict):
    """Call-progress tones of the exchange (defaults: Korea)."""

    dial: ToneConfig = Field(default_factory=lambda: ToneConfig(freqs=[350.0, 440.0]),
                             description="Dial tone: evidence that a call starts.")
    ringback: ToneConfig = Field(default_factory=lambda: ToneConfig(freqs=[440.0, 480.0], on_s=1.0, off_s=2.0),
                                 description="Ringback: evidence of an outgoing call.")
    busy: ToneConfig = Field(default_factory=lambda: ToneConfig(freqs=[480.0, 620.0], on_s=0.5, off_s=0.5),
                             description="Busy: the far end hung up (or is busy); ends the call.")
    reorder: ToneConfig = Field(default_factory=lambda: ToneConfig(freqs=[480.0, 620.0], on_s=0.3, off_s=0.2),
                                description="Reorder / congestion: ends the call.")
    min_fraction: float = Field(0.6, ge=0.3, le=0.99,
                                description="Share of a 40 ms window's power the tone's frequencies must hold.")
    min_level_dbfs: float = Field(-45.0, ge=-70.0, le=-10.0, description="Quieter tones are ignored.")
    cadence_tol: float = Field(0.25, ge=0.05, le=0.5, description="Relative tolerance of burst and pause lengths.")


class DtmfConfig(_Strict):
    """DTMF digit detection (ITU-T Q.24 acceptance)."""

    freq_tol: float = Field(0.025, ge=0.015, le=0.035,
                            description="Largest accepted frequency deviation (Q.24: accept 1.5 %, reject 3.5 %).")
    normal_twist_db: float = Field(8.0, ge=0.0, le=12.0,
                                   description="Low-group tone may be this much louder than the high-group tone.")
    reverse_twist_db: float = Field(4.0, ge=0.0, le=12.0,
                                    description="High-group tone may be this much louder than the low-group tone.")
    min_level_dbfs: float = Field(-42.0, ge=-60.0, le=-10.0, description="Weakest accepted tone level (each tone).")


class CallerIdConfig(_Strict):
    """Caller ID on incoming calls, where the line delivers it."""

    fsk: bool = Field(True, description="Decode FSK caller ID (Bell 202 and V.23, SDMF/MDMF).")
    dtmf: bool = Field(True, description="Read DTMF caller ID ('A' or 'D', the number, 'C').")


class SenseConfig(_Strict):
    """How a line-sense input (line[].sense_pin) is read: debounce and hook flash."""

    offhook_ms: int = Field(
        60, ge=20, le=500, description="The input must stay off-hook this long to count (contact bounce and "
        "the 16-25 Hz of ringing never do)."
    )
    flash_s: float = Field(
        1.0, ge=0.3, le=3.0, description="An on-hook longer than this is a hang-up; a shorter one is a hook "
        "flash or a dial pulse and the call goes on."
    )
    stuck_s: float = Field(
        3600.0, ge=60.0, le=86400.0, description="Off-hook this long without speech raises an alarm and the "
        "audio's own end rules take over (a stuck detector, a handset left off)."
    )


class SegmentConfig(_Strict):
    """How a line's audio is split into calls."""

    onset: bool = Field(
        True, description="Raise a provisional call (and play the notice) from a fast look at every 0.1 s of "
        "audio, before the chunk's analysis confirms or withdraws it."
    )
    sense: SenseConfig = Field(default_factory=SenseConfig)

    preroll_s: float = Field(
        2.0, ge=1.0, le=10.0, description="Audio kept before the first sign of activity."
    )
    silence_s: float = Field(
        10.0, ge=2.0, le=120.0, description="A call ends after this long without line activity."
    )
    tail_s: float = Field(
        0.5, ge=0.0, le=5.0, description="Audio kept after the last activity of a call."
    )
    trigger_db: float = Field(
        10.0, ge=3.0, le=40.0, description="Speech is this many dB above the noise floor."
    )
    release_db: float = Field(
        6.0, ge=1.0, le=40.0, description="Line activity continues while this many dB above the floor."
    )
    min_level_dbfs: float = Field(
        -55.0, ge=-90.0, le=-10.0, description="Quieter frames never count as activity."
    )
    speech_min_dbfs: float = Field(
        -50.0, ge=-90.0, le=-10.0, description="Quieter frames never count as speech (crosstalk)."
    )
    confirm_s: float = Field(
        5.0, ge=1.0, le=30.0, description="How far before its confirmation (speech, tone, digit, caller ID) "
        "a call's first sign (click, noise change) may lie."
    )
    idle_step_db: float = Field(
        7.0, ge=5.0, le=40.0, description="Off-hook noise this far above the idle floor makes its return "
        "to the idle floor a hang-up."
    )
    hangup_hold_s: float = Field(
        3.0, ge=0.5, le=30.0, description="A recognised busy/reorder tone ends the call at most this much later."
    )
    chunk_s: float = Field(
        4.0, ge=0.25, le=10.0, description="Analysis chunk: the detection latency, traded against CPU."
    )
    max_call_s: float = Field(
        14400.0, ge=60.0, le=86400.0, description="A call longer than this is closed and a new one opened."
    )
    tones: TonesConfig = Field(default_factory=TonesConfig)
    dtmf: DtmfConfig = Field(default_factory=DtmfConfig)
    callerid: CallerIdConfig = Field(default_factory=CallerIdConfig)

    @model_validator(mode="after")
    def _hysteresis(self) -> "SegmentConfig":
        if self.release_db > self.trigger_db:
            raise ValueError("release_db must not exceed trigger_db")
        return self


class StorageConfig(_Strict):
    """How finished audio is stored."""

    codec: Literal["opus", "flac", "wav"] = Field(
        "opus", description="Audio inside the encrypted file: Opus in Ogg (long retention), "
        "FLAC (lossless, about 5x Opus's size) or 16-bit PCM WAV (lossless, uncompressed).",
    )
    opus_kbps: float = Field(16.0, ge=6.0, le=64.0, description="Opus target bit rate in kbit/s.")
    opus_complexity: int = Field(
        5, ge=0, le=10, description="Opus encoder complexity (0-10): CPU against quality; 5 scores the "
        "same PESQ as 10 on telephone speech for about half the CPU (benchmarks/vault.py).",
    )
    checkpoint_s: float = Field(
        0.5, ge=0.1, le=1.0, description="Audio a power cut may cost at most, per call in progress "
        "(journal fsync interval).",
    )
    queue_blocks: int = Field(
        256, ge=8, le=65536, description="Blocks the writer queue holds before segmentation waits."
    )


class VaultConfig(_Strict):
    """Keys and where the device-bound secret lives."""

    device_secret: Literal["file", "otp", "tpm"] = Field(
        "file", description="Device-bound secret: a key file on a partition other than the data SSD, the "
        "Raspberry Pi OTP customer key, or sealed in a TPM 2.0 (which then also counts wrong PINs).",
    )
    device_key_file: str = Field(
        "/etc/nokbox/device.key", description="Path of the device key file (device_secret = 'file')."
    )
    tpm_blob: str = Field(
        "/etc/nokbox/device.tpm", description="Where the TPM-sealed device secret is kept (device_secret = 'tpm').",
    )
    tpm_tcti: str = Field(
        "device:/dev/tpmrm0", min_length=1,
        description="TSS TCTI of the TPM (a simulator: 'swtpm:host=127.0.0.1,port=2321').",
    )
    tpm_max_tries: int = Field(
        10, ge=1, le=32, description="Wrong PINs the TPM takes before its dictionary-attack lockout (all approvers).",
    )
    tpm_recovery_s: int = Field(
        600, ge=1, le=86400, description="During the TPM lockout, one more PIN try after this many seconds.",
    )
    tpm_lockout_recovery_s: int = Field(
        86400, ge=0, le=604800, description="After a failed lockout reset, the TPM waits this long before another.",
    )
    allow_short_pin: bool = Field(
        False, description="Without a TPM, allow approver PINs under 8 digits (each use of this is audited).",
    )
    pin_backoff_s: float = Field(
        2.0, ge=0.0, le=300.0, description="Wait after the first wrong PIN; doubles with each further one "
        "(the fifth locks the PIN until the recovery passphrase is given).",
    )
    pin_scrypt_log_n: int = Field(
        16, ge=10, le=20, description="scrypt cost (log2 N, r=8) of a new PIN slot; 16 = 64 MiB, ~1 s a try on a Pi 4.",
    )


class RetentionGroup(_Strict):
    """Lines that share one retention period."""

    name: str = Field(..., min_length=1, max_length=64, description="Name of the group (in logs and the ledger).")
    channels: list[int] = Field(..., min_length=1, description="Input channels of the lines in this group.")
    days: int = Field(..., ge=1, le=36500, description="Days a recording of these lines is kept, then destroyed.")


class RetentionConfig(_Strict):
    """How long recordings are kept, and what happens when the disk fills."""

    default_days: int = Field(
        30, ge=1, le=36500, description="Days a recording is kept when its line is in no group "
        "(Icheon rule art. 8: 30 days).",
    )
    group: list[RetentionGroup] = Field(
        default_factory=list, description="Line groups with their own retention ([[retention.group]]).",
    )
    epoch_days: int = Field(
        7, ge=1, le=366, description="Days between new key epochs; an epoch's key is erased once "
        "every call that can depend on it is gone.",
    )
    interval_h: float = Field(24.0, ge=0.1, le=168.0, description="Hours between retention runs.")
    disk_warn_free_percent: float = Field(
        10.0, ge=0.0, le=90.0, description="Warn (page, log) when free space falls below this percentage.",
    )
    disk_full_free_mb: int = Field(
        512, ge=16, le=1048576, description="The disk counts as full below this many MB free: alarm.",
    )
    when_full: Literal["keep", "oldest_first"] = Field(
        "keep", description="When full: 'keep' never deletes a recording within retention (recording "
        "fails loudly); 'oldest_first' destroys the oldest unheld recordings (audited).",
    )
    trim: Literal["auto", "off"] = Field(
        "auto", description="Run fstrim on the data filesystem after destroying recordings.",
    )

    @model_validator(mode="after")
    def _groups(self) -> "RetentionConfig":
        seen: dict[int, str] = {}
        for i, g in enumerate(self.group):
            for ch in g.channels:
                if ch in seen:
                    raise ValueError(f"retention.group[{i}].channels: channel {ch} is already in group {seen[ch]!r}")
                seen[ch] = g.name
        return self

    def days_for(self, channel: int) -> tuple[int, str]:
        """(days, group name) of a line."""
        for g in self.group:
            if channel in g.channels:
                return g.days, g.name
        return self.default_days, "default"


class NoticeConfig(_Strict):
    """The "this call is recorded" announcement played on every call (seed 001 art. 6)."""

    enabled: bool = Field(True, description="Play the notice on every call (per line: line[].notice).")
    gpio: Literal["auto", "lgpio", "mock"] = Field(
        "auto", description="GPIO backend: lgpio on a Raspberry Pi, mock for the simulated box; "
        "auto picks lgpio when a GPIO chip is present.",
    )
    outputs: list[str] = Field(
        default_factory=list, max_length=32,
        description="ALSA playback devices switched onto lines by the relays; several serve "
        "simultaneous calls in parallel. Empty: the simulated output.",
    )
    rate: Literal[8000, 16000, 48000] = Field(8000, description="Sample rate of the notice output.")
    settle_ms: int = Field(50, ge=0, le=1000, description="Wait after the relay closes before audio.")
    max_wait_s: float = Field(
        10.0, ge=0.5, le=60.0, description="A notice that cannot start within this long is given up "
        "(failure 'output_busy').",
    )
    status_led_pin: int | None = Field(None, ge=2, le=27, description="GPIO of the status LED.")
    button_pin: int | None = Field(
        None, ge=2, le=27, description="GPIO of the push button (short: test notice; long: shutdown)."
    )
    test_line: int = Field(0, ge=0, le=31, description="Channel the button's test notice plays on.")


class TimeConfig(_Strict):
    """The clock: NTP servers and the time zone (applied by the image's systemd-timesyncd)."""

    ntp_servers: list[Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")]] = Field(
        default_factory=list, max_length=8,
        description="NTP servers (host names or addresses); empty = the image's default servers.",
    )
    timezone: str = Field(
        "Asia/Seoul", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$",
        description="Time zone of the box (IANA name); the pages always show KST.",
    )

    @model_validator(mode="after")
    def _zone(self) -> "TimeConfig":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time.timezone: {self.timezone!r} is not a known time zone (e.g. Asia/Seoul)") from None
        return self


class WebConfig(_Strict):
    """The local admin page."""

    host: str = Field("127.0.0.1", description="Address the admin page binds to (LAN only).")
    port: int = Field(8080, ge=1, le=65535, description="TCP port of the admin page (over HTTPS: the port that "
                                                         "redirects to https_port).")
    tls: Literal["auto", "on", "off"] = Field(
        "auto", description="HTTPS with the box's own certificate (made at first start, its fingerprint shown on "
                            "the console and the page): auto = whenever host is not a loopback address; off only "
                            "on loopback.")
    https_port: int = Field(8443, ge=1, le=65535, description="TCP port of the admin page over HTTPS.")
    behind_proxy: bool = Field(
        False, description="The page sits behind the appliance's nginx on the same box (host must be a loopback "
                           "address): the client's address and https come from its X-Forwarded-For/-Proto.")

    @model_validator(mode="after")
    def _tls(self) -> "WebConfig":
        import ipaddress

        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        if self.tls == "off" and not loopback:
            raise ValueError("web.tls: 'off' is allowed only when web.host is a loopback address (the LAN gets HTTPS)")
        if self.behind_proxy and not loopback:
            raise ValueError("web.behind_proxy: only with a loopback web.host (only the local proxy may reach the page)")
        if self.https_port == self.port:
            raise ValueError("web.https_port: must differ from web.port")
        return self

    @property
    def https(self) -> bool:
        """Whether the page is served over HTTPS."""
        import ipaddress

        if self.tls != "auto":
            return self.tls == "on"
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"


class IpcConfig(_Strict):
    """The local sockets between the recorder, the key keeper and the page (docs/architecture.md)."""

    run_dir: str = Field("", description="Folder of the sockets; empty = DATA/run (the appliance: /run/nokbox).")
    recorder_allow: list[str] = Field(
        default_factory=list,
        description="Users (names or uids) besides the recorder's own that may use its socket (the page, nokbox status).",
    )
    keeper_allow: list[str] = Field(
        default_factory=list, description="Users (names or uids) besides the keeper's own that may use its socket (the page).",
    )
    timeout_s: float = Field(10.0, ge=0.5, le=120.0, description="How long a client waits for an answer.")
    levels_hz: float = Field(10.0, ge=5.0, le=25.0, description="Rate of the recorder's live level stream.")


class KeeperConfig(_Strict):
    """The key keeper: the only process that ever holds the records identity."""

    idle_minutes: float = Field(
        10.0, ge=0.5, le=240.0, description="An unlocked identity is forgotten after this long without use.",
    )
    grant_max_hours: float = Field(
        24.0, ge=0.1, le=168.0, description="Longest time an approval (grant) keeps its calls open.",
    )
    grant_max_calls: int = Field(100, ge=1, le=10000, description="Most calls one grant may open.")


class SimulateConfig(_Strict):
    """The built-in simulated lines used when no capture device is configured."""

    seed: int = Field(1, ge=0, description="Random seed of the simulated traffic.")
    first_call_s: float = Field(
        3.0, ge=0.0, le=600.0, description="Idle time before each simulated line's first call."
    )
    idle_min_s: float = Field(20.0, ge=1.0, le=3600.0, description="Shortest idle gap between calls.")
    idle_max_s: float = Field(90.0, ge=1.0, le=7200.0, description="Longest idle gap between calls.")
    talk_min_s: float = Field(15.0, ge=1.0, le=3600.0, description="Shortest conversation.")
    talk_max_s: float = Field(90.0, ge=1.0, le=7200.0, description="Longest conversation.")

    @model_validator(mode="after")
    def _ranges(self) -> "SimulateConfig":
        if self.idle_min_s > self.idle_max_s:
            raise ValueError("idle_min_s must not exceed idle_max_s")
        if self.talk_min_s > self.talk_max_s:
            raise ValueError("talk_min_s must not exceed talk_max_s")
        return self


class LineConfig(_Strict):
    """One telephone line wired to one input channel."""

    channel: int = Field(..., ge=0, le=31, description="Input channel index (0-based).")
    name: str = Field(..., min_length=1, max_length=64, description="Name shown on the page.")
    extension: str = Field(
        "", pattern=r"^[0-9*#]{0,16}$", description="Extension number of the line, digits only."
    )
    notice: Literal["on", "off", "beep"] = Field(
        "on", description="Recording notice on this line: the announcement, nothing, or a beep only."
    )
    enabled: bool = Field(
        True, description="Record this line; a disabled line opens no call (flagged in the daily review)."
    )
    relay_pin: int | None = Field(None, ge=2, le=27, description="GPIO driving this line's notice relay.")
    feedback_pin: int | None = Field(
        None, ge=2, le=27, description="GPIO reading the relay's contact (optional fault detection)."
    )
    sense_pin: int | None = Field(
        None, ge=2, le=27, description="GPIO of an off-hook / loop-current detector (optional)."
    )


class AuthConfig(_Strict):
    """Sign-in, sessions and password hashing (ASVS level 2)."""

    idle_minutes: int = Field(15, ge=1, le=240, description="Signed-in sessions end after this long without use.")
    session_hours: int = Field(12, ge=1, le=24, description="Sessions end this long after sign-in, used or not.")
    password_min_length: int = Field(12, ge=12, le=64, description="Shortest password accepted.")
    lock_after: int = Field(5, ge=3, le=20, description="Failed sign-ins in a row that lock an account.")
    lock_minutes: int = Field(
        15, ge=1, le=1440, description="First lock length; each further lock doubles it (at most a day)."
    )
    pin_lock_after: int = Field(
        5, ge=3, le=10, description="Wrong approval PINs in a row that lock the PIN until an administrator resets it."
    )
    argon2_time_cost: int = Field(3, ge=2, le=20, description="Argon2id passes (see benchmarks/auth.py).")
    argon2_memory_kib: int = Field(
        65536, ge=19456, le=1048576, description="Argon2id memory in KiB (RFC 9106 low-memory profile: 65536)."
    )
    argon2_parallelism: int = Field(4, ge=1, le=8, description="Argon2id lanes.")


class AuditConfig(_Strict):
    """The audit trail."""

    seal_every: int = Field(
        100, ge=1, le=10000, description="Entries per sealed epoch (fixed when the log is created; counted, not timed)."
    )
    retention_years: int = Field(2, ge=1, le=10, description="Years the audit trail is kept (never below 1).")
    syslog_host: str | None = Field(None, description="Remote syslog server for checkpoints (RFC 5424 over TLS).")
    syslog_port: int = Field(6514, ge=1, le=65535, description="Remote syslog TLS port.")
    syslog_ca: str | None = Field(None, description="CA file that signs the syslog server's certificate.")


_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class ReviewConfig(_Strict):
    """What the auditor's daily review flags."""

    office_start: str = Field("09:00", pattern=_HHMM, description="Office hours start (KST).")
    office_end: str = Field("18:00", pattern=_HHMM, description="Office hours end (KST).")
    office_days: list[Annotated[int, Field(ge=0, le=6)]] = Field(
        [0, 1, 2, 3, 4], description="Office days, 0 = Monday … 6 = Sunday; lookups on other days are flagged."
    )
    many_searches: int = Field(
        20, ge=1, le=10000, description="More searches than this by one person in a day are flagged."
    )


class ReleaseConfig(_Strict):
    """The release workflow (열람·제공): requests, approval, listening and export."""

    approval: Literal["head", "team+head"] = Field(
        "head", description="Approval line: the head of the operating department alone (art. 7(3)), or a team "
                            "leader's review before the head's approval (the ledger's 팀장 / 과장 columns).")
    approval_hours: float = Field(24.0, ge=0.5, le=168.0,
                                  description="Hours an approval stays usable; unused past this, the request expires.")
    max_plays: int = Field(10, ge=1, le=1000, description="Plays of each attached call one approval allows.")
    max_exports: int = Field(3, ge=1, le=20,
                             description="Export attempts of each attached call one approval allows (a failed "
                                         "stick can be retried; only a delivered package closes the request).")
    search_margin_min: int = Field(30, ge=0, le=1440,
                                   description="Minutes searched before and after the request's call window.")
    window_max_days: int = Field(31, ge=1, le=366, description="Longest call window one request may name.")
    attachment_max_mb: float = Field(10.0, ge=0.1, le=50.0, description="Largest attached scan (PDF, JPEG, PNG).")
    attachments_max: int = Field(10, ge=1, le=50, description="Most scans attached to one request.")
    keep_years: int = Field(3, ge=1, le=30,
                            description="Years closed requests and their ledger rows are kept, then destroyed.")
    office: str = Field("", max_length=100, description="The office's name printed on forms (기관명).")
    head_title: str = Field("운영부서의 장", max_length=60, description="Title of the approving head on forms.")
    usb_backend: Literal["udisks2", "image"] = Field(
        "image", description="USB sticks: UDisks2 over D-Bus (the box), or filesystem images in usb_images (tests).")
    usb_images: str = Field("", description="Folder whose *.img files are presented as sticks (image backend); "
                                            "empty = DATA/usb-images.")
    usb_dbus_address: str = Field("", max_length=200,
                                  description="D-Bus address of the bus UDisks2 is on (udisks2 backend); empty = the "
                                              "system bus.")
    usb_loop_devices: bool = Field(False, description="Also present loop devices as sticks (udisks2 backend; tests "
                                                      "and the development box, never on a box in service).")


class AlarmsConfig(_Strict):
    """When the health page raises an alarm (shown on every page until acknowledged). The disk's
    thresholds are retention.disk_warn_free_percent and retention.disk_full_free_mb."""

    stuck_call_min: int = Field(
        120, ge=5, le=1440, description="A line in one call longer than this many minutes (a cut wire, a "
        "handset left off-hook) raises an alarm.",
    )
    no_call_days: int = Field(
        7, ge=0, le=365, description="A line with no call for this many days (an unplugged tap) raises an "
        "alarm; 0 = never.",
    )
    review_overdue_days: int = Field(
        7, ge=0, le=366, description="A past day of the audit log nobody signed off for more than this many "
        "days raises an alarm; 0 = never.",
    )
    clock: Literal["auto", "required", "off"] = Field(
        "auto", description="Clock synchronisation: 'auto' alarms when timedatectl says the clock is not "
        "synchronised (unknown on a box without systemd is no alarm); 'required' also alarms when it cannot "
        "be told or the kernel (adjtimex) says unsynchronised; 'off' never.",
    )


class NokboxConfig(_Strict):
    """The whole configuration of one box."""

    audio: AudioConfig = Field(default_factory=AudioConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    vault: VaultConfig = Field(default_factory=VaultConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    ipc: IpcConfig = Field(default_factory=IpcConfig)
    keeper: KeeperConfig = Field(default_factory=KeeperConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    notice: NoticeConfig = Field(default_factory=NoticeConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    time: TimeConfig = Field(default_factory=TimeConfig)
    line: list[LineConfig] = Field(
        default_factory=list,
        description="Declared lines; when empty, one line per channel named 회선 N.",
    )

    @model_validator(mode="after")
    def _lines(self) -> "NokboxConfig":
        seen: dict[int, int] = {}
        for i, ln in enumerate(self.line):
            if ln.channel >= self.audio.channels:
                raise ValueError(
                    f"line[{i}].channel: {ln.channel} is not an input channel "
                    f"(audio.channels = {self.audio.channels})"
                )
            if ln.channel in seen:
                raise ValueError(
                    f"line[{i}].channel: channel {ln.channel} already used by line[{seen[ln.channel]}]"
                )
            seen[ln.channel] = i
        pins: dict[int, str] = {}
        for key, pin in self._pins():
            if pin in pins:
                raise ValueError(f"{key}: GPIO {pin} already used by {pins[pin]}")
            pins[pin] = key
        for i, g in enumerate(self.retention.group):
            bad = [c for c in g.channels if c >= self.audio.channels]
            if bad:
                raise ValueError(f"retention.group[{i}].channels: {bad[0]} is not an input channel "
                                 f"(audio.channels = {self.audio.channels})")
        if self.audio.backend == "alsa" and not self.audio.device:
            raise ValueError("audio.device: required when audio.backend = 'alsa'")
        return self

    def _pins(self):
        for i, ln in enumerate(self.line):
            for attr in ("relay_pin", "feedback_pin", "sense_pin"):
                if getattr(ln, attr) is not None:
                    yield f"line[{i}].{attr}", getattr(ln, attr)
        for attr in ("status_led_pin", "button_pin"):
            if getattr(self.notice, attr) is not None:
                yield f"notice.{attr}", getattr(self.notice, attr)

    @property
    def lines(self) -> list[LineConfig]:
        """The effective line list (declared, or one per channel)."""
        if self.line:
            return list(self.line)
        return [LineConfig(channel=c, name=f"회선 {c + 1}") for c in range(self.audio.channels)]

    @property
    def source_kind(self) -> str:
        """Which audio backend 'auto' resolves to."""
        if self.audio.backend == "auto":
            return "alsa" if self.audio.device else "simulated"
        return self.audio.backend


def _format_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ""
        for item in err["loc"]:
            if isinstance(item, int):
                loc += f"[{item}]"
            else:
                loc += ("." if loc else "") + str(item)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
            # model-level validators already name the key in the message
            if ":" in msg.split(" ", 1)[0]:
                parts.append(msg)
                continue
        parts.append(f"{loc or '(top level)'}: {msg}")
    return "; ".join(parts)


def parse_config(data: dict, source: str = "<config>") -> NokboxConfig:
    """Validate a config mapping; raise ConfigError naming each bad key."""
    try:
        return NokboxConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_error(exc)}") from None


def shared_data() -> bool:
    """The appliance's three services run as separate users sharing DATA (their units set
    ``NOKBOX_SHARED_DATA=1``, as does /usr/bin/nokbox)."""
    return os.environ.get("NOKBOX_SHARED_DATA") == "1"


def shared_mode(private: int) -> int:
    """The mode for a file or folder in DATA that the appliance's three services share (index, audit
    trail, accounts, requests): ``private`` (an owner-only mode such as 0o600) widened to the group
    when the services run as separate users (``NOKBOX_SHARED_DATA=1``, set by their units); the
    default ACLs of systemd/tmpfiles.d/nokbox.conf then decide which group that is. Elsewhere (one
    user: ``nokbox run``, tests) it stays owner-only."""
    if not shared_data():
        return private
    return private | ((private & 0o700) >> 3)


def share_sqlite(db_path) -> None:
    """Give a shared SQLite database and its WAL files the group access of ``shared_mode`` (SQLite
    creates them 0644 & umask, which is 0600 under the units' UMask=0077). Only the owner can; the
    other services find it done."""
    if not shared_data():
        return
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{db_path}{suffix}")
        try:
            if p.stat().st_uid == os.geteuid():
                os.chmod(p, 0o660)
        except (FileNotFoundError, PermissionError):
            pass


def load_config(path: str | os.PathLike | None = None) -> tuple[NokboxConfig, Path | None]:
    """Load defaults, then the given file or /etc/nokbox/nokbox.toml when it exists.

    Returns the config and the path it came from (None for built-in defaults).
    """
    if path is None:
        env = os.environ.get("NOKBOX_CONFIG")
        path = Path(env) if env else DEFAULT_CONFIG_PATH
        if not path.exists():
            return NokboxConfig(), None
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, str(p)), p


def describe_schema() -> list[tuple[str, str, str]]:
    """(key, default, description) for every field, for docs and check-config."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str, values: BaseModel | None = None) -> None:
        # ``values``: the enclosing default, whose own defaults win (the Korean tones, for one)
        for name, field in model.model_fields.items():
            ann = field.annotation
            key = f"{prefix}{name}"
            if values is not None:
                value, known = getattr(values, name), True
            else:
                known = not field.is_required()
                value = field.get_default(call_default_factory=True) if known else None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".", value if isinstance(value, BaseModel) else None)
            else:
                rows.append((key, repr(value) if known else "", field.description or ""))

    walk(NokboxConfig, "", NokboxConfig())
    walk(LineConfig, "line[].")
    walk(RetentionGroup, "retention.group[].")
    return rows
