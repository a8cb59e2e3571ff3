// kct dashboard: polls /dashboard/state.json and redraws. No dependencies.
// Data is written with textContent only (never parsed as HTML).
"use strict";

(function () {
  const STATE_URL = "/dashboard/state.json";
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  let interval = 2000;

  function $(id) { return document.getElementById(id); }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function badge(status) { return el("span", status, "badge s-" + status); }

  function row(cells, attrs) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell);
      else if (cell && typeof cell === "object") {
        td.textContent = String(cell.text);
        td.className = cell.cls || "";
      } else td.textContent = cell === null || cell === undefined ? "-" : String(cell);
      tr.appendChild(td);
    }
    for (const [key, value] of Object.entries(attrs || {})) tr.setAttribute(key, value);
    return tr;
  }

  function fill(tableId, rows, emptyId, emptyText) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren(...rows);
    $(tableId).hidden = rows.length === 0;
    $(emptyId).textContent = rows.length === 0 ? emptyText : "";
  }

  function seconds(value) {
    if (value === null || value === undefined) return "?";
    return value < 10 ? value.toFixed(2) : value.toFixed(1);
  }

  function age(ms, now) {
    const s = Math.max(0, Math.floor((now - ms) / 1000));
    if (s >= 3600) return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m ago";
    if (s >= 60) return Math.floor(s / 60) + "m" + (s % 60) + "s ago";
    return s + "s ago";
  }

  function projections(report) {
    const health = $("health");
    if (!report) {
      health.replaceWith(Object.assign(badge("no check yet"), { id: "health" }));
      fill("projections", [], "projections-empty", "no check yet (the monitor checks every interval)");
      return;
    }
    health.replaceWith(Object.assign(badge(report.health), { id: "health" }));
    const rows = report.projections.map((p) => row(
      [
        { text: p.name, cls: "name wrap" }, p.kind, { text: p.partitions.length, cls: "num" },
        { text: p.lag_events, cls: "num lag" }, { text: seconds(p.lag_seconds), cls: "num lag-seconds" },
        { text: p.members, cls: "num" },
        Object.assign(badge(p.status), { className: "badge status s-" + p.status }),
        p.status === "OK" ? "" : p.reason,
      ],
      { "data-projection": p.name, class: p.lag_events > 0 ? "behind" : "" },
    ));
    fill("projections", rows, "projections-empty", "no projection is watched (monitor.projections)");
  }

  function sagas(data, now) {
    const counts = $("saga-counts");
    if (!data) {
      counts.replaceChildren();
      $("saga-projection").textContent = "";
      $("stuck-total").textContent = "";
      fill("stuck", [], "sagas-empty", "no saga-state projection here");
      return;
    }
    $("saga-projection").textContent = data.projection;
    if (data.error) {
      counts.replaceChildren(el("span", data.error, "problem"));
      fill("stuck", [], "sagas-empty", "");
      return;
    }
    counts.replaceChildren(...Object.entries(data.counts).map(([status, n]) => {
      const box = el("span", null, "count");
      box.setAttribute("data-saga-status", status);
      box.append(badge(status), el("b", n));
      return box;
    }));
    $("stuck-total").textContent = "(" + data.stuck_total + ")";
    const rows = data.stuck.map((s) => row(
      [el("code", s.saga_id), s.saga_type, (s.compensating ? "undo " : "") + (s.current || "-"),
        age(s.updated_at_ms, now), s.trace_id ? el("code", s.trace_id) : "-"],
      { "data-saga": s.saga_id },
    ));
    fill("stuck", rows, "sagas-empty", "no stuck saga");
  }

  function deadLetters(topics) {
    if (!topics) {
      fill("dead-letters", [], "dead-letters-empty", "dead letters are not shown here");
      return;
    }
    const rows = [];
    for (const t of topics) {
      const topic = { text: t.topic, cls: "wrap" };
      if (t.error) { rows.push(row([topic, { text: t.error, cls: "problem" }, "?"])); continue; }
      for (const [reason, n] of Object.entries(t.reasons)) {
        rows.push(row([topic, reason, { text: n, cls: "num" }],
          { "data-topic": t.topic, "data-reason": reason }));
      }
    }
    const names = topics.map((t) => t.topic).join(", ") || "no topic";
    fill("dead-letters", rows, "dead-letters-empty", "none in " + names);
  }

  function leases(held) {
    if (!held) {
      fill("leases", [], "leases-empty", "locks are shown by the sidecar's dashboard");
      return;
    }
    const rows = held.map((l) => row(
      [el("code", l.aggregate_type + "/" + l.aggregate_id), l.topic, { text: l.fence, cls: "num fence" },
        { text: l.expires_in.toFixed(1), cls: "num" }],
      { "data-aggregate": l.aggregate_type + "/" + l.aggregate_id },
    ));
    fill("leases", rows, "leases-empty", "no lock held");
  }

  function draw(state) {
    $("service").textContent = state.service;
    document.title = "kct " + state.service;
    const now = state.generated_at_ms;
    projections(state.monitor);
    sagas(state.sagas, now);
    deadLetters(state.dead_letters);
    leases(state.leases);
    const checked = state.monitor ? new Date(state.monitor.checked_at * 1000) : new Date(now);
    $("updated").textContent = "checked " + checked.toLocaleTimeString() +
      " · refreshed every " + state.interval + " s";
    $("problem").hidden = true;
    interval = Math.max(500, state.interval * 1000);
  }

  async function poll() {
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const answer = await fetch(STATE_URL, { headers, cache: "no-store" });
      const body = await answer.json();
      if (!answer.ok) throw new Error((body.reasons || [body.error]).join("; "));
      draw(body);
    } catch (error) {
      $("problem").textContent = "cannot refresh: " + error.message;
      $("problem").hidden = false;
    }
    setTimeout(poll, interval);
  }

  poll();
})();
