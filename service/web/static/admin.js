// The admin page: queue depth, processing time, failures, reader/model agreement and the
// audit trail download. Needs an admin token; any other token gets the API's 403 shown.
"use strict";
(() => {
  const { api, el, requireLogin } = window.Sightline;
  const $ = (id) => document.getElementById(id);

  function fill(section, rows) {
    const body = $(section).querySelector("tbody");
    body.replaceChildren(...rows.map((cells) => {
      const tr = el("tr");
      cells.forEach((cell, i) => tr.append(i === 0 ? el("th", cell) : el("td", cell)));
      tr.firstChild.scope = "row";
      return tr;
    }));
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", "none", "muted"));
      body.append(tr);
    }
  }

  const seconds = (s) => (s === null || s === undefined ? "—" : `${Number(s).toFixed(1)} s`);
  const percent = (r) => (r === null || r === undefined ? "—" : `${(100 * r).toFixed(0)} %`);

  function confusion(feedback) {
    const labels = feedback.labels || [];
    const table = $("confusion").querySelector("table");
    const head = el("tr");
    head.append(el("th", "model \\ reader"), ...labels.map((label) => el("th", label)));
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(...labels.map((modelLabel) => {
      const tr = el("tr");
      const th = el("th", modelLabel);
      th.scope = "row";
      tr.append(th, ...labels.map((readerLabel) => {
        const n = feedback.confusion?.[modelLabel]?.[readerLabel] ?? 0;
        return el("td", n, modelLabel === readerLabel && n ? "agree" : undefined);
      }));
      return tr;
    }));
  }

  function show(stats) {
    fill("queue", Object.entries(stats.queue || {}).map(([status, n]) => [status, n]));
    const p = stats.processing_seconds || {};
    fill("processing", [["jobs", p.count ?? 0], ["p50", seconds(p.p50)], ["p95", seconds(p.p95)]]);
    const f = stats.failures || {};
    fill("failures", [["total", f.total ?? 0], ...Object.entries(f.by_code || {})]);
    const recent = $("failures").querySelector("table.recent tbody");
    const recentRows = (f.recent || []).map((r) => [r.error_code, r.finished_at ? new Date(r.finished_at).toLocaleString() : "—"]);
    recent.replaceChildren(...(recentRows.length ? recentRows : [["none"]]).map((cells) => {
      const tr = el("tr");
      tr.append(...cells.map((cell) => el("td", cell)));
      return tr;
    }));
    const feedback = stats.feedback || {};
    fill("agreement", Object.entries(feedback.agreement || {}).map(([label, a]) =>
      [label, a.agreed, a.total, percent(a.rate)]));
    confusion(feedback);
    $("stats").hidden = false;
  }

  async function downloadAudit() {
    const message = $("audit-message");
    message.textContent = "Preparing…";
    try {
      const blob = await (await api("/api/v1/audit/export")).blob();
      const link = el("a");
      link.href = URL.createObjectURL(blob);
      link.download = `sightline-audit-${new Date().toISOString().slice(0, 10)}.jsonl`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      message.textContent = `Downloaded ${blob.size} bytes.`;
    } catch (error) {
      message.textContent = error.message;
    }
  }

  async function load() {
    const message = $("message");
    try {
      show(await (await api("/api/v1/admin/stats", { cache: "no-store" })).json());
      message.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      $("stats").hidden = true;
      message.textContent = error.status === 403 ? `This page needs an admin token (${error.message})` : error.message;
    }
  }

  $("audit-download").addEventListener("click", downloadAudit);
  requireLogin(load);
})();
