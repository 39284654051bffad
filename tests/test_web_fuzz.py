"""Every query parameter of every page, fuzzed (hypothesis): whatever a browser sends in the URL, the
page answers with a page or a refusal (a Korean 4xx), never a 500, and never shows a traceback or a
file path. The parameter names are read from the page's own source, so a new one is fuzzed at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.people.accounts import ROLES, can

from .authutil import PASSWORD
from .test_roles import PUBLIC, TC, _url
from .test_web_matrix import site  # noqa: F401 - the page over an in-process recorder and key keeper

WEB = Path(__file__).resolve().parent.parent / "web"
NAMES = sorted(set(re.findall(r"""args(?:\.get\(|\[)\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""",
                              "\n".join(p.read_text() for p in WEB.glob("*.py"))))
               | {"page", "cursor", "before", "after", "q", "id"})
# values a person or an attacker might put in a URL: numbers past every limit, dates out of range,
# text in any script, control characters, path tricks
VALUES = st.one_of(
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.sampled_from(["", "0", "-1", "1e309", "nan", "inf", "0001-01-01", "9999-12-31", "2026-02-30", "../../etc/passwd",
                     "%00", "\x00", "' OR 1=1 --", "<script>", "99999999999999999999999", "2026-13-01", "１２",
                     "2026-0001", "grant:0", "a" * 5000]),
    st.text(max_size=40),
)
QUERY = st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4)


def _get_routes(app):
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC - {"auth.login"} or "GET" not in rule.methods:
            continue
        path = _url(rule)
        if "<" not in path:
            out.append((rule.endpoint, path, app.view_functions[rule.endpoint]._nokbox_perm))
    return out


@pytest.mark.parametrize("role", ROLES)
def test_no_query_gives_a_500(site, role):
    app, _ = site
    x = app.extensions["nokbox"]
    user = x.accounts.get(role)
    routes = [(e, p) for e, p, perm in _get_routes(app) if perm is None or can(user, perm)]
    assert len(routes) >= 3
    tc = TC(app)
    tc.sign_in(role, PASSWORD[role])

    @settings(max_examples=12 * len(routes), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(routes), QUERY)
    def probe(route, query):
        endpoint, path = route
        r = tc.c.get(path, query_string=query, environ_base={"REMOTE_ADDR": tc.addr},
                     headers={"X-Nokbox-Poll": "1"}, buffered=False)
        try:
            if r.mimetype == "text/event-stream":
                return  # the meter stream ignores its query; reading it would take its 30 s
            body = r.get_data(as_text=True)
        finally:
            r.close()
        assert r.status_code < 500, (endpoint, query, r.status_code)
        assert "Traceback" not in body and "/work/" not in body and "site-packages" not in body, (endpoint, query)

    probe()
