"""The day's call list: metadata for the roles that may list calls, masked numbers for the
oversight roles (``firmware/release/calllist.py``). Every view is an audit entry."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, current_app, g, render_template, request

from firmware.release.calllist import list_calls
from firmware.index import KST
from firmware.vault.retention import open_holds
from firmware.vaultdb import connect_vault

from .auth import day_arg, ext, requires, source

bp = Blueprint("calls", __name__)


@bp.get("/calls")
@requires("calls.list")
def index():
    x = ext()
    today = dt.datetime.fromtimestamp(x.audit.clock.wall(), KST).date()
    day = day_arg(request.args.get("day") or today.isoformat())
    line = None
    if request.args.get("line"):
        text = request.args["line"].strip()
        if not (text.isdigit() and int(text) < max(x.cfg.audio.channels, 64)):
            return render_template("error.html", code=400, message="회선 번호가 잘못되었습니다 · no such line number"), 400
        line = int(text)
    con = connect_vault(x.data_dir)
    try:
        holds = open_holds(con)
    finally:
        con.close()
    cl = list_calls(x.data_dir, g.user, x.audit, day, keeper=current_app.config["KEEPER"], line=line,
                    source=source(), holds=holds)
    return render_template("calls.html", cl=cl, today=today, prev=day - dt.timedelta(days=1),
                           next=day + dt.timedelta(days=1))
