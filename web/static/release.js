// Export progress on the request page: polls the page's status of the running export.
(function () {
  var p = document.getElementById("export-progress");
  if (!p) return;
  var bar = document.getElementById("export-bar"), phase = document.getElementById("export-phase"),
      bytes = document.getElementById("export-bytes");
  var words = {pack: "패키지 작성 · packing", write: "USB에 쓰는 중 · writing", verify: "다시 읽어 확인 · verifying"};
  function tick() {
    fetch(p.dataset.status, {headers: {"X-Nokbox-Poll": "1"}, credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (s.state !== "running") { window.location.reload(); return; }
        phase.textContent = words[s.phase] || s.phase;
        bar.max = s.total || 1; bar.value = s.done;
        bytes.textContent = (s.done / 1e6).toFixed(1) + " / " + (s.total / 1e6).toFixed(1) + " MB";
        setTimeout(tick, 500);
      })
      .catch(function () { setTimeout(tick, 2000); });
  }
  tick();
})();
