"""Live status: per-line state, level, calls today, overruns; device and disk."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template

from .auth import requires

bp = Blueprint("status", __name__)


@bp.get("/")
@requires("status.view")
def page():
    return render_template("status.html", status=current_app.config["RECORDER"].status())


@bp.get("/api/status")
@requires("status.view")
def api():
    return jsonify(current_app.config["RECORDER"].status())
