// radstream review: slice slider, overlay opacity, live operations page. No external code.
(function () {
  "use strict";
  function viewer() {
    var box = document.getElementById("viewer");
    var slider = document.getElementById("slice");
    if (!box || !slider) { return; }
    var id = encodeURIComponent(box.dataset.result);
    var img = document.getElementById("slice-img");
    var ov = document.getElementById("overlay-img");
    var out = document.getElementById("slice-no");
    var cache = {};
    var base = box.dataset.overlayBase || ("/results/" + id + "/overlay/");
    var choice = document.getElementById("seg-choice");
    if (choice) {
      choice.addEventListener("change", function () {
        base = choice.value;
        show(Number(slider.value));
      });
    }
    function show(k) {
      img.src = "/results/" + id + "/slices/" + k + ".png";
      if (ov) { ov.src = base + k + ".png"; }
      out.textContent = String(k + 1);
      box.dataset.current = String(k);
      // warm the neighbours so dragging feels immediate
      [k - 1, k + 1].forEach(function (n) {
        if (n >= 0 && n < Number(box.dataset.depth) && !cache[n]) {
          cache[n] = new Image(); cache[n].src = "/results/" + id + "/slices/" + n + ".png";
        }
      });
    }
    slider.addEventListener("input", function () { show(Number(slider.value)); });
    var op = document.getElementById("opacity");
    if (op && ov) {
      var opOut = document.getElementById("opacity-no");
      op.addEventListener("input", function () {
        ov.style.opacity = String(Number(op.value) / 100);
        opOut.textContent = op.value;
      });
    }
  }
  function ops() {
    var live = document.getElementById("ops-live");
    if (!live) { return; }
    var stamp = document.getElementById("ops-updated");
    setInterval(function () {
      fetch(live.dataset.refresh, { credentials: "same-origin" }).then(function (r) {
        if (r.ok) { return r.text(); }
        throw new Error(String(r.status));
      }).then(function (html) {
        live.innerHTML = html;  // server-rendered, escaped fragment
        stamp.textContent = "updated " + new Date().toLocaleTimeString();
      }).catch(function (e) { stamp.textContent = "refresh failed (" + e.message + ")"; });
    }, 5000);
  }
  document.addEventListener("DOMContentLoaded", function () { viewer(); ops(); });
}());
