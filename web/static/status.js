// Live refresh of the status page once a second from /api/status.
"use strict";
(function () {
  var LABELS = JSON.parse(document.getElementById("labels").textContent);
  function label(code) { return code == null ? "\u2014" : (LABELS[code] || String(code)); }
  function set(id, text) { var el = document.getElementById(id); if (el) el.textContent = text; }
  function render(st) {
    set("time", st.time_local.slice(0, 19).replace("T", " ") + " KST");
    set("dev-state", label(st.device.state));
    document.getElementById("dev-state").dataset.state = st.device.state;
    set("dev-xruns", String(st.device.xruns));
    set("dev-losses", String(st.device.losses));
    if (st.disk && st.disk.free_bytes !== undefined) {
      set("disk-free", (st.disk.free_bytes / 1e9).toFixed(1) + " GB (" + st.disk.free_percent + " %)");
    }
    st.lines.forEach(function (ln) {
      var row = document.querySelector('tr[data-channel="' + ln.channel + '"]');
      if (!row) return;
      row.className = ln.state;
      row.querySelector(".state").textContent = label(ln.state);
      row.querySelector("meter").value = ln.level_dbfs;
      row.querySelector(".db").textContent = ln.level_dbfs.toFixed(1);
      row.querySelector(".today").textContent = String(ln.calls_today);
      var ov = row.querySelector(".overrun");
      ov.textContent = String(ln.overrun_seconds);
      ov.classList.toggle("bad", ln.overrun_frames > 0);
      var nt = row.querySelector(".notice");
      if (nt && ln.notice) {
        nt.textContent = ln.notice.alarm ? "경보 · ALARM (" + label(ln.notice.last_failure) + ")" : label(ln.notice.mode);
        nt.classList.toggle("bad", ln.notice.alarm);
      }
    });
    (st.processes || []).forEach(function (pr) {
      var row = document.querySelector('tr[data-process="' + pr.name + '"]');
      if (!row) return;
      row.className = pr.state;
      var cell = row.querySelector(".state");
      cell.textContent = pr.state_label;
      cell.classList.toggle("bad", pr.state !== "running");
      var rs = row.querySelector(".restarts");
      rs.textContent = pr.restarts === null ? "\u2014" : String(pr.restarts);
      rs.classList.toggle("bad", !!pr.restarts);
    });
    var alerts = document.getElementById("alerts");
    alerts.textContent = "";
    if (st.config_error) {
      var p = document.createElement("p"); p.className = "alert";
      p.textContent = "설정 다시 읽기 거부됨 · Config reload refused: " + st.config_error;
      alerts.appendChild(p);
    }
  }
  function tick() {
    // polling is not use: the header keeps the idle sign-out running; 401 means signed out
    fetch("/api/status", { cache: "no-store", headers: { "X-Nokbox-Poll": "1" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login?next=/"); throw new Error("signed out"); }
        return r.json();
      })
      .then(render)
      .catch(function () { set("time", "연결 끊김 · disconnected"); })
      .finally(function () { setTimeout(tick, 1000); });
  }
  setTimeout(tick, 1000);
})();
