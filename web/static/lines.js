// Live meters of the line map from the server-sent events of /api/levels.
"use strict";
(function () {
  var LABELS = JSON.parse(document.getElementById("labels").textContent);
  function label(code) { return code == null ? "\u2014" : (LABELS[code] || String(code)); }
  var badge = document.getElementById("stream-state");
  var grid = document.getElementById("lines"), updates = 0;
  function render(msg) {
    grid.dataset.updates = String(++updates);
    msg.lines.forEach(function (ln) {
      var card = document.querySelector('section.card[data-channel="' + ln.channel + '"]');
      if (!card) return;
      card.className = "card " + ln.state;
      var db = Math.max(-90, Math.min(0, ln.level_dbfs));
      card.querySelector(".meter > span").style.width = ((db + 90) / 90 * 100).toFixed(1) + "%";
      card.querySelector(".meter").setAttribute("aria-valuenow", String(ln.level_dbfs));
      card.querySelector(".db").textContent = ln.level_dbfs.toFixed(1);
      var st = card.querySelector(".badge.state");
      st.className = "badge state " + ln.state;
      st.textContent = label(ln.state);
      var t = ln.test;
      card.querySelector(".test").textContent = t ? label(t.phase) + (t.failure ? " (" + label(t.failure) + ")" : "") : "\u2014";
    });
  }
  var es = new EventSource("/api/levels");
  es.onopen = function () { badge.textContent = "실시간 · live"; badge.className = "badge idle"; };
  es.onmessage = function (e) { render(JSON.parse(e.data)); };
  es.addEventListener("down", function () { badge.textContent = "녹음기 응답 없음 · recorder not answering"; badge.className = "badge fault"; });
  es.onerror = function () {
    badge.textContent = "다시 연결 중 · reconnecting"; badge.className = "badge";
    if (es.readyState === EventSource.CLOSED) {
      fetch("/api/status", { cache: "no-store", headers: { "X-Nokbox-Poll": "1" } }).then(function (r) {
        if (r.status === 401) window.location.assign("/login?next=/lines");
        else setTimeout(function () { window.location.reload(); }, 3000);
      });
    }
  };
})();
