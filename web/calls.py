"""The day's call list: metadata for the roles that may list calls, masked numbers for the
oversight roles (``firmware/release/calllist.py``). Every view is an audit entry."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, abort, current_app, g, render_template, request

from firmware.release.calllist import list_calls
from firmware.index import KST
from firmware.vault.retention import open_holds
from firmware.vaultdb import connect_vault

from .auth import ext, requires, source

bp = Blueprint("calls", __name__)


@bp.get("/calls")
@requires("calls.list")
def index():
    x = ext()
    today = dt.datetime.fromtimestamp(x.audit.clock.wall(), KST).date()
    try:
        day = dt.date.fromisoformat(request.args.get("day") or today.isoformat())
        line = int(request.args["line"]) if request.args.get("line") else None
    except ValueError:
        abort(400)
    con = connect_vault(x.data_dir)
    try:
        holds = open_holds(con)
    finally:
        con.close()
    cl = list_calls(x.data_dir, g.user, x.audit, day, keeper=current_app.config["KEEPER"], line=line,
                    source=source(), holds=holds)
    return render_template("calls.html", cl=cl, today=today, prev=day - dt.timedelta(days=1),
                           next=day + dt.timedelta(days=1))
