// The first-run wizard: a print button (no inline script: the CSP forbids it).
document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("[data-print]")) {
    b.addEventListener("click", () => window.print());
  }
});
