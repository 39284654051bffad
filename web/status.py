"""Live status: per-line state, level, calls today, overruns; device and disk; the box's processes."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template, request

from firmware.ipc import IpcError, run_dir, supervisor_view

from .auth import ext, requires
from .labels import LABELS

bp = Blueprint("status", __name__)

PROCESS_LABELS = {"recorder": "녹음기 · recorder", "keeper": "키 관리자 · key keeper", "web": "관리 화면 · page"}
STATE_LABELS = {k: LABELS[k] for k in ("running", "starting", "restarting", "stopped")}


def processes() -> list[dict]:
    """The three processes as ``nokbox run`` supervises them (when it does), and whether the keeper answers."""
    x = ext()
    sup = supervisor_view(run_dir(x.data_dir, x.cfg)) or {}
    rows = [{"name": n, "label": PROCESS_LABELS.get(n, n), "state": c["state"],
             "state_label": STATE_LABELS.get(c["state"], c["state"]), "pid": c["pid"], "restarts": c["restarts"],
             "last_exit": c["last_exit"]} for n, c in (sup.get("children") or {}).items()]
    if not rows:  # not under `nokbox run` (systemd, tests): the page can still tell whether the keeper answers
        try:
            current_app.config["KEEPER"].status()
            state = "running"
        except IpcError:
            state = "stopped"
        rows.append({"name": "keeper", "label": PROCESS_LABELS["keeper"], "state": state,
                     "state_label": STATE_LABELS[state], "pid": None, "restarts": None, "last_exit": None})
    return rows


@bp.get("/")
@requires("status.view")
def page():
    from .tls import current_fingerprint

    return render_template("status.html", status=current_app.config["RECORDER"].status(), processes=processes(),
                           tls_fingerprint=current_fingerprint(ext().data_dir) if request.is_secure else None)


@bp.get("/api/status")
@requires("status.view")
def api():
    return jsonify(current_app.config["RECORDER"].status() | {"processes": processes()})
