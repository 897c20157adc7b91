// altyazi web page: upload, live transcript over SSE, edit, export, download.
// Plain JavaScript with no build step; everything goes through the v1 API.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "altyazi.apiKey";
  // Nothing at all for this long means the connection is dead (the server sends heartbeats).
  const STREAM_SILENCE_MS = 45000;
  const LANGUAGES = [
    ["auto", "Detect automatically"], ["en", "English"], ["tr", "Turkish"], ["de", "German"],
    ["fr", "French"], ["es", "Spanish"], ["it", "Italian"], ["pt", "Portuguese"], ["nl", "Dutch"],
    ["pl", "Polish"], ["ru", "Russian"], ["uk", "Ukrainian"], ["el", "Greek"], ["sv", "Swedish"],
    ["da", "Danish"], ["no", "Norwegian"], ["fi", "Finnish"], ["cs", "Czech"], ["ro", "Romanian"],
    ["hu", "Hungarian"], ["ar", "Arabic"], ["fa", "Persian"], ["he", "Hebrew"], ["hi", "Hindi"],
    ["ur", "Urdu"], ["bn", "Bengali"], ["id", "Indonesian"], ["vi", "Vietnamese"], ["th", "Thai"],
    ["zh", "Chinese"], ["ja", "Japanese"], ["ko", "Korean"],
  ];
  // One label per stage of storage/states.py (tests/test_web.py checks that none is missing).
  const STAGES = {
    queued: "Waiting for its turn",
    extracting: "Extracting the audio",
    detecting_speech: "Finding speech",
    transcribing: "Transcribing",
    finalizing: "Saving the transcript",
    exporting: "Exporting",
    done: "Done",
    failed: "Failed",
    cancelled: "Cancelled",
  };

  // ---- the API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details || {};
    }
  }

  function apiKey() {
    return $("api-key").value.trim();
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const key = apiKey();
    if (key) headers.Authorization = "Bearer " + key;
    return headers;
  }

  function parseError(status, statusText, text) {
    try {
      const body = JSON.parse(text);
      if (body && body.error && typeof body.error.message === "string") {
        return new ApiError(status, body.error.code || "error", body.error.message, body.error);
      }
    } catch (_) { /* not our JSON: a proxy's page */ }
    return new ApiError(status, "http_" + status, `The server answered ${status} ${statusText || ""}`.trim() + ".");
  }

  async function errorFrom(resp) {
    let text = "";
    try { text = await resp.text(); } catch (_) { /* body cut off */ }
    return parseError(resp.status, resp.statusText, text);
  }

  function networkError() {
    return new ApiError(0, "network_error", "The server could not be reached. Check the connection and try again.");
  }

  async function api(method, path, options) {
    const opts = options || {};
    const init = { method, headers: authHeaders(opts.headers), cache: "no-store", signal: opts.signal };
    if (opts.json !== undefined) {
      init.body = JSON.stringify(opts.json);
      init.headers["Content-Type"] = "application/json";
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw networkError();
    }
    if (!resp.ok) throw await errorFrom(resp);
    return resp;
  }

  async function apiJson(method, path, options) {
    const resp = await api(method, path, options);
    return resp.status === 204 ? null : resp.json();
  }

  const jobPath = (id) => "/v1/jobs/" + encodeURIComponent(id);

  // ---- small helpers ------------------------------------------------------------

  function showError(el, err) {
    el.textContent = err && err.message ? err.message : String(err);
    el.hidden = false;
    // No key or a wrong one: open the key field so the way out is in sight.
    if (err && err.status === 401) $("key-box").open = true;
  }

  function clearError(el) {
    el.textContent = "";
    el.hidden = true;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function fmtTime(seconds) {
    let ms = Math.max(0, Math.round(seconds * 1000));
    const h = Math.floor(ms / 3600000); ms -= h * 3600000;
    const m = Math.floor(ms / 60000); ms -= m * 60000;
    const s = Math.floor(ms / 1000); ms -= s * 1000;
    const two = (n) => String(n).padStart(2, "0");
    return (h ? two(h) + ":" : "") + two(m) + ":" + two(s) + "." + String(ms).padStart(3, "0");
  }

  // "75", "75.5", "1:15.5", "01:01:15,500" -> seconds; NaN when unreadable.
  function parseTime(text) {
    const parts = text.trim().replace(",", ".").split(":");
    if (parts.length > 3 || parts.some((p) => p === "")) return NaN;
    let total = 0;
    for (let i = 0; i < parts.length; i++) {
      const last = i === parts.length - 1;
      if (!(last ? /^\d+(\.\d+)?$/ : /^\d+$/).test(parts[i])) return NaN;
      const n = Number(parts[i]);
      if (!last && i > 0 && n >= 60) return NaN;
      total = total * 60 + n;
    }
    return total;
  }

  function fmtSize(bytes) {
    if (bytes === null || bytes === undefined) return "";
    const units = ["B", "kB", "MB", "GB"];
    let n = bytes, u = 0;
    while (n >= 1000 && u < units.length - 1) { n /= 1000; u++; }
    return (u ? n.toFixed(1) : n) + " " + units[u];
  }

  function filenameFrom(disposition) {
    if (!disposition) return null;
    const star = /filename\*=UTF-8''([^;]+)/i.exec(disposition);
    if (star) {
      try { return decodeURIComponent(star[1]); } catch (_) { /* fall through */ }
    }
    const plain = /filename="([^"]*)"/i.exec(disposition);
    return plain ? plain[1] : null;
  }

  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // A download the API answers; fetched (so the key goes along) and handed over as a file.
  async function download(path, fallbackName, button, errorEl) {
    clearError(errorEl);
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      const resp = await api("GET", path);
      const blob = await resp.blob();
      saveBlob(blob, filenameFrom(resp.headers.get("Content-Disposition")) || fallbackName);
    } catch (err) {
      showError(errorEl, err);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }

  // ---- Server-Sent Events over fetch ------------------------------------------------------
  // EventSource can send neither Authorization nor a Last-Event-ID of our choosing,
  // so the stream is read by hand, following the WHATWG parsing rules.

  async function readSse(body, handlers) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    let type = "";
    let lastId = null;
    let sawId = false;
    const line = (text) => {
      if (text === "") {
        if (data.length) handlers.event({ type: type || "message", data: data.join("\n"), id: sawId ? lastId : null });
        data = []; type = ""; sawId = false;
        return;
      }
      if (text.startsWith(":")) return;
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") type = value;
      else if (field === "id" && !value.includes("\0")) { lastId = value; sawId = true; }
      else if (field === "retry" && /^\d+$/.test(value)) handlers.retry(Number(value));
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        handlers.activity();
        buffer += value;
        for (;;) {
          const m = /\r\n|\r|\n/.exec(buffer);
          if (!m) break;
          // A lone "\r" at the end may be the first half of "\r\n".
          if (m[0] === "\r" && m.index === buffer.length - 1) break;
          const text = buffer.slice(0, m.index);
          buffer = buffer.slice(m.index + m[0].length);
          line(text);
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  // ---- state --------------------------------------------------------------------------

  const localFiles = new Map(); // job id -> File uploaded from this tab (playable)
  let selectedFile = null;
  let view = null; // the open job
  let jobsCursor = null;

  // ---- upload -------------------------------------------------------------------------

  function setFile(file) {
    selectedFile = file || null;
    $("file-name").textContent = file ? `${file.name} (${fmtSize(file.size)})` : "";
    $("upload-button").disabled = !file;
    clearError($("upload-error"));
  }

  function uploadFile(file, fields, onProgress) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      // Options first: the server reads them before it streams the file to disk.
      for (const [k, v] of Object.entries(fields)) form.append(k, v);
      form.append("file", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/jobs");
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
      xhr.addEventListener("load", () => {
        if (xhr.status === 202 || xhr.status === 200) {
          try { resolve(JSON.parse(xhr.responseText)); } catch (_) { reject(parseError(xhr.status, xhr.statusText, "")); }
        } else {
          reject(parseError(xhr.status, xhr.statusText, xhr.responseText));
        }
      });
      xhr.addEventListener("error", () => reject(new ApiError(0, "network_error", "The upload did not reach the server (the connection broke). Try again.")));
      xhr.addEventListener("abort", () => reject(new ApiError(0, "aborted", "The upload was stopped.")));
      xhr.send(form);
    });
  }

  async function onUpload(event) {
    event.preventDefault();
    if (!selectedFile) return;
    const file = selectedFile;
    const fields = { language: $("language").value, task: $("task").value };
    if ($("word-timestamps").checked) fields.word_timestamps = "true";
    const button = $("upload-button");
    button.disabled = true;
    clearError($("upload-error"));
    $("upload-status").hidden = false;
    const bar = $("upload-progress");
    bar.value = 0;
    $("upload-percent").textContent = "0%";
    try {
      const job = await uploadFile(file, fields, (f) => {
        bar.value = f;
        $("upload-percent").textContent = Math.round(f * 100) + "%";
      });
      localFiles.set(job.id, file);
      setFile(null);
      $("file").value = "";
      openJob(job.id, job);
      $("job-title").focus();
      loadJobs(true);
    } catch (err) {
      showError($("upload-error"), err);
      button.disabled = false;
    } finally {
      $("upload-status").hidden = true;
    }
  }

  // ---- the open job -------------------------------------------------------------------

  function openJob(id, job) {
    closeJob();
    const v = {
      id,
      job: job || null,
      segments: [],
      transcriptLoaded: false,
      exports: new Map(),
      lastEventId: null,
      retryMs: 3000,
      reconnectAsked: false,
      final: false,
      closed: false,
      abort: new AbortController(),
      streaming: false,
      pollTimer: null,
      mediaUrl: null,
      trackUrl: null,
      editing: false,
    };
    view = v;
    history.replaceState(null, "", "#job=" + encodeURIComponent(id));
    $("job").hidden = false;
    for (const name of ["job-error", "save-error", "export-error"]) clearError($(name));
    $("save-status").textContent = "";
    $("exports").replaceChildren();
    setupPlayer(v);
    renderSegments(v);
    if (job) applyJob(v, job);
    else $("job-status").textContent = "Loading…";
    (async () => {
      try {
        if (!job) applyJob(v, await apiJson("GET", jobPath(id), { signal: v.abort.signal }));
      } catch (err) {
        if (v.closed) return;
        showError($("job-error"), err);
        $("job-progress-box").hidden = true;
        return;
      }
      if (v.job.status === "done") await loadTranscript(v);
      // A finished job with no export running has nothing more to say.
      if (!streamOver(v)) runStream(v);
    })();
  }

  function closeJob() {
    const v = view;
    if (!v) return;
    v.closed = true;
    v.abort.abort();
    clearInterval(v.pollTimer);
    const player = $("player");
    player.pause();
    player.removeAttribute("src");
    player.replaceChildren();
    player.load();
    if (v.mediaUrl) URL.revokeObjectURL(v.mediaUrl);
    if (v.trackUrl) URL.revokeObjectURL(v.trackUrl);
    view = null;
    $("job").hidden = true;
    history.replaceState(null, "", location.pathname + location.search);
  }

  function applyJob(v, job) {
    v.job = job;
    $("job-title").textContent = job.filename || "Job";
    for (const e of job.exports || []) setExport(v, e.id, e);
    if (["done", "failed", "cancelled"].includes(job.status)) v.final = true;
    if (job.error) showError($("job-error"), job.error);
    renderStatus(v);
  }

  function renderStatus(v) {
    const job = v.job;
    if (!job) return;
    let text;
    const stage = STAGES[job.stage] || job.stage || "";
    if (job.status === "queued") {
      text = "Queued";
      if (job.queue_position) text += job.queue_position === 1 ? ": next in line" : `: number ${job.queue_position} in the queue`;
    } else if (job.status === "running") {
      text = `${stage}: ${Math.round((job.progress || 0) * 100)}%`;
    } else if (job.status === "done") {
      const n = v.segments.length;
      text = "Done" + (job.language ? ` (language: ${job.language})` : "") + (v.transcriptLoaded ? `, ${n} segment${n === 1 ? "" : "s"}` : "");
    } else if (job.status === "failed") {
      text = "Failed";
    } else if (job.status === "cancelled") {
      text = "Cancelled";
    } else {
      text = job.status;
    }
    if (v.connection) text += " · " + v.connection;
    $("job-status").textContent = text;
    const active = job.status === "queued" || job.status === "running";
    $("job-progress-box").hidden = !active;
    $("job-progress").value = job.progress || 0;
    $("results").hidden = job.status !== "done";
    const done = job.status === "done";
    $("edit-button").hidden = !done || v.editing;
    $("save-button").hidden = !v.editing;
    $("cancel-edit-button").hidden = !v.editing;
    // While queued the stream has nothing to say about the queue; ask now and then.
    if (job.status === "queued" && !v.pollTimer) {
      v.pollTimer = setInterval(() => pollQueue(v), 2000);
    } else if (job.status !== "queued" && v.pollTimer) {
      clearInterval(v.pollTimer);
      v.pollTimer = null;
    }
  }

  async function pollQueue(v) {
    try {
      const job = await apiJson("GET", jobPath(v.id), { signal: v.abort.signal });
      if (v.closed || !v.job || v.job.status !== "queued") return;
      v.job.queue_position = job.queue_position;
      if (job.status !== "queued") { v.job.status = job.status; v.job.stage = job.stage; }
      renderStatus(v);
    } catch (_) { /* the stream reports connection trouble */ }
  }

  // ---- the event stream ----------------------------------------------------------------

  function streamOver(v) {
    if (!v.final) return false;
    for (const e of v.exports.values()) if (e.status === "queued" || e.status === "running") return false;
    return true;
  }

  function setConnection(v, text) {
    v.connection = text;
    renderStatus(v);
  }

  async function runStream(v) {
    if (v.streaming || v.closed) return;
    v.streaming = true;
    let failures = 0;
    try {
      while (!v.closed) {
        let clean = false;
        const conn = new AbortController();
        const stop = () => conn.abort();
        v.abort.signal.addEventListener("abort", stop, { once: true });
        let silence = null;
        const arm = () => { clearTimeout(silence); silence = setTimeout(() => conn.abort(), STREAM_SILENCE_MS); };
        try {
          const headers = authHeaders({ Accept: "text/event-stream" });
          if (v.lastEventId) headers["Last-Event-ID"] = v.lastEventId;
          arm();
          let resp;
          try {
            resp = await fetch(jobPath(v.id) + "/events", { headers, signal: conn.signal, cache: "no-store" });
          } catch (err) {
            throw v.closed ? err : networkError();
          }
          if (!resp.ok) {
            const err = await errorFrom(resp);
            // Unknown job, bad key: waiting will not mend these.
            if (resp.status < 500 && resp.status !== 429) {
              showError($("job-error"), err);
              return;
            }
            throw err;
          }
          if (failures || v.connection) setConnection(v, "");
          failures = 0;
          await readSse(resp.body, {
            event: (ev) => handleEvent(v, ev),
            retry: (ms) => { v.retryMs = ms; },
            activity: arm,
          });
          clean = true;
        } catch (_) {
          if (v.closed) return;
        } finally {
          clearTimeout(silence);
          v.abort.signal.removeEventListener("abort", stop);
        }
        if (v.closed) return;
        if (clean && !v.reconnectAsked && streamOver(v)) return;
        let wait;
        if (v.reconnectAsked) {
          wait = v.retryMs;
          v.reconnectAsked = false;
          failures = 1;
        } else {
          failures++;
          // A clean end before the work is over (a new export just started) retries at once.
          wait = clean && failures === 1 ? 200 : Math.min(30000, v.retryMs * 2 ** Math.min(4, failures - 1));
        }
        if (!clean || failures > 1) setConnection(v, "connection lost, reconnecting…");
        await sleep(wait, v.abort.signal);
      }
    } finally {
      v.streaming = false;
    }
  }

  function handleEvent(v, ev) {
    if (v.closed) return;
    if (ev.id !== null) v.lastEventId = ev.id;
    let d;
    try { d = JSON.parse(ev.data); } catch (_) { return; }
    const job = v.job;
    if (v.final && !ev.type.startsWith("export_") && !(ev.type === "progress" && d.export_id)) {
      // Replayed history of a job that had already finished when it was opened.
      if (ev.type === "status" && d.reconnect) v.reconnectAsked = true;
      return;
    }
    switch (ev.type) {
      case "status":
        job.status = d.status || job.status;
        job.stage = d.stage || job.stage;
        if (d.reconnect) {
          v.reconnectAsked = true;
          v.connection = "the server is restarting, reconnecting…";
        }
        renderStatus(v);
        break;
      case "progress":
        if (d.export_id) {
          setExport(v, d.export_id, { status: "running", progress: d.progress });
        } else {
          if (job.status === "queued") job.status = "running";
          job.stage = d.stage || job.stage;
          job.progress = d.progress;
          renderStatus(v);
        }
        break;
      case "segment":
        if (!v.transcriptLoaded) appendSegment(v, d);
        break;
      case "done":
        Object.assign(job, { status: "done", stage: "done", progress: 1, language: d.language || job.language });
        v.final = true;
        renderStatus(v);
        loadTranscript(v);
        loadJobs(true);
        break;
      case "failed":
      case "cancelled":
        Object.assign(job, { status: d.status || ev.type, stage: ev.type });
        v.final = true;
        if (d.error) showError($("job-error"), d.error);
        renderStatus(v);
        loadJobs(true);
        break;
      case "export_queued":
        setExport(v, d.export_id, { status: "queued", progress: 0 });
        break;
      case "export_done":
        setExport(v, d.export_id, { status: "done", progress: 1, size_bytes: d.size_bytes });
        break;
      case "export_failed":
        setExport(v, d.export_id, { status: d.status || "failed", error: d.error || null });
        break;
      default:
        break;
    }
  }

  // ---- transcript -----------------------------------------------------------------------

  async function loadTranscript(v) {
    try {
      const data = await apiJson("GET", jobPath(v.id) + "/transcript", { signal: v.abort.signal });
      if (v.closed) return;
      v.segments = data.segments || [];
      v.transcriptLoaded = true;
      if (!v.editing) renderSegments(v);
      renderStatus(v);
      loadTrack(v);
    } catch (err) {
      if (!v.closed) showError($("job-error"), err);
    }
  }

  function segmentRow(v, seg, index) {
    const time = el("span", { class: "seg-time", text: `${fmtTime(seg.start)} – ${fmtTime(seg.end)}` });
    const text = el("span", { class: "seg-text", text: seg.text });
    if (!v.mediaUrl) return el("li", { class: "seg", "data-index": index }, el("div", { class: "seg-static" }, time, text));
    const jump = el("button", {
      type: "button",
      class: "seg-jump",
      title: "Play from " + fmtTime(seg.start),
      onclick: () => seek(v, index),
    }, time, text);
    return el("li", { class: "seg", "data-index": index }, jump);
  }

  function editRow(v, seg, index) {
    const n = index + 1;
    const start = el("input", { class: "seg-start", type: "text", inputmode: "decimal", value: fmtTime(seg.start), "aria-label": `Start of segment ${n}`, autocomplete: "off" });
    const end = el("input", { class: "seg-end", type: "text", inputmode: "decimal", value: fmtTime(seg.end), "aria-label": `End of segment ${n}`, autocomplete: "off" });
    const text = el("textarea", { class: "seg-input", rows: "2", "aria-label": `Text of segment ${n}` });
    text.value = seg.text;
    const remove = el("button", { type: "button", class: "quiet seg-remove", "aria-label": `Remove segment ${n}`, text: "Remove" });
    const li = el("li", { class: "seg editing" },
      el("div", { class: "seg-times" },
        el("label", {}, el("span", { class: "label", text: "Start" }), start),
        el("label", {}, el("span", { class: "label", text: "End" }), end)),
      text,
      el("p", { class: "error seg-error", role: "alert", hidden: true }),
      el("div", { class: "seg-foot" }, remove));
    remove.addEventListener("click", () => {
      const next = li.nextElementSibling || li.previousElementSibling;
      li.remove();
      if (next) next.querySelector("textarea").focus();
      else $("save-button").focus();
    });
    return li;
  }

  function renderSegments(v) {
    const list = $("segments");
    const rows = v.segments.map((s, i) => (v.editing ? editRow(v, s, i) : segmentRow(v, s, i)));
    list.replaceChildren(...rows);
    list.classList.toggle("editing", v.editing);
    $("no-segments").hidden = v.segments.length > 0 || v.editing;
    $("no-segments").textContent = v.job && v.job.status === "done" ? "No speech was found." : "No speech yet.";
  }

  function appendSegment(v, seg) {
    v.segments.push(seg);
    const list = $("segments");
    // Follow the live end only when the reader is already there.
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(segmentRow(v, seg, v.segments.length - 1));
    $("no-segments").hidden = true;
    if (atEnd) list.scrollTop = list.scrollHeight;
  }

  function startEdit() {
    const v = view;
    if (!v || !v.transcriptLoaded) return;
    v.editing = true;
    clearError($("save-error"));
    $("save-status").textContent = "";
    renderSegments(v);
    renderStatus(v);
    const first = $("segments").querySelector("textarea");
    if (first) first.focus();
  }

  function stopEdit() {
    const v = view;
    if (!v) return;
    v.editing = false;
    clearError($("save-error"));
    renderSegments(v);
    renderStatus(v);
    $("edit-button").focus();
  }

  async function saveEdit() {
    const v = view;
    if (!v) return;
    clearError($("save-error"));
    const rows = [...$("segments").querySelectorAll("li.seg")];
    for (const row of rows) clearError(row.querySelector(".seg-error"));
    const segments = [];
    for (const row of rows) {
      const start = parseTime(row.querySelector(".seg-start").value);
      const end = parseTime(row.querySelector(".seg-end").value);
      const bad = Number.isNaN(start) ? row.querySelector(".seg-start") : Number.isNaN(end) ? row.querySelector(".seg-end") : null;
      if (bad) {
        showError(row.querySelector(".seg-error"), "Write times as minutes:seconds (01:02.500) or seconds (62.5).");
        bad.focus();
        return;
      }
      segments.push({ start, end, text: row.querySelector(".seg-input").value });
    }
    const button = $("save-button");
    button.disabled = true;
    $("save-status").textContent = "Saving…";
    try {
      const data = await apiJson("PUT", jobPath(v.id) + "/transcript", { json: { segments } });
      if (v.closed) return;
      v.segments = data.segments || segments;
      v.editing = false;
      renderSegments(v);
      renderStatus(v);
      $("save-status").textContent = "Saved at " + new Date().toLocaleTimeString() + ".";
      $("edit-button").focus();
      loadTrack(v);
    } catch (err) {
      $("save-status").textContent = "";
      const index = err.details && Number.isInteger(err.details.index) ? err.details.index : null;
      if (index !== null && rows[index]) {
        showError(rows[index].querySelector(".seg-error"), err);
        const field = err.details.field === "start" ? ".seg-start" : err.details.field === "end" ? ".seg-end" : ".seg-input";
        (rows[index].querySelector(field) || rows[index].querySelector(".seg-input")).focus();
      } else {
        showError($("save-error"), err);
      }
    } finally {
      button.disabled = false;
    }
  }

  // ---- player -------------------------------------------------------------------------

  function setupPlayer(v) {
    const file = localFiles.get(v.id);
    const player = $("player");
    $("player-note").hidden = true;
    $("player-box").hidden = !file;
    $("no-player").hidden = !!file;
    if (!file) return;
    v.mediaUrl = URL.createObjectURL(file);
    player.classList.toggle("audio-only", (file.type || "").startsWith("audio/"));
    player.src = v.mediaUrl;
  }

  // A <track> cannot send the key either: fetch the WebVTT and give the player a blob.
  async function loadTrack(v) {
    if (!v.mediaUrl) return;
    try {
      const resp = await api("GET", jobPath(v.id) + "/transcript?format=vtt", { signal: v.abort.signal });
      const blob = new Blob([await resp.text()], { type: "text/vtt" });
      if (v.closed) return;
      const player = $("player");
      if (v.trackUrl) URL.revokeObjectURL(v.trackUrl);
      v.trackUrl = URL.createObjectURL(blob);
      const lang = (v.job && v.job.language) || "und";
      const track = el("track", { kind: "subtitles", label: "Subtitles", srclang: lang, src: v.trackUrl, default: true });
      player.replaceChildren(track);
      track.track.mode = "showing";
    } catch (err) {
      if (!v.closed) showError($("job-error"), err);
    }
  }

  function seek(v, index) {
    const seg = v.segments[index];
    const player = $("player");
    if (!seg || !v.mediaUrl) return;
    player.currentTime = seg.start;
    const playing = player.play();
    if (playing) playing.catch(() => { /* autoplay rules or an unplayable file: the seek stands */ });
  }

  function highlight() {
    const v = view;
    if (!v || v.editing) return;
    const t = $("player").currentTime;
    const rows = $("segments").children;
    v.segments.forEach((s, i) => {
      const row = rows[i];
      if (!row) return;
      const on = t >= s.start && t < s.end;
      row.classList.toggle("active", on);
      if (on) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    });
  }

  // ---- exports -------------------------------------------------------------------------

  function setExport(v, id, patch) {
    const known = v.exports.get(id);
    const e = Object.assign(known || { id, status: "queued", progress: 0, options: null, error: null }, patch);
    // Events can arrive before (or after) the POST answer; never go back from a final state.
    if (known && ["done", "failed", "cancelled"].includes(known.status) && ["queued", "running"].includes(patch.status)) {
      e.status = known.status;
    }
    v.exports.set(id, e);
    renderExport(v, e);
    if (!e.options && !e.fetching) {
      e.fetching = true;
      apiJson("GET", jobPath(v.id) + "/exports/" + encodeURIComponent(id), { signal: v.abort.signal })
        .then((full) => { if (!v.closed) { e.options = full.options; e.size_bytes = e.size_bytes || full.size_bytes; renderExport(v, e); } })
        .catch((err) => {
          // Deleted since (the stream replays its history): drop the row.
          if (err && err.status === 404 && !v.closed) {
            v.exports.delete(id);
            const row = document.getElementById("export-" + id);
            if (row) row.remove();
          }
        });
    }
  }

  function exportTitle(e) {
    if (!e.options) return "Export";
    const container = String(e.options.container || "mp4").toUpperCase();
    return e.options.mode === "burn" ? `Burned-in subtitles, ${container}` : `Subtitle track, ${container}`;
  }

  function renderExport(v, e) {
    const list = $("exports");
    const domId = "export-" + e.id;
    let row = document.getElementById(domId);
    if (!row) {
      row = el("li", { id: domId, class: "export" });
      list.prepend(row);
    }
    const title = exportTitle(e);
    const parts = [el("span", { class: "export-title", text: title })];
    if (e.status === "queued" || e.status === "running") {
      const pct = Math.round((e.progress || 0) * 100);
      parts.push(el("span", { class: "muted", text: e.status === "queued" ? "waiting…" : pct + "%" }));
      const bar = el("progress", { max: "1", "aria-label": title + " progress" });
      bar.value = e.progress || 0;
      parts.push(bar);
    } else if (e.status === "done") {
      const path = jobPath(v.id) + "/exports/" + encodeURIComponent(e.id) + "/file";
      const label = `Download ${e.options ? String(e.options.container).toUpperCase() : "file"}` + (e.size_bytes ? ` (${fmtSize(e.size_bytes)})` : "");
      if (apiKey()) {
        const button = el("button", { type: "button", class: "primary", text: label });
        button.addEventListener("click", () => download(path, "export", button, $("export-error")));
        parts.push(button);
      } else {
        // No key: a plain link streams a large file to disk instead of into memory.
        parts.push(el("a", { class: "button primary", href: path, download: "", text: label }));
      }
    } else {
      parts.push(el("span", { class: "badge status-failed", text: e.status }));
      if (e.error && e.error.message) parts.push(el("span", { class: "error-inline", text: e.error.message }));
    }
    row.replaceChildren(...parts);
  }

  async function startExport(body, form) {
    const v = view;
    if (!v) return;
    clearError($("export-error"));
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const e = await apiJson("POST", jobPath(v.id) + "/exports", { json: body });
      if (v.closed) return;
      setExport(v, e.id, { status: e.status, progress: e.progress, options: e.options, size_bytes: e.size_bytes, error: e.error });
      runStream(v);
    } catch (err) {
      showError($("export-error"), err);
    } finally {
      button.disabled = false;
    }
  }

  // ---- my jobs -------------------------------------------------------------------------

  async function loadJobs(reset) {
    const list = $("jobs");
    clearError($("jobs-error"));
    if (reset) jobsCursor = null;
    const query = "?limit=20" + (jobsCursor ? "&cursor=" + encodeURIComponent(jobsCursor) : "");
    let data;
    try {
      data = await apiJson("GET", "/v1/jobs" + query);
    } catch (err) {
      showError($("jobs-error"), err);
      return;
    }
    const rows = data.jobs.map(jobRow);
    if (reset) list.replaceChildren(...rows);
    else list.append(...rows);
    jobsCursor = data.next_cursor;
    $("jobs-more").hidden = !jobsCursor;
    $("jobs-empty").hidden = list.children.length > 0;
  }

  function jobRow(job) {
    const created = job.created_at ? new Date(job.created_at) : null;
    const open = el("button", { type: "button", text: "Open", "aria-label": `Open ${job.filename}` });
    const del = el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${job.filename}` });
    const li = el("li", { class: "job-row", "data-job": job.id },
      el("span", { class: "job-name", text: job.filename }),
      el("span", { class: "badge status-" + job.status, text: job.status }),
      created ? el("time", { class: "muted", datetime: job.created_at, text: created.toLocaleString() }) : null,
      el("span", { class: "job-buttons" }, open, del));
    open.addEventListener("click", () => { openJob(job.id); $("job-title").focus(); });
    del.addEventListener("click", async () => {
      if (!window.confirm(`Delete “${job.filename}” and all its files? This cannot be undone.`)) return;
      clearError($("jobs-error"));
      del.disabled = true;
      try {
        await apiJson("DELETE", jobPath(job.id));
        if (view && view.id === job.id) closeJob();
        localFiles.delete(job.id);
        li.remove();
        $("jobs-empty").hidden = $("jobs").children.length > 0;
      } catch (err) {
        showError($("jobs-error"), err);
        del.disabled = false;
      }
    });
    return li;
  }

  // ---- wiring --------------------------------------------------------------------------

  function init() {
    const key = $("api-key");
    try { key.value = localStorage.getItem(KEY_STORAGE) || ""; } catch (_) { /* storage off */ }
    if (key.value) $("key-box").open = false;
    key.addEventListener("input", () => {
      try {
        if (key.value.trim()) localStorage.setItem(KEY_STORAGE, key.value.trim());
        else localStorage.removeItem(KEY_STORAGE);
      } catch (_) { /* storage off: the key lives until the tab closes */ }
    });
    key.addEventListener("change", () => loadJobs(true));

    const lang = $("language");
    for (const [code, name] of LANGUAGES) lang.append(el("option", { value: code, text: code === "auto" ? name : `${name} (${code})` }));

    $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
    });
    // A file dropped beside the zone must not navigate away from the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("upload-form").addEventListener("submit", onUpload);

    $("job-title").setAttribute("tabindex", "-1");
    $("job-close").addEventListener("click", closeJob);
    $("edit-button").addEventListener("click", startEdit);
    $("save-button").addEventListener("click", saveEdit);
    $("cancel-edit-button").addEventListener("click", stopEdit);
    $("player").addEventListener("timeupdate", highlight);
    $("player").addEventListener("error", () => {
      const note = $("player-note");
      note.textContent = "This browser cannot play this file; the transcript, downloads and exports still work.";
      note.hidden = false;
    });

    for (const button of $("downloads").querySelectorAll("button[data-format]")) {
      button.addEventListener("click", () => {
        if (!view) return;
        const fmt = button.dataset.format;
        download(jobPath(view.id) + "/transcript?format=" + fmt, "transcript." + fmt, button, $("export-error"));
      });
    }
    $("burn-form").addEventListener("submit", (e) => {
      e.preventDefault();
      startExport({
        mode: "burn",
        container: "mp4",
        style: { size: Number($("burn-size").value), position: $("burn-position").value, primary_colour: $("burn-colour").value },
      }, e.target);
    });
    $("soft-form").addEventListener("submit", (e) => {
      e.preventDefault();
      startExport({ mode: "soft", container: $("soft-container").value }, e.target);
    });

    $("jobs-refresh").addEventListener("click", () => loadJobs(true));
    $("jobs-more").addEventListener("click", () => loadJobs(false));

    loadJobs(true);
    const m = /^#job=(.+)$/.exec(location.hash);
    if (m) openJob(decodeURIComponent(m[1]));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
