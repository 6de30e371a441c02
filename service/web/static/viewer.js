// Sightline study viewer: the original slice with window/level beside the same slice with the
// Grad-CAM map coloured here (jet, transparent where weak), the focal region's contour and
// box as separate layers, a slice stack with its score strip, the model's result and the
// reading workflow (claim, release, report, agree/disagree). Canvases only; every value is
// written with textContent. Needs app.js (window.Sightline) loaded first.
"use strict";
(() => {
  const S = window.Sightline;
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const studyUid = decodeURIComponent(location.pathname.split("/").pop());
  const ME_KEY = "sightline.name";
  const MAP_FLOOR = 0.2; // map values below this fraction of the maximum stay transparent
  const MAP_RAMP = 0.3; // ... and reach full colour this far above the floor
  const PRESETS = [
    { id: "auto", name: "Auto (stored)" },
    { id: "brain", name: "Brain 80/40", width: 0.8, level: 0.4 },
    { id: "narrow", name: "Narrow 40/50", width: 0.4, level: 0.5 },
    { id: "full", name: "Full range", width: 1, level: 0.5 },
  ];

  const state = {
    study: null, series: null, slices: [], index: 0, keyIndex: 0,
    preset: "auto", wl: null, zoom: 1, panX: 0, panY: 0, view: null,
    explained: new Map(), // "sop|frame" → the on-demand explanation shown instead of the default map
  };
  const cache = new Map(); // "sop|frame" → Promise of the slice's layers

  function make(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const fmt = (v, digits = 0) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));

  // ---- pixels -------------------------------------------------------------------------

  function canvasOf(width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    return canvas;
  }

  async function bitmap(path) {
    const blob = await (await S.api(path)).blob();
    return createImageBitmap(blob);
  }

  /** RGBA pixels of a bitmap drawn at width × height (nearest neighbour). */
  function pixelsOf(image, width, height) {
    const ctx = canvasOf(width, height).getContext("2d", { willReadFrequently: true });
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, 0, 0, width, height);
    return ctx.getImageData(0, 0, width, height);
  }

  const tag = (meta, key) => (meta[key] && meta[key].Value ? meta[key].Value[0] : undefined);

  function lastIndexOf(bytes, needle) {
    outer: for (let i = bytes.length - needle.length; i >= 0; i--) {
      for (let j = 0; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
      return i;
    }
    return -1;
  }

  /** The one part of a multipart/related WADO-RS frames response (PS3.18 §8.7.3.3.2). */
  function firstPart(buffer, contentType) {
    const match = /boundary="?([^";]+)"?/i.exec(contentType || "");
    if (!match) throw new Error("frames response without a multipart boundary");
    const bytes = new Uint8Array(buffer);
    const encoder = new TextEncoder();
    const head = encoder.encode("\r\n\r\n");
    let start = -1;
    for (let i = 0; i < Math.min(bytes.length, 4096) && start < 0; i++) {
      if (head.every((b, j) => bytes[i + j] === b)) start = i + 4;
    }
    const end = lastIndexOf(bytes, encoder.encode(`\r\n--${match[1]}`));
    if (start < 0 || end < start) throw new Error("malformed multipart frames response");
    return buffer.slice(start, end);
  }

  /** Stored values → modality values (Rescale Slope/Intercept) of a grey frame. */
  function frameValues(buffer, meta) {
    const rows = tag(meta, "00280010");
    const columns = tag(meta, "00280011");
    const bits = tag(meta, "00280100");
    const signed = tag(meta, "00280103") === 1;
    if ((tag(meta, "00280002") ?? 1) !== 1) throw new Error("colour frames are shown from original.png");
    const slope = Number(tag(meta, "00281053") ?? 1);
    const intercept = Number(tag(meta, "00281052") ?? 0);
    const view = new DataView(buffer);
    const count = rows * columns;
    const read = {
      8: (i) => (signed ? view.getInt8(i) : view.getUint8(i)),
      16: (i) => (signed ? view.getInt16(2 * i, true) : view.getUint16(2 * i, true)),
      32: (i) => (signed ? view.getInt32(4 * i, true) : view.getUint32(4 * i, true)),
    }[bits];
    if (!read || buffer.byteLength < count * (bits / 8)) throw new Error(`unsupported frame (${bits} bits)`);
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = read(i) * slope + intercept;
    const center = tag(meta, "00281050");
    const width = tag(meta, "00281051");
    return {
      values, width: columns, height: rows, source: "DICOM grey levels (WADO-RS)",
      invert: tag(meta, "00280004") === "MONOCHROME1",
      stored: center !== undefined && width !== undefined ? [Number(center), Number(width)] : null,
    };
  }

  async function dicomGrey(instance, frameIndex) {
    const base = `/dicomweb/studies/${enc(studyUid)}/series/${enc(state.series.series_instance_uid)}` +
      `/instances/${enc(instance.sop_instance_uid)}`;
    const [meta] = await (await S.api(`${base}/metadata`, { headers: { Accept: "application/dicom+json" } })).json();
    const response = await S.api(`${base}/frames/${frameIndex + 1}`,
      { headers: { Accept: 'multipart/related; type="application/octet-stream"' } });
    const part = firstPart(await response.arrayBuffer(), response.headers.get("Content-Type"));
    return frameValues(part, meta);
  }

  async function pngGrey(instance) {
    const image = await bitmap(instance.original_url);
    const rgba = pixelsOf(image, image.width, image.height).data;
    const values = new Float32Array(image.width * image.height);
    for (let i = 0; i < values.length; i++) {
      values[i] = 0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2];
    }
    return { values, width: image.width, height: image.height, invert: false, stored: null,
      source: "grey levels of original.png" };
  }

  async function greyOf(instance, frameIndex) {
    let grey = null;
    if (instance.source_kind === "dicom") {
      try { grey = await dicomGrey(instance, frameIndex); } catch (error) { console.warn("WADO-RS frame:", error); }
    }
    grey = grey || await pngGrey(instance);
    let min = Infinity;
    let max = -Infinity;
    for (const v of grey.values) { if (v < min) min = v; if (v > max) max = v; }
    const display = instance.result && instance.result.display_window;
    if (!grey.stored && display && instance.source_kind === "dicom") grey.stored = display.slice(0, 2);
    return Object.assign(grey, { min, max: max > min ? max : min + 1 });
  }

  /** Jet: 0 blue, 0.5 green, 1 red. */
  function jet(v) {
    const c = (x) => Math.round(255 * clamp(1.5 - Math.abs(4 * v - x), 0, 1));
    return [c(3), c(2), c(1)];
  }

  const mapAlpha = (v) => clamp((v - MAP_FLOOR) / MAP_RAMP, 0, 1);

  function heatLayer(mapImage, width, height) {
    const levels = pixelsOf(mapImage, width, height);
    const out = new ImageData(width, height);
    for (let i = 0; i < width * height; i++) {
      const v = levels.data[4 * i] / 255;
      const [r, g, b] = jet(v);
      out.data.set([r, g, b, Math.round(255 * mapAlpha(v))], 4 * i);
    }
    const canvas = canvasOf(width, height);
    canvas.getContext("2d").putImageData(out, 0, 0);
    return canvas;
  }

  /** outline.png holds the green contour over the amber box: split them by hue. */
  function outlineLayers(outlineImage, width, height) {
    const rgba = pixelsOf(outlineImage, width, height).data;
    const contour = new ImageData(width, height);
    const box = new ImageData(width, height);
    let any = false;
    for (let i = 0; i < width * height; i++) {
      const p = 4 * i;
      if (rgba[p + 3] === 0) continue;
      any = true;
      (rgba[p + 1] > rgba[p] ? contour : box).data.set(rgba.subarray(p, p + 4), p);
    }
    if (!any) return { contour: null, box: null };
    const toCanvas = (data) => {
      const canvas = canvasOf(width, height);
      canvas.getContext("2d").putImageData(data, 0, 0);
      return canvas;
    };
    return { contour: toCanvas(contour), box: toCanvas(box) };
  }

  async function loadLayers(slice) {
    const instance = slice.instance;
    const grey = await greyOf(instance, slice.frame_index);
    const layers = { grey, heat: null, contour: null, box: null, greyCanvas: canvasOf(grey.width, grey.height) };
    const result = instance.result;
    if (result && result.key_frame === slice.frame_index) {
      const [mapImage, outlineImage] = await Promise.all([bitmap(result.images.map), bitmap(result.images.outline)]);
      layers.heat = heatLayer(mapImage, grey.width, grey.height);
      Object.assign(layers, outlineLayers(outlineImage, grey.width, grey.height));
    }
    return layers;
  }

  function layersOf(slice) {
    const key = `${slice.sop_instance_uid}|${slice.frame_index}`;
    if (!cache.has(key)) cache.set(key, loadLayers(slice));
    return cache.get(key);
  }

  // ---- window / level ---------------------------------------------------------------

  function presetWindow(grey, presetId) {
    const range = grey.max - grey.min;
    const preset = PRESETS.find((p) => p.id === presetId);
    if (!preset || preset.id === "auto") {
      if (grey.stored) return { center: grey.stored[0], width: Math.max(1, grey.stored[1]) };
      return { center: grey.min + range / 2, width: range };
    }
    return { center: grey.min + preset.level * range, width: Math.max(1e-3, preset.width * range) };
  }

  function paintGrey(layers) {
    const { grey, greyCanvas } = layers;
    const { center, width } = state.wl;
    const low = center - width / 2;
    const image = new ImageData(grey.width, grey.height);
    for (let i = 0; i < grey.values.length; i++) {
      let g = clamp(((grey.values[i] - low) / width) * 255, 0, 255);
      if (grey.invert) g = 255 - g;
      image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = g;
      image.data[4 * i + 3] = 255;
    }
    greyCanvas.getContext("2d").putImageData(image, 0, 0);
    layers.paintedWl = `${center}|${width}`;
  }

  function showWl() {
    const digits = state.view && state.view.grey.max - state.view.grey.min < 20 ? 2 : 0;
    $("wl-readout").textContent = `W ${fmt(state.wl.width, digits)} · L ${fmt(state.wl.center, digits)}`;
    $("wl-preset").value = state.preset;
  }

  function setPreset(presetId) {
    state.preset = presetId;
    if (state.view && presetId !== "custom") state.wl = presetWindow(state.view.grey, presetId);
    draw();
  }

  // ---- drawing ------------------------------------------------------------------------

  function fitCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, { width, height });
    return ratio;
  }

  function drawPane(canvas, withOverlay) {
    const ratio = fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const layers = state.view;
    if (!layers) return;
    const { width, height } = layers.grey;
    const scale = Math.min(canvas.width / width, canvas.height / height) * state.zoom;
    const x = (canvas.width - width * scale) / 2 + state.panX * ratio;
    const y = (canvas.height - height * scale) / 2 + state.panY * ratio;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(layers.greyCanvas, x, y, width * scale, height * scale);
    if (!withOverlay) return;
    const opacity = Number($("opacity").value) / 100;
    if ($("heatmap-toggle").checked && layers.heat && opacity > 0) {
      ctx.globalAlpha = opacity;
      ctx.drawImage(layers.heat, x, y, width * scale, height * scale);
      ctx.globalAlpha = 1;
    }
    ctx.imageSmoothingEnabled = false;
    if ($("box").checked && layers.box) ctx.drawImage(layers.box, x, y, width * scale, height * scale);
    if ($("contour").checked && layers.contour) ctx.drawImage(layers.contour, x, y, width * scale, height * scale);
  }

  function draw() {
    if (state.view && state.wl) {
      if (state.view.paintedWl !== `${state.wl.center}|${state.wl.width}`) paintGrey(state.view);
      showWl();
    }
    drawPane($("original-canvas"), false);
    drawPane($("overlay-canvas"), true);
    $("zoom-readout").textContent = `${Math.round(state.zoom * 100)}%`;
    $("opacity-value").textContent = `${$("opacity").value}%`;
  }

  // ---- slices ---------------------------------------------------------------------------

  function sliceNote(slice) {
    const instance = slice.instance;
    if (instance.not_applicable_reason) return `Not applicable: ${instance.not_applicable_reason}`;
    const job = instance.job;
    if (!instance.result) {
      if (job && job.status === "failed") {
        return `Analysis failed: ${job.error_code || "error"}${job.error_message ? ` — ${job.error_message}` : ""}`;
      }
      return `No result yet: analysis ${job ? job.status : "not queued"}`;
    }
    const result = instance.result;
    if (result.key_frame !== slice.frame_index) return `No map for this frame (the map is of frame ${result.key_frame + 1})`;
    const region = result.region;
    if (!region.focal) return `No focal region: ${region.reason || "the map has no single focus"}`;
    const size = region.box_width_mm != null
      ? `${fmt(region.box_width_mm)} × ${fmt(region.box_height_mm)} mm` : `${region.bbox.width} × ${region.bbox.height} px`;
    return `Focal region: box ${size}${region.area_mm2 != null ? `, area ${fmt(region.area_mm2)} mm²` : ""}`;
  }

  function scoreColour(score) {
    if (score === null || score === undefined) return "#555";
    return `hsl(${Math.round(120 * (1 - score))}, 75%, 45%)`;
  }

  function buildStrip() {
    const strip = $("score-strip");
    strip.replaceChildren();
    state.slices.forEach((slice, index) => {
      const button = make("button", undefined, "strip-bar");
      button.type = "button";
      button.dataset.index = String(index);
      button.title = `Slice ${index + 1}: ${slice.label || "—"} ${S.fmtScore(slice.tumour_score)}`;
      button.setAttribute("aria-label", button.title);
      const fill = make("span", undefined, "strip-fill");
      fill.style.height = `${Math.max(4, Math.round(100 * (slice.tumour_score ?? 0)))}%`;
      fill.style.background = scoreColour(slice.tumour_score);
      button.append(fill);
      button.addEventListener("click", () => goTo(index));
      strip.append(button);
    });
  }

  function showSliceText(slice) {
    const key = state.index === state.keyIndex ? " · key slice" : "";
    $("slice-label").textContent = `Slice ${state.index + 1} / ${state.slices.length} · ${slice.label || "—"} · ` +
      `tumour ${S.fmtScore(slice.tumour_score)}${key}`;
    $("slice-note").textContent = sliceNote(slice);
    document.querySelectorAll(".strip-bar").forEach((bar, i) => bar.classList.toggle("current", i === state.index));
    showResult(slice);
  }

  async function goTo(index) {
    if (!state.slices.length) return;
    state.index = clamp(index, 0, state.slices.length - 1);
    const slice = state.slices[state.index];
    showSliceText(slice);
    $("study-main").dataset.renderedSlice = "";
    try {
      const layers = await layersOf(slice);
      if (state.slices[state.index] !== slice) return; // scrolled on meanwhile
      state.view = layers;
      if (state.preset !== "custom" || !state.wl) state.wl = presetWindow(layers.grey, state.preset === "custom" ? "auto" : state.preset);
      draw();
      showResult(slice);
      $("study-main").dataset.renderedSlice = String(state.index);
    } catch (error) {
      $("slice-note").textContent = `Image not loaded: ${error.message}`;
    }
  }

  const step = (delta) => goTo(state.index + delta);

  async function loadSlices(series) {
    const byUid = new Map(series.instances.map((i) => [i.sop_instance_uid, i]));
    let slices = [];
    let keyIndex = null;
    try {
      const curve = await (await S.api(`/api/v1/series/${enc(series.series_instance_uid)}/slices`)).json();
      slices = curve.slices.filter((s) => byUid.has(s.sop_instance_uid))
        .map((s) => ({ ...s, instance: byUid.get(s.sop_instance_uid) }));
      keyIndex = curve.key_index;
    } catch (error) { console.warn("slices:", error); }
    if (!slices.length) { // not scored (not applicable, pending, failed): one slice per instance
      slices = [...series.instances].sort((a, b) => (a.instance_number ?? 0) - (b.instance_number ?? 0))
        .map((i) => ({ sop_instance_uid: i.sop_instance_uid, frame_index: i.result ? i.result.key_frame : 0,
          tumour_score: i.result ? i.result.tumour_score : null, label: i.result ? i.result.label : null, instance: i }));
    }
    const study = state.study;
    const key = slices.findIndex((s) => s.sop_instance_uid === study.key_instance_sop_uid &&
      (study.key_frame === null || study.key_frame === undefined || s.frame_index === study.key_frame));
    return { slices, keyIndex: key >= 0 ? key : keyIndex ?? 0 };
  }

  async function openSeries(series) {
    state.series = series;
    cache.clear();
    state.explained.clear();
    const { slices, keyIndex } = await loadSlices(series);
    Object.assign(state, { slices, keyIndex, preset: "auto", wl: null, view: null });
    buildStrip();
    await goTo(keyIndex);
    slices.forEach((slice) => layersOf(slice).catch(() => {})); // warm the rest of the stack
  }

  // ---- result panel -----------------------------------------------------------------

  function fact(list, term, value, title) {
    const dd = make("dd", value);
    if (title) dd.title = title;
    list.append(make("dt", term), dd);
  }

  function probabilityBars(probabilities, predicted) {
    const box = $("probabilities");
    box.replaceChildren();
    Object.entries(probabilities || {}).sort((a, b) => b[1] - a[1]).forEach(([label, p]) => {
      const row = make("div", undefined, label === predicted ? "prob predicted" : "prob");
      const track = make("span", undefined, "prob-track");
      const fill = make("span", undefined, "prob-fill");
      fill.style.width = `${Math.round(100 * p)}%`;
      track.append(fill);
      row.append(make("span", label, "prob-label"), track, make("span", Number(p).toFixed(3), "score"));
      box.append(row);
    });
  }

  function showLegend(result) {
    const text = result
      ? `Grad-CAM (${result.cam_method}) for ${result.target_label || "—"}: where the model would see it; ` +
        `1 = this slice's maximum, strength ${result.cam_strength != null ? Number(result.cam_strength).toPrecision(3) : "—"}. ` +
        `Below ${MAP_FLOOR} the map is transparent.`
      : "No Grad-CAM map for this slice.";
    $("legend-text").textContent = text;
  }

  function paintLegendBar() {
    const canvas = $("legend-bar");
    const ctx = canvas.getContext("2d");
    for (let x = 0; x < canvas.width; x++) {
      const v = x / (canvas.width - 1);
      const [r, g, b] = jet(v);
      const a = mapAlpha(v);
      const mix = (c) => Math.round(c * a + 40 * (1 - a)); // weak values: the image shows through
      ctx.fillStyle = `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
      ctx.fillRect(x, 0, 1, canvas.height);
    }
  }

  function showResult(slice) {
    const result = slice.instance.result;
    const facts = $("result-facts");
    facts.replaceChildren();
    const explained = state.explained.get(sliceKey(slice));
    $("explain-default").disabled = !explained;
    showLegend(explained ? { cam_method: explained.method, target_label: explained.target_label,
      cam_strength: explained.cam_strength } : result && result.key_frame === slice.frame_index ? result : null);
    if (!result) {
      probabilityBars({}, null);
      fact(facts, "Result", sliceNote(slice));
      return;
    }
    probabilityBars(slice.probabilities || result.probabilities, slice.label || result.label);
    fact(facts, "Prediction (slice)", `${slice.label || result.label} · tumour ${S.fmtScore(slice.tumour_score ?? result.tumour_score)}`);
    fact(facts, "Map explains", result.target_label || "—");
    fact(facts, "CAM method", result.cam_method);
    fact(facts, "Model", `${result.model_name} ${result.model_version}`);
    fact(facts, "Model sha256", `${result.model_sha256.slice(0, 12)}…`, result.model_sha256);
    const view = state.view;
    if (view) fact(facts, "Grey levels", view.grey.source);
  }

  function showStudy(study) {
    $("summary").textContent = `${study.synthetic ? "[SYNTHETIC] " : ""}${study.description || ""} · patient ` +
      `${study.patient_id || "—"} · ${study.status} · triage score ${S.fmtScore(study.triage_score)}`;
    const facts = $("study-facts");
    facts.replaceChildren();
    fact(facts, "Prediction", `${study.predicted_label || "—"} · triage ${S.fmtScore(study.triage_score)}`);
    fact(facts, "Accession", study.accession_number || "—");
    fact(facts, "Study date", study.study_date || "—");
    fact(facts, "Results as DICOM", study.results_generation
      ? `SR, Secondary Capture, presentation state: generation ${study.results_generation}` : "not made yet");
    fact(facts, "Turnaround", study.turnaround_seconds == null ? "delivery pending"
      : `${Number(study.turnaround_seconds).toFixed(1)} s (last instance received → results stored at every destination)`);
    $("research-notice").textContent = study.disclaimer || "Research use only. Not a medical device.";
  }

  // ---- workflow -------------------------------------------------------------------------

  function workflowText(study, me) {
    const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
    if (study.reported_by) return `Reported by ${study.reported_by} ${when(study.reported_at)}`;
    if (study.claimed_by) {
      return `Claimed by ${study.claimed_by}${study.claimed_by === me ? " (you)" : ""} ${when(study.claimed_at)}`;
    }
    return "Not claimed";
  }

  function showWorkflow() {
    const study = state.study;
    const me = sessionStorage.getItem(ME_KEY);
    const mine = study.claimed_by && (!me || study.claimed_by === me);
    $("workflow-state").textContent = workflowText(study, me);
    const claim = $("claim");
    claim.textContent = study.reported_by ? "Reported" : study.claimed_by ? `Claimed by ${study.claimed_by}` : "Claim (Shift+C)";
    claim.disabled = Boolean(study.claimed_by || study.reported_by);
    $("release").disabled = !mine || Boolean(study.reported_by);
    $("report").disabled = !mine || Boolean(study.reported_by);
    const select = $("feedback-label");
    const labels = study.labels && study.labels.length ? study.labels : Object.keys(keyProbabilities());
    if (select.options.length !== labels.length) {
      select.replaceChildren(...labels.map((label) => make("option", label)));
      if (study.predicted_label) select.value = study.predicted_label;
    }
    select.disabled = agrees();
    $("feedback-list").replaceChildren(...(study.feedback || []).map((f) => make("li",
      `${f.reader}: ${f.agrees ? "agrees" : `disagrees → ${f.reader_label}`}${f.comment ? ` — ${f.comment}` : ""}`)));
  }

  function keyProbabilities() {
    for (const series of state.study.series) {
      for (const instance of series.instances) if (instance.result) return instance.result.probabilities;
    }
    return {};
  }

  const agrees = () => document.querySelector("input[name=agrees]:checked").value === "yes";

  function explain(error) {
    if (error.status === 404 || error.status === 405) return "This server does not offer that action yet.";
    return error.message;
  }

  async function refreshStudy() {
    const fresh = await (await S.api(`/api/v1/studies/${enc(studyUid)}`)).json();
    state.study = Object.assign(state.study || {}, fresh);
    showWorkflow();
  }

  async function workflowAction(action) {
    const message = $("workflow-message");
    message.textContent = "";
    try {
      const body = await (await S.api(`/api/v1/studies/${enc(studyUid)}/${action}`, { method: "POST" })).json();
      if (action === "claim" && body.claimed_by) sessionStorage.setItem(ME_KEY, body.claimed_by);
      Object.assign(state.study, body);
      showWorkflow();
      message.textContent = { claim: "Claimed.", release: "Released.", report: "Marked reported." }[action];
    } catch (error) {
      message.textContent = explain(error);
      if (error.status === 409) {
        await refreshStudy().catch(() => {});
        const holder = state.study.reported_by || state.study.claimed_by;
        if (holder) message.textContent = `${error.message} (held by ${holder})`;
      }
    }
  }

  async function sendFeedback(event) {
    event.preventDefault();
    const message = $("workflow-message");
    const comment = $("feedback-comment").value.trim();
    const body = { agrees: agrees(), label: agrees() ? null : $("feedback-label").value, comment: comment || null };
    try {
      await S.api(`/api/v1/studies/${enc(studyUid)}/feedback`,
        { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      $("feedback-comment").value = "";
      await refreshStudy();
      message.textContent = "Feedback recorded.";
    } catch (error) { message.textContent = explain(error); }
  }

  // ---- on-demand explanations: another method or class for this slice -------------------

  const POLL_MS = 1000;
  const POLL_LIMIT = 300; // five minutes, then the reader may ask again
  const sliceKey = (slice) => `${slice.sop_instance_uid}|${slice.frame_index}`;

  async function loadMethods() {
    try {
      const body = await (await S.api("/api/v1/explanation-methods")).json();
      $("explain-method").replaceChildren(...body.methods.map((m) =>
        Object.assign(make("option", m.title), { value: m.id, title: m.paper || m.id })));
    } catch (error) { $("explain-status").textContent = `Methods not loaded: ${explain(error)}`; }
  }

  function fillExplainLabels(study) {
    const select = $("explain-label");
    select.replaceChildren(...(study.labels || []).map((label) => make("option", label)));
    for (const series of study.series) {
      const analysed = series.instances.find((i) => i.result && i.result.target_label);
      if (analysed) { select.value = analysed.result.target_label; return; }
    }
  }

  async function pollExplanation(url) {
    for (let i = 0; i < POLL_LIMIT; i++) {
      const view = await (await S.api(url)).json();
      if (view.status === "done" || view.status === "failed") return view;
      $("explain-status").textContent = `Explanation ${view.status}…`;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    throw new Error("the explanation is taking long; ask again later");
  }

  /** The explanation's map and outline replace the slice's layers (the default ones are kept). */
  async function showExplanation(slice, view) {
    const layers = await layersOf(slice);
    const { width, height } = layers.grey;
    const [mapImage, outlineImage] = await Promise.all([bitmap(view.images.map), bitmap(view.images.outline)]);
    if (!layers.defaultLayers) layers.defaultLayers = { heat: layers.heat, contour: layers.contour, box: layers.box };
    Object.assign(layers, { heat: heatLayer(mapImage, width, height) }, outlineLayers(outlineImage, width, height));
    state.explained.set(sliceKey(slice), view);
  }

  async function requestExplanation(event) {
    event.preventDefault();
    const slice = state.slices[state.index];
    if (!slice) return;
    const status = $("explain-status");
    const body = { method: $("explain-method").value, target_label: $("explain-label").value, frame: slice.frame_index };
    document.body.dataset.explain = "pending";
    $("explain-button").disabled = true;
    status.textContent = "Explanation asked for…";
    try {
      const response = await S.api(`/api/v1/instances/${enc(slice.sop_instance_uid)}/explanations`,
        { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      let view = await response.json();
      if (view.status !== "done") view = await pollExplanation(view.url);
      if (view.status === "failed") throw new Error(`${view.error_code || "failed"}${view.error_message ? ` — ${view.error_message}` : ""}`);
      await showExplanation(slice, view);
      status.textContent = `Showing ${view.method} for ${view.target_label} (slice ${state.slices.indexOf(slice) + 1}).`;
      document.body.dataset.explain = "done";
      if (state.slices[state.index] === slice) { draw(); showResult(slice); }
    } catch (error) {
      status.textContent = `Explanation not shown: ${explain(error)}`;
      document.body.dataset.explain = "failed";
    } finally {
      $("explain-button").disabled = false;
    }
  }

  async function showDefaultMap() {
    const slice = state.slices[state.index];
    if (!slice) return;
    const layers = await layersOf(slice);
    if (layers.defaultLayers) Object.assign(layers, layers.defaultLayers);
    delete layers.defaultLayers;
    state.explained.delete(sliceKey(slice));
    $("explain-status").textContent = "Showing the default map.";
    draw();
    showResult(slice);
  }

  // ---- navigation between studies ------------------------------------------------------

  async function neighbourStudy(delta) {
    const message = $("workflow-message");
    const items = [];
    let cursor = null;
    let index = -1;
    try {
      for (let page = 0; page < 25; page++) {
        const params = new URLSearchParams({ limit: "200" });
        if (cursor) params.set("cursor", cursor);
        const body = await (await S.api(`/api/v1/worklist?${params}`)).json();
        items.push(...body.items);
        cursor = body.next_cursor;
        index = items.findIndex((item) => item.study_instance_uid === studyUid);
        if (!cursor || (index >= 0 && index + delta < items.length)) break;
      }
    } catch (error) { message.textContent = explain(error); return; }
    const target = index >= 0 ? items[index + delta] : items[0];
    if (!target) { message.textContent = delta > 0 ? "This is the last study on the worklist." : "This is the first study on the worklist."; return; }
    location.href = `/studies/${enc(target.study_instance_uid)}`;
  }

  // ---- input ------------------------------------------------------------------------------

  function toggle(id) {
    const box = $(id);
    box.checked = !box.checked;
    draw();
  }

  function resetView() {
    Object.assign(state, { zoom: 1, panX: 0, panY: 0 });
    setPreset("auto");
  }

  function onKey(event) {
    const target = event.target;
    if (target.closest && target.closest("textarea, select, input[type=text], input[type=password]")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const actions = {
      ArrowUp: () => step(-1), PageUp: () => step(-1), ArrowDown: () => step(1), PageDown: () => step(1),
      n: () => neighbourStudy(1), p: () => neighbourStudy(-1), h: () => toggle("heatmap-toggle"),
      c: () => toggle("contour"), b: () => toggle("box"), r: resetView, C: () => workflowAction("claim"),
      "?": () => { $("help").hidden = !$("help").hidden; }, Escape: () => { $("help").hidden = true; },
    };
    const action = actions[event.key];
    if (!action || (event.key === "C" && !event.shiftKey)) return;
    event.preventDefault();
    action();
  }

  function attachPointer(canvas) {
    let drag = null;
    canvas.addEventListener("pointerdown", (event) => {
      if (!state.wl) return;
      const pan = $("pan-mode").checked || event.shiftKey || event.ctrlKey || event.button === 1;
      drag = { pan, x: event.clientX, y: event.clientY, wl: { ...state.wl }, panX: state.panX, panY: state.panY };
      canvas.setPointerCapture(event.pointerId);
      event.preventDefault();
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      if (drag.pan) {
        state.panX = drag.panX + dx;
        state.panY = drag.panY + dy;
      } else {
        const range = state.view.grey.max - state.view.grey.min;
        const perPixel = (2 * range) / Math.max(200, canvas.clientWidth);
        state.preset = "custom";
        state.wl = { width: Math.max(range / 1000, drag.wl.width + dx * perPixel), center: drag.wl.center + dy * perPixel };
      }
      draw();
    });
    const end = () => { drag = null; };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      if (event.ctrlKey || event.altKey || event.metaKey) {
        state.zoom = clamp(state.zoom * (event.deltaY < 0 ? 1.15 : 1 / 1.15), 0.25, 16);
        draw();
      } else if (event.deltaY) {
        step(event.deltaY > 0 ? 1 : -1);
      }
    }, { passive: false });
  }

  function wireControls() {
    const presetSelect = $("wl-preset");
    presetSelect.replaceChildren(...PRESETS.map((p) => Object.assign(make("option", p.name), { value: p.id })));
    presetSelect.append(Object.assign(make("option", "Custom (drag)"), { value: "custom", hidden: true }));
    presetSelect.addEventListener("change", () => setPreset(presetSelect.value));
    ["opacity", "heatmap-toggle", "contour", "box"].forEach((id) => $(id).addEventListener("input", draw));
    ["heatmap-toggle", "contour", "box"].forEach((id) => $(id).addEventListener("change", draw));
    $("reset-view").addEventListener("click", resetView);
    $("pan-mode").addEventListener("change", (event) => {
      document.querySelector(".canvases").classList.toggle("panning", event.target.checked);
    });
    $("slice-prev").addEventListener("click", () => step(-1));
    $("slice-next").addEventListener("click", () => step(1));
    $("claim").addEventListener("click", () => workflowAction("claim"));
    $("release").addEventListener("click", () => workflowAction("release"));
    $("report").addEventListener("click", () => workflowAction("report"));
    $("feedback-form").addEventListener("submit", sendFeedback);
    $("explain-form").addEventListener("submit", requestExplanation);
    $("explain-default").addEventListener("click", showDefaultMap);
    document.querySelectorAll("input[name=agrees]").forEach((radio) => radio.addEventListener("change", showWorkflow));
    $("help-button").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
    $("help-close").addEventListener("click", () => { $("help").hidden = true; });
    $("series-select").addEventListener("change", (event) => {
      openSeries(state.study.series.find((s) => s.series_instance_uid === event.target.value));
    });
    attachPointer($("original-canvas"));
    attachPointer($("overlay-canvas"));
    document.addEventListener("keydown", onKey);
    window.addEventListener("resize", draw);
    paintLegendBar();
  }

  function chooseSeries(study) {
    const select = $("series-select");
    select.replaceChildren(...study.series.map((s) => Object.assign(
      make("option", `${s.series_number ?? ""} ${s.description || s.modality || ""} · score ${S.fmtScore(s.series_score)}`),
      { value: s.series_instance_uid })));
    const withKey = study.series.find((s) => s.instances.some((i) => i.sop_instance_uid === study.key_instance_sop_uid));
    const chosen = withKey || study.series.find((s) => s.instances.length) || study.series[0];
    if (chosen) select.value = chosen.series_instance_uid;
    return chosen;
  }

  async function start() {
    try {
      state.study = await (await S.api(`/api/v1/studies/${enc(studyUid)}`)).json();
      showStudy(state.study);
      showWorkflow();
      fillExplainLabels(state.study);
      loadMethods();
      const series = chooseSeries(state.study);
      if (series) await openSeries(series);
      else $("slice-note").textContent = "This study has no images.";
      document.body.dataset.viewer = "ready";
    } catch (error) {
      $("summary").textContent = error.message;
      document.body.dataset.viewer = "error";
    }
  }

  wireControls();
  S.requireLogin(start);
})();
