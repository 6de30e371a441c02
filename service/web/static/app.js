// Sightline pages. Data comes from the API with the reader's bearer token; every value is
// written with textContent (never innerHTML), so nothing a PACS sends can run as script.
"use strict";
const Sightline = (() => {
  const PRIORITY = ["routine", "urgent", "stat"];
  const token = () => sessionStorage.getItem("sightline.token");

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function requireLogin(onReady) {
    const form = document.getElementById("login");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem("sightline.token", document.getElementById("token").value.trim());
      form.style.display = "none";
      onReady();
    });
    if (token()) onReady(); else form.style.display = "flex";
  }

  async function api(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
    if (response.status === 401) {
      sessionStorage.removeItem("sightline.token");
      document.getElementById("login").style.display = "flex";
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : response.statusText);
    }
    return response;
  }

  async function imageUrl(path) {
    const blob = await (await api(path)).blob();
    return URL.createObjectURL(blob);
  }

  const fmtScore = (s) => (s === null || s === undefined ? "—" : s.toFixed(3));

  function worklistRow(study) {
    const tr = el("tr", undefined, "row");
    tr.dataset.uid = study.study_instance_uid;
    const score = el("td", fmtScore(study.triage_score), "score");
    if (study.triage_score >= 0.5) score.classList.add("hi");
    tr.append(el("td", PRIORITY[study.clinical_priority] || study.clinical_priority), score,
      el("td", study.predicted_label || "—"), el("td", study.status), el("td", study.patient_id),
      el("td", study.accession_number), el("td", study.study_date),
      el("td", (study.synthetic ? "[SYNTHETIC] " : "") + (study.description || "")),
      el("td", new Date(study.received_at).toLocaleString()));
    tr.addEventListener("click", () => {
      location.href = `/studies/${encodeURIComponent(study.study_instance_uid)}`;
    });
    return tr;
  }

  function worklistPage() {
    let cursor = null;
    const rows = document.getElementById("rows");
    const more = document.getElementById("more");
    const message = document.getElementById("message");
    async function load(reset) {
      if (reset) { cursor = null; rows.replaceChildren(); }
      const params = new URLSearchParams({ limit: "50" });
      const status = document.getElementById("status").value;
      if (status) params.set("status", status);
      if (cursor) params.set("cursor", cursor);
      try {
        const page = await (await api(`/api/v1/worklist?${params}`)).json();
        page.items.forEach((study) => rows.append(worklistRow(study)));
        cursor = page.next_cursor;
        more.hidden = !cursor;
        message.textContent = rows.children.length ? "" : "No studies.";
      } catch (error) { message.textContent = error.message; }
    }
    document.getElementById("refresh").addEventListener("click", () => load(true));
    document.getElementById("status").addEventListener("change", () => load(true));
    more.addEventListener("click", () => load(false));
    requireLogin(() => load(true));
  }

  function probabilitiesTable(probabilities) {
    const table = el("table");
    Object.entries(probabilities).sort((a, b) => b[1] - a[1]).forEach(([label, p]) => {
      const tr = el("tr");
      tr.append(el("td", label), el("td", p.toFixed(3), "score"));
      table.append(tr);
    });
    return table;
  }

  function instanceList(instances) {
    const table = el("table");
    for (const instance of instances) {
      const tr = el("tr");
      const state = instance.not_applicable_reason ? `not applicable: ${instance.not_applicable_reason}`
        : instance.result ? `${instance.result.label} · tumour probability ${fmtScore(instance.result.tumour_score)}`
          : `analysis ${instance.job ? instance.job.status : "not queued"}` +
            (instance.job && instance.job.error_code ? ` (${instance.job.error_code})` : "");
      tr.append(el("td", `Instance ${instance.instance_number ?? ""}`), el("td", state));
      table.append(tr);
    }
    return table;
  }

  async function instanceView(instance) {
    const box = el("section");
    box.append(el("h3", `Instance ${instance.instance_number ?? ""} · ${instance.sop_instance_uid}`));
    const result = instance.result;
    if (!result) {
      box.append(el("p", `Analysis ${instance.job ? instance.job.status : "not queued"}` +
        (instance.job && instance.job.error_code ? ` (${instance.job.error_code})` : ""), "muted"));
      return box;
    }
    const base = `/api/v1/instances/${encodeURIComponent(instance.sop_instance_uid)}`;
    const viewer = el("div", undefined, "viewer");
    const stack = el("div", undefined, "stack");
    const original = el("img");
    original.alt = "original image";
    const heat = el("img", undefined, "layer");
    heat.alt = "Grad-CAM heatmap";
    const outline = el("img", undefined, "layer");
    outline.alt = "contour";
    outline.hidden = true;
    stack.append(original, heat, outline);
    [original.src, heat.src, outline.src] = await Promise.all(
      ["original.png", "heatmap.png", "contour.png"].map((name) => imageUrl(`${base}/${name}`)));
    heat.style.opacity = "0.4";
    const panel = el("div", undefined, "panel");
    const slider = el("input");
    Object.assign(slider, { type: "range", min: "0", max: "100", value: "40", id: "opacity" });
    slider.setAttribute("aria-label", "heatmap opacity");
    slider.addEventListener("input", () => { heat.style.opacity = String(slider.value / 100); });
    const contourToggle = el("input");
    Object.assign(contourToggle, { type: "checkbox", id: "contour" });
    contourToggle.addEventListener("change", () => {
      outline.hidden = !contourToggle.checked;
      heat.hidden = contourToggle.checked;
    });
    const sliderLabel = el("label", "Heatmap opacity ");
    sliderLabel.append(slider);
    const toggleLabel = el("label", " Contour and box ");
    toggleLabel.append(contourToggle);
    const region = result.region.focal
      ? `Focal region ${result.region.box_width_mm != null ? `${result.region.box_width_mm.toFixed(0)} × ` +
          `${result.region.box_height_mm.toFixed(0)} mm` : `${result.region.bbox.width} × ${result.region.bbox.height} px`}`
      : `No focal region: ${result.region.reason}`;
    panel.append(el("p", `Key slice: frame ${result.key_frame} · ${result.label} · ` +
        `tumour probability ${fmtScore(result.tumour_score)}`),
      probabilitiesTable(result.probabilities),
      el("p", `Map: where ${result.target_label} would be (${result.cam_method}, strength ` +
        `${result.cam_strength != null ? result.cam_strength.toPrecision(3) : "—"}). ${region}`),
      el("p", `Model ${result.model_name} ${result.model_version} (sha256 ${result.model_sha256.slice(0, 12)}…), ` +
        `${result.cam_method}`, "muted"), sliderLabel, toggleLabel);
    viewer.append(stack, panel);
    box.append(viewer);
    return box;
  }

  function resultsLine(study) {
    if (!study.results_generation) return "Results as DICOM: not made yet";
    const delivered = study.turnaround_seconds == null ? "delivery pending"
      : `turnaround ${study.turnaround_seconds.toFixed(1)} s (last instance received → results stored at every destination)`;
    return `Results as DICOM (SR, Secondary Capture, presentation state), generation ${study.results_generation}: ${delivered}`;
  }

  function studyPage() {
    const uid = decodeURIComponent(location.pathname.split("/").pop());
    requireLogin(async () => {
      const summary = document.getElementById("summary");
      try {
        const study = await (await api(`/api/v1/studies/${encodeURIComponent(uid)}`)).json();
        summary.textContent = `${study.synthetic ? "[SYNTHETIC] " : ""}${study.description || ""} · ` +
          `patient ${study.patient_id || "—"} · ${study.status} · triage score ${fmtScore(study.triage_score)}`;
        summary.append(el("div", resultsLine(study)));
        const container = document.getElementById("instances");
        for (const series of study.series) {
          const state = series.complete ? `series score ${fmtScore(series.series_score)}` : "series not complete";
          container.append(el("h2", `Series ${series.series_number ?? ""} ${series.description || ""} · ${state}`));
          const key = series.instances.find((i) => i.sop_instance_uid === study.key_instance_sop_uid);
          if (key) container.append(await instanceView(key));
          container.append(instanceList(series.instances));
        }
      } catch (error) { summary.textContent = error.message; }
    });
  }

  return { worklistPage, studyPage };
})();
