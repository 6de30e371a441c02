// The reader's worklist: filters, keyset paging ("More"), live updates and keyboard shortcuts.
//
// Live updates: every POLL_MS the first page is asked for again with If-None-Match. When it
// changed, the rows already on screen are fetched again (as many pages as the reader had
// loaded) and re-rendered in place: new studies appear where their priority puts them, while
// the scroll position, the selected row, the focused row and the filters stay as they were.
"use strict";
(() => {
  const { api, el, fmtScore, fmtPriority, fmtWaiting, fmtPersonName, requireLogin } = window.Sightline;
  const POLL_MS = 4000;
  const FLAGS = new Set(["claimed", "reported"]); // sent only when chosen: older APIs refuse them
  const state = { rows: [], cursor: null, etag: null, firstPage: null, selected: null, generation: 0, timer: null };
  const $ = (id) => document.getElementById(id);

  function filterParams(cursor) {
    const params = new URLSearchParams();
    for (const [name, raw] of new FormData($("filters"))) {
      const value = String(raw).trim();
      if (!value) continue;
      if (name === "received_after" || name === "received_before") {
        params.set(name, new Date(value).toISOString()); // the reader's local time, sent as UTC
      } else if (!FLAGS.has(name) || value === "true" || value === "false") {
        params.set(name, value);
      }
    }
    if (cursor) params.set("cursor", cursor);
    return params;
  }

  const failureReason = (row) => row.failure_reason || row.error_code || row.error_message || null;

  function aiCell(row) {
    const td = el("td", undefined, "ai");
    if (row.status === "analysed" && row.triage_score !== null && row.triage_score !== undefined) {
      const score = el("span", fmtScore(row.triage_score), "score");
      if (row.triage_score >= 0.5) score.classList.add("hi");
      td.append(score, " ", el("span", row.predicted_label || "", "label"));
    } else {
      const words = { pending: "pending", failed: "failed", not_applicable: "not applicable" };
      td.append(el("span", words[row.status] || row.status, `state ${row.status}`));
    }
    return td;
  }

  function patientCell(row) {
    const td = el("td", undefined, "patient");
    const link = el("a", fmtPersonName(row.patient_name) || row.patient_id || "(no name)", "open");
    link.href = `/studies/${encodeURIComponent(row.study_instance_uid)}`;
    td.append(link);
    if (row.patient_id) td.append(el("span", row.patient_id, "muted id"));
    return td;
  }

  function statusCell(row) {
    const reason = row.status === "failed" ? failureReason(row) : null;
    const td = el("td", reason ? `failed: ${reason}` : row.status.replace("_", " "), `status ${row.status}`);
    return td;
  }

  function reportedText(row) {
    if (row.reported_at === undefined) return "—";
    return row.reported_at ? `yes, ${new Date(row.reported_at).toLocaleString()}` : "no";
  }

  function rowElement(row) {
    const tr = el("tr", undefined, "row");
    tr.dataset.uid = row.study_instance_uid;
    const priority = el("td", fmtPriority(row.clinical_priority), `priority p${row.clinical_priority}`);
    const series = row.series_count === undefined || row.series_count === null ? "—" : row.series_count;
    const waiting = el("td", fmtWaiting(row.received_at), "waiting");
    waiting.title = `received ${new Date(row.received_at).toLocaleString()}`;
    tr.append(priority, aiCell(row), patientCell(row), el("td", row.modality || "—", "opt"),
      el("td", row.study_date || "—", "opt date"), el("td", row.accession_number || "—", "opt"),
      el("td", (row.synthetic ? "[SYNTHETIC] " : "") + (row.description || ""), "opt description"),
      el("td", `${series} / ${row.instance_count}`, "opt counts"), statusCell(row),
      el("td", row.claimed_by ?? "—", "claimed"), waiting, el("td", reportedText(row), "reported"));
    if (row.study_instance_uid === state.selected) tr.classList.add("selected");
    return tr;
  }

  /** Draw state.rows, keeping the scroll position and the focused row. */
  function render() {
    const focusedUid = document.activeElement?.closest?.("tr.row")?.dataset.uid;
    const scrollY = window.scrollY;
    $("rows").replaceChildren(...state.rows.map(rowElement));
    if (!state.rows.some((row) => row.study_instance_uid === state.selected)) state.selected = null;
    if (focusedUid) rowByUid(focusedUid)?.querySelector("a.open")?.focus({ preventScroll: true });
    window.scrollTo(window.scrollX, scrollY);
    $("more").hidden = !state.cursor;
    $("message").textContent = state.rows.length ? "" : "No studies match.";
  }

  const rowByUid = (uid) => [...$("rows").children].find((tr) => tr.dataset.uid === uid);

  async function fetchPage(cursor, headers = {}) {
    return api(`/api/v1/worklist?${filterParams(cursor)}`, { headers, cache: "no-store" });
  }

  async function load(reset) {
    const generation = reset ? ++state.generation : state.generation;
    try {
      const response = await fetchPage(reset ? null : state.cursor);
      const page = await response.json();
      if (generation !== state.generation) return; // the filters changed meanwhile
      if (reset) {
        Object.assign(state, { rows: [], selected: null, etag: response.headers.get("ETag") });
        state.firstPage = JSON.stringify(page);
      }
      state.rows = state.rows.concat(page.items);
      state.cursor = page.next_cursor;
      render();
    } catch (error) {
      $("message").textContent = error.message;
    }
  }

  /** Ask for the first page again; when it changed, refetch as many rows as are loaded. */
  async function poll() {
    const generation = state.generation;
    const response = await fetchPage(null, state.etag ? { "If-None-Match": state.etag } : {});
    if (response.status === 304) return;
    const first = await response.json();
    const text = JSON.stringify(first);
    if (text === state.firstPage || generation !== state.generation) return;
    let rows = first.items;
    let cursor = first.next_cursor;
    while (cursor && rows.length < state.rows.length) {
      const next = await (await fetchPage(cursor)).json();
      rows = rows.concat(next.items);
      cursor = next.next_cursor;
    }
    if (generation !== state.generation) return;
    Object.assign(state, { rows, cursor, firstPage: text, etag: response.headers.get("ETag") });
    render();
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  function schedulePoll() {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => {
      try {
        if (window.Sightline.token()) await poll();
        document.querySelectorAll("#rows tr.row").forEach((tr, i) => {
          const row = state.rows[i];
          if (row && row.study_instance_uid === tr.dataset.uid) {
            tr.querySelector(".waiting").textContent = fmtWaiting(row.received_at);
          }
        });
      } catch (error) {
        $("message").textContent = error.message;
      }
      schedulePoll();
    }, POLL_MS);
  }

  function select(uid) {
    state.selected = uid;
    for (const tr of $("rows").children) {
      const on = tr.dataset.uid === uid;
      tr.classList.toggle("selected", on);
      tr.setAttribute("aria-selected", String(on));
    }
    const tr = rowByUid(uid);
    if (tr) {
      tr.querySelector("a.open").focus({ preventScroll: true });
      tr.scrollIntoView({ block: "nearest" });
    }
  }

  function move(step) {
    const uids = state.rows.map((row) => row.study_instance_uid);
    if (!uids.length) return;
    const at = uids.indexOf(state.selected);
    const next = at < 0 ? (step > 0 ? 0 : uids.length - 1) : Math.min(uids.length - 1, Math.max(0, at + step));
    select(uids[next]);
  }

  function openSelected() {
    const link = state.selected && rowByUid(state.selected)?.querySelector("a.open");
    if (link) location.href = link.href;
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || $("help").open) return;
    const target = event.target;
    // Typing in a field; a closed dialog does not count (its Close button can keep the focus).
    if (target.closest("input, select, textarea, [contenteditable]")) return;
    const inLink = target.closest("a, button") !== null; // Enter there is the element's own
    const actions = {
      j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
      o: openSelected, Enter: () => { if (!inLink) openSelected(); },
      "/": () => $("filters").querySelector("select, input").focus(), "?": () => $("help").showModal(),
    };
    const action = actions[event.key];
    if (!action || (inLink && event.key === "Enter")) return;
    event.preventDefault();
    action();
  }

  function worklistPage() {
    const filters = $("filters");
    filters.addEventListener("submit", (event) => { event.preventDefault(); load(true); });
    filters.addEventListener("reset", () => setTimeout(() => load(true))); // after the fields clear
    $("more").addEventListener("click", () => load(false));
    $("help-open").addEventListener("click", () => $("help").showModal());
    $("rows").addEventListener("click", (event) => {
      const tr = event.target.closest("tr.row");
      if (!tr || event.target.closest("a")) return; // the link itself handles new-tab clicks
      select(tr.dataset.uid);
      openSelected();
    });
    document.addEventListener("keydown", onKey);
    requireLogin(() => { load(true); schedulePoll(); });
  }

  window.Sightline.worklistPage = worklistPage;
  worklistPage();
})();
