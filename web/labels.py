"""Korean · English words for the codes the box uses inside (states, backends, modes): a person
reads ``대기 · Idle``, never ``idle``. One table for every page and the live scripts (``/static``)."""

from __future__ import annotations

LABELS: dict[str, str] = {
    # a line
    "idle": "대기 · Idle", "in_call": "통화 중 · In call", "notice_playing": "안내 중 · Notice playing",
    "fault": "고장 · Fault", "disabled": "꺼짐 · Disabled",
    # the capture device
    "starting": "시작 중 · Starting", "running": "동작 · Running", "lost": "끊김 · Lost", "eof": "입력 끝 · Input ended",
    "stopped": "멈춤 · Stopped", "failed": "실패 · Failed", "restarting": "재시작 대기 · Restarting",
    # audio and GPIO backends
    "simulated": "모의 회선 · Simulated lines", "alsa": "ALSA 입력 · ALSA capture", "wav": "WAV 파일 · WAV file",
    "mock": "모의 GPIO · Simulated GPIO", "lgpio": "GPIO (lgpio)",
    # notice modes and results
    "on": "안내 방송 · On", "off": "끔 · Off", "beep": "신호음만 · Beep only",
    "played": "재생됨 · Played", "output_busy": "출력 사용 중 · Output busy", "relay_fault": "릴레이 고장 · Relay fault",
    "output_failed": "출력 실패 · Output failed", "no_relay": "릴레이 없음 · No relay",
    # the technician's test call
    "recording": "녹음 중 · Recording", "playing": "재생 중 · Playing back", "done": "완료 · Done",
    # accounts
    "active": "사용 중 · Active", "restricted": "사용 제한 · Restricted",
}


def label(code) -> str:
    """The person's words for ``code``; an unknown code is shown as it is (better than nothing)."""
    if code is None:
        return "—"
    return LABELS.get(str(code), str(code))
