// Portcullis dashboard: small progressive enhancements. Everything works without JavaScript.
(function () {
  "use strict";

  // Copy buttons: data-copy names the element whose text to copy.
  document.addEventListener("click", function (e) {
    var button = e.target.closest("button.copy");
    if (!button) return;
    var source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    });
  });

  // Forms with data-confirm ask first.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      e.preventDefault();
    }
  });

  // Builder: show the custom JSON only for rows set to Custom.
  function syncRow(select) {
    var row = select.closest("tr");
    if (!row) return;
    row.classList.toggle("is-custom", select.value === "custom");
    // Limits, conditions and approval only apply to Allow.
    row.classList.toggle("is-off", select.value !== "allow");
  }
  document.querySelectorAll("table.builder select.mode").forEach(function (select) {
    syncRow(select);
    select.addEventListener("change", function () { syncRow(select); });
  });

  // Audit live tail: Server-Sent Events from the API, new rows on top.
  var toggle = document.getElementById("tail-toggle");
  var body = document.getElementById("audit-rows");
  var source = null;
  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) {
      var span = document.createElement(className === "code" ? "code" : "span");
      if (className !== "code") span.className = className;
      span.textContent = text || "";
      td.appendChild(span);
    } else {
      td.textContent = text || "";
    }
    row.appendChild(td);
    return td;
  }
  // Events already on the page are not added twice; servers show by name as in the table.
  var shown = {};
  var serverNames = {};
  if (body) {
    body.querySelectorAll("a[href^='/audit/']").forEach(function (a) {
      shown[a.getAttribute("href").slice(7)] = true;
    });
    document.querySelectorAll("select[name='server_id'] option").forEach(function (o) {
      if (o.value) serverNames[o.value] = o.textContent;
    });
  }
  function addEvent(ev) {
    if (shown[ev.id]) return;
    shown[ev.id] = true;
    var row = document.createElement("tr");
    row.className = "fresh";
    var time = document.createElement("td");
    var link = document.createElement("a");
    link.href = "/audit/" + ev.id;
    link.textContent = ev.ts.replace("T", " ").slice(0, 19);
    time.appendChild(link);
    row.appendChild(time);
    cell(row, ev.identity);
    cell(row, serverNames[ev.server_id] || ev.server_id.slice(0, 8));
    cell(row, ev.method);
    // The tool links to its page, as in the rows the server rendered.
    var tool = cell(row, "");
    if (ev.tool) {
      var toolLink = document.createElement("a");
      toolLink.href = "/servers/" + encodeURIComponent(ev.server_id) + "/tools/" + encodeURIComponent(ev.tool);
      toolLink.className = "tool-link";
      toolLink.textContent = ev.tool;
      tool.appendChild(toolLink);
    }
    var decision = cell(row, "");
    var badge = document.createElement("span");
    badge.className = "decision decision-" + ev.decision;
    badge.textContent = ev.decision;
    decision.appendChild(badge);
    if (ev.confirmation) {
      var answer = document.createElement("span");
      answer.className = "confirmation confirmation-" + ev.confirmation;
      answer.textContent = ev.confirmation;
      decision.appendChild(document.createTextNode(" "));
      decision.appendChild(answer);
    }
    cell(row, ev.rule, "code");
    var status = ev.upstream_status === null ? "" : String(ev.upstream_status);
    if (ev.upstream_error) {
      status = status ? status + " (failed)" : "no answer";
      cell(row, status).title = ev.upstream_error;
    } else {
      cell(row, status);
    }
    cell(row, ev.latency_ms === null ? "" : ev.latency_ms.toFixed(1) + " ms");
    var empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    body.insertBefore(row, body.firstChild);
  }
  if (toggle && body && window.EventSource) {
    toggle.addEventListener("click", function () {
      if (source) {
        source.close();
        source = null;
        toggle.textContent = "Live tail";
        toggle.classList.remove("primary");
        return;
      }
      source = new EventSource(toggle.dataset.tail);
      source.addEventListener("events", function (msg) {
        JSON.parse(msg.data).events.forEach(addEvent);
      });
      toggle.textContent = "Stop tail";
      toggle.classList.add("primary");
    });
  }
})();
