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
    const init = { method, headers: authHeaders(opts.headers), cache: "no-store", signal: opts.signal, keepalive: !!opts.keepalive };
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

  const C = window.altyaziCues;
  const localFiles = new Map(); // job id -> File uploaded from this tab (plays before the server's copy is ready)
  let selectedFiles = [];
  let view = null; // the open job
  let jobsCursor = null;
  const batch = { entries: [], running: false, pollTimer: null };

  function statusLine(job) {
    const stage = STAGES[job.stage] || job.stage || "";
    let text;
    if (job.status === "queued") {
      text = "Queued";
      if (job.queue_position) text += job.queue_position === 1 ? ": next in line" : `: number ${job.queue_position} in the queue`;
    } else if (job.status === "running") {
      text = `${stage}: ${Math.round((job.progress || 0) * 100)}%`;
    } else {
      text = STAGES[job.status] || job.status;
    }
    const eta = (job.status === "queued" || job.status === "running") ? C.etaText(job.eta_seconds) : null;
    return eta ? `${text} · ${eta}` : text;
  }

  // ---- upload -------------------------------------------------------------------------

  function setFiles(files) {
    selectedFiles = [...(files || [])];
    const n = selectedFiles.length;
    $("file-name").textContent = n === 0 ? "" : n === 1
      ? `${selectedFiles[0].name} (${fmtSize(selectedFiles[0].size)})`
      : `${n} files: ${selectedFiles.map((f) => f.name).join(", ")}`;
    $("upload-button").disabled = n === 0;
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

  function uploadFields() {
    const fields = { language: $("language").value, task: $("task").value, vad: $("vad").checked ? "true" : "false" };
    if ($("word-timestamps").checked) fields.word_timestamps = "true";
    const prompt = $("prompt").value.trim();
    if (prompt) fields.initial_prompt = prompt;
    return fields;
  }

  function onUpload(event) {
    event.preventDefault();
    if (!selectedFiles.length) return;
    const files = selectedFiles;
    const fields = uploadFields();
    clearError($("upload-error"));
    if (!batch.running) {
      // A new batch starts when the last one is over.
      batch.entries = batch.entries.filter((e) => !e.job || !["done", "failed", "cancelled"].includes(e.job.status));
    }
    const single = files.length === 1 && !batch.entries.length;
    for (const file of files) batch.entries.push({ file, fields, state: "waiting", progress: 0, job: null, error: null, single });
    setFiles([]);
    $("file").value = "";
    renderBatch();
    runBatch();
  }

  // Uploads run one after another: each gets the whole connection, and the queue shows its order.
  async function runBatch() {
    if (batch.running) return;
    batch.running = true;
    $("upload-button").disabled = true;
    try {
      for (;;) {
        const entry = batch.entries.find((e) => e.state === "waiting");
        if (!entry) break;
        entry.state = "uploading";
        renderBatch();
        try {
          const job = await uploadFile(entry.file, entry.fields, (f) => { entry.progress = f; renderBatchEntry(entry); });
          entry.state = "uploaded";
          entry.job = job;
          localFiles.set(job.id, entry.file);
          // The first upload opens at once; the others wait in the list (and in "My jobs").
          if (!view || entry.single || batch.entries.indexOf(entry) === 0) {
            openJob(job.id, job);
            $("job-title").focus();
          }
          loadJobs(true);
        } catch (err) {
          entry.state = "failed";
          entry.error = err;
          if (entry.single) {
            if (!selectedFiles.length) setFiles([entry.file]); // ready to try again
            showError($("upload-error"), err);
          }
        }
        renderBatch();
      }
    } finally {
      batch.running = false;
      $("upload-button").disabled = selectedFiles.length === 0;
      pollBatch();
    }
  }

  function renderBatchEntry(entry) {
    if (!entry.row) return;
    const parts = [el("span", { class: "queue-name", text: entry.file.name })];
    if (entry.state === "waiting") parts.push(el("span", { class: "muted", text: "waiting to upload" }));
    else if (entry.state === "uploading") {
      const pct = Math.round(entry.progress * 100);
      parts.push(el("span", { class: "muted", text: `uploading ${pct}%` }));
      const bar = el("progress", { max: "1", "aria-label": `Upload of ${entry.file.name}` });
      bar.value = entry.progress;
      parts.push(bar);
    } else if (entry.state === "failed") {
      parts.push(el("span", { class: "error-inline", text: entry.error ? entry.error.message : "failed" }));
    } else if (entry.job) {
      parts.push(el("span", { class: "badge status-" + entry.job.status, text: statusLine(entry.job) }));
      const open = el("button", { type: "button", class: "quiet", text: "Open", "aria-label": `Open ${entry.file.name}` });
      open.addEventListener("click", () => { openJob(entry.job.id); $("job-title").focus(); });
      parts.push(open);
    }
    entry.row.replaceChildren(...parts);
  }

  function renderBatch() {
    const list = $("upload-queue");
    const shown = batch.entries.filter((e) => !(e.single && e.state !== "failed"));
    $("batch").hidden = shown.length < 2 && !shown.some((e) => e.state === "failed" && !e.single);
    for (const entry of shown) {
      if (!entry.row) entry.row = el("li", { class: "queue-row" });
      renderBatchEntry(entry);
    }
    list.replaceChildren(...shown.map((e) => e.row));
    const jobs = shown.filter((e) => e.job);
    const done = jobs.filter((e) => e.job.status === "done");
    const over = jobs.every((e) => ["done", "failed", "cancelled"].includes(e.job.status));
    $("zip-button").hidden = !(done.length && over && !shown.some((e) => e.state === "waiting" || e.state === "uploading"));
  }

  // The batch's jobs, asked for now and then until every one is over.
  function pollBatch() {
    clearTimeout(batch.pollTimer);
    const pending = batch.entries.filter((e) => e.job && !["done", "failed", "cancelled"].includes(e.job.status));
    if (!pending.length) { renderBatch(); return; }
    batch.pollTimer = setTimeout(async () => {
      await Promise.all(pending.map(async (e) => {
        try { e.job = await apiJson("GET", jobPath(e.job.id)); } catch (_) { /* shown next time */ }
      }));
      renderBatch();
      pollBatch();
    }, 1500);
  }

  async function downloadZip() {
    const button = $("zip-button");
    clearError($("zip-error"));
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      if (view) await flushSave(view);
      const files = [];
      for (const e of batch.entries) {
        if (!e.job || e.job.status !== "done") continue;
        const resp = await api("GET", jobPath(e.job.id) + "/transcript?format=srt");
        const name = filenameFrom(resp.headers.get("Content-Disposition")) || "subtitles.srt";
        files.push({ name, data: new Uint8Array(await resp.arrayBuffer()) });
      }
      saveBlob(window.altyaziZip.makeZip(files), "subtitles.zip");
    } catch (err) {
      showError($("zip-error"), err);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  // ---- the open job -------------------------------------------------------------------

  function openJob(id, job) {
    closeJob();
    const v = {
      id,
      job: job || null,
      segments: [],
      saved: [],
      history: [],
      hpos: -1,
      current: 0,
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
      localUrl: null,
      trackUrl: null,
      waveform: null,
      shownProgress: 0,
      saveTimer: null,
      saving: null,
      saveAgain: false,
      linkRetried: false,
    };
    view = v;
    history.replaceState(null, "", "#job=" + encodeURIComponent(id));
    $("job").hidden = false;
    for (const name of ["job-error", "save-error", "export-error"]) clearError($(name));
    $("save-status").textContent = "";
    $("find-status").textContent = "";
    $("exports").replaceChildren();
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
      setupPlayer(v);
      loadWaveform(v);
      if (v.job.status === "done") await loadTranscript(v);
      // A finished job with no export running has nothing more to say.
      if (!streamOver(v)) runStream(v);
    })();
  }

  function closeJob() {
    const v = view;
    if (!v) return;
    if (v.saveTimer) flushSave(v); // the last edit still goes to the server
    v.closed = true;
    v.abort.abort();
    clearInterval(v.pollTimer);
    cancelAnimationFrame(v.progressFrame);
    const player = $("player");
    player.pause();
    player.removeAttribute("src");
    player.replaceChildren();
    player.load();
    if (v.localUrl) URL.revokeObjectURL(v.localUrl);
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
    let text = statusLine(job);
    if (job.status === "done") {
      const n = v.segments.length;
      text = "Done" + (job.language ? ` (language: ${job.language})` : "") + (v.transcriptLoaded ? `, ${n} cue${n === 1 ? "" : "s"}` : "");
    }
    if (v.connection) text += " · " + v.connection;
    $("job-status").textContent = text;
    const active = job.status === "queued" || job.status === "running";
    $("job-progress-box").hidden = !active;
    animateProgress(v);
    $("results").hidden = job.status !== "done";
    $("editor-tools").hidden = !(job.status === "done" && v.transcriptLoaded);
    $("find-form").hidden = !(job.status === "done" && v.transcriptLoaded);
    // While queued the stream has nothing to say about the queue; ask now and then.
    if (job.status === "queued" && !v.pollTimer) {
      v.pollTimer = setInterval(() => pollQueue(v), 2000);
    } else if (job.status !== "queued" && v.pollTimer) {
      clearInterval(v.pollTimer);
      v.pollTimer = null;
    }
  }

  // The bar glides to each new value instead of jumping; between events it creeps on
  // at the pace the ETA implies, never past the next few percent.
  function animateProgress(v) {
    cancelAnimationFrame(v.progressFrame);
    const bar = $("job-progress");
    const target = v.job.progress || 0;
    const reachedAt = performance.now();
    const from = v.shownProgress;
    const eta = v.job.eta_seconds;
    const rate = typeof eta === "number" && eta > 0 && v.job.status === "running" ? (1 - target) / eta : 0;
    const step = (now) => {
      if (v.closed) return;
      const t = Math.min(1, (now - reachedAt) / 600);
      let value = from + (target - from) * t;
      if (t >= 1 && rate) value = Math.min(target + 0.04, target + rate * (now - reachedAt - 600) / 1000);
      v.shownProgress = Math.max(0, Math.min(1, value));
      bar.value = v.shownProgress;
      if (t < 1 || (rate && v.shownProgress < target + 0.04)) v.progressFrame = requestAnimationFrame(step);
    };
    v.progressFrame = requestAnimationFrame(step);
  }

  async function pollQueue(v) {
    try {
      const job = await apiJson("GET", jobPath(v.id), { signal: v.abort.signal });
      if (v.closed || !v.job || v.job.status !== "queued") return;
      v.job.queue_position = job.queue_position;
      if ("eta_seconds" in job) v.job.eta_seconds = job.eta_seconds;
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
          if ("eta_seconds" in d) job.eta_seconds = d.eta_seconds;
          // Drawn once the audio is out; asked for at most every few seconds until then.
          if (!v.waveform && !v.waveformAsked && job.stage === "transcribing" && !(Date.now() - (v.waveformTriedAt || 0) < 5000)) loadWaveform(v);
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
        if (!v.mediaUrl) setupPlayer(v); // a copy made for the player is ready now
        if (!v.waveform) loadWaveform(v);
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

  const editable = (v) => v.transcriptLoaded && v.job && v.job.status === "done";
  const rowAt = (i) => $("segments").children[i] || null;

  async function loadTranscript(v) {
    try {
      const data = await apiJson("GET", jobPath(v.id) + "/transcript", { signal: v.abort.signal });
      if (v.closed) return;
      const segs = (data.segments || []).map(C.copy);
      v.segments = segs;
      v.saved = segs;
      v.history = [segs];
      v.hpos = 0;
      v.transcriptLoaded = true;
      renderSegments(v);
      renderStatus(v);
      updateUndo(v);
      refreshTrack(v);
    } catch (err) {
      if (!v.closed) showError($("job-error"), err);
    }
  }

  // A row of the live transcript, while the job runs: read only, a click plays it.
  function segmentRow(v, seg, index) {
    const time = el("span", { class: "seg-time", text: `${fmtTime(seg.start)} – ${fmtTime(seg.end)}` });
    const text = el("span", { class: "seg-text", text: seg.text });
    if (!v.mediaUrl) return el("li", { class: "seg", "data-index": index }, el("div", { class: "seg-static" }, time, text));
    const jump = el("button", { type: "button", class: "seg-jump", title: "Play from " + fmtTime(seg.start), onclick: () => seek(v, index) }, time, text);
    return el("li", { class: "seg", "data-index": index }, jump);
  }

  // A row of the editor: its number (plays it), times, text, and what a subtitler would flag.
  function editRow(v, seg, index) {
    const n = index + 1;
    const play = el("button", { type: "button", class: "seg-num", "aria-label": `Play segment ${n}`, title: "Play from " + fmtTime(seg.start), text: String(n) });
    const start = el("input", { class: "seg-start", type: "text", inputmode: "decimal", value: fmtTime(seg.start), "aria-label": `Start of segment ${n}`, autocomplete: "off", spellcheck: "false" });
    const end = el("input", { class: "seg-end", type: "text", inputmode: "decimal", value: fmtTime(seg.end), "aria-label": `End of segment ${n}`, autocomplete: "off", spellcheck: "false" });
    const text = el("textarea", { class: "seg-input", rows: "2", "aria-label": `Text of segment ${n}` });
    text.value = seg.text;
    const li = el("li", { class: "seg editing", "data-index": index },
      el("div", { class: "seg-head" }, play, start, el("span", { class: "seg-dash", "aria-hidden": "true", text: "–" }), end, el("span", { class: "seg-meta" })),
      text,
      el("p", { class: "seg-words", hidden: true }),
      el("ul", { class: "seg-warnings", "aria-label": `Warnings for segment ${n}` }),
      el("p", { class: "error seg-error", role: "alert", hidden: true }));
    play.addEventListener("click", () => { setCurrent(v, index); seek(v, index); });
    start.addEventListener("change", () => setTimeField(v, index, "start", start));
    end.addEventListener("change", () => setTimeField(v, index, "end", end));
    text.addEventListener("input", () => onText(v, index, text.value));
    li.addEventListener("focusin", () => setCurrent(v, index));
    fillRow(v, li, index);
    return li;
  }

  // The parts of a row that follow its cue: length, reading speed, warnings, unsure words.
  function fillRow(v, li, i) {
    const s = v.segments[i];
    if (!li || !s || !li.classList.contains("editing")) return;
    const duration = s.end - s.start;
    const chars = [...s.text.replace(/\s*\n\s*/g, " ").trim()].length;
    li.querySelector(".seg-meta").textContent = `${duration.toFixed(1)} s · ${duration > 0 ? Math.round(chars / duration) : 0} cps`;
    const warns = C.warnings(v.segments, i);
    li.querySelector(".seg-warnings").replaceChildren(...warns.map((w) => el("li", { class: "warn-" + w.kind, text: w.text })));
    li.classList.toggle("warn", warns.length > 0);
    const words = li.querySelector(".seg-words");
    const unsure = (s.words || []).filter((w) => w.probability < C.LOW_CONFIDENCE);
    words.hidden = !unsure.length;
    if (unsure.length) {
      words.replaceChildren(el("span", { class: "muted", text: "Check: " }),
        ...s.words.map((w) => (w.probability < C.LOW_CONFIDENCE
          ? el("mark", { class: "low", title: `${Math.round(w.probability * 100)}% sure` }, w.word)
          : document.createTextNode(w.word))));
    }
    li.classList.toggle("unsure", unsure.length > 0);
  }

  function fillRows(v, indices) {
    for (const i of indices) if (i >= 0 && i < v.segments.length) fillRow(v, rowAt(i), i);
  }

  function renderSegments(v) {
    const list = $("segments");
    const edit = editable(v);
    const rows = v.segments.map((s, i) => (edit ? editRow(v, s, i) : segmentRow(v, s, i)));
    list.replaceChildren(...rows);
    list.classList.toggle("editing", edit);
    $("no-segments").hidden = v.segments.length > 0;
    $("no-segments").textContent = v.job && v.job.status === "done" ? "No speech was found. Insert a cue to add one." : "No speech yet.";
    v.active = -1;
    if (edit) setCurrent(v, Math.max(0, Math.min(v.current, v.segments.length - 1)));
    highlight();
  }

  function appendSegment(v, seg) {
    v.segments.push(seg);
    const list = $("segments");
    // Follow the live end only when the reader is already there.
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(segmentRow(v, seg, v.segments.length - 1));
    $("no-segments").hidden = true;
    if (atEnd) list.scrollTop = list.scrollHeight;
    scheduleTrack(v);
  }

  function setCurrent(v, i) {
    if (v.current === i && rowAt(i) && rowAt(i).classList.contains("current")) return;
    const old = rowAt(v.current);
    if (old) old.classList.remove("current");
    v.current = i;
    const row = rowAt(i);
    if (row) row.classList.add("current");
    drawWaveform(v);
  }

  function focusRow(v, i, caret) {
    if (!v.segments.length) { $("editor-tools").querySelector("[data-action=insert]").focus(); return; }
    i = Math.max(0, Math.min(i, v.segments.length - 1));
    setCurrent(v, i);
    const row = rowAt(i);
    const ta = row && row.querySelector("textarea");
    if (!ta) return;
    ta.focus({ preventScroll: true });
    if (caret !== null && caret !== undefined) ta.setSelectionRange(caret, caret);
    keepInView(row);
  }

  // Scrolls the list, never the page, so the row is in sight.
  function keepInView(row) {
    const list = $("segments");
    if (!row || list.scrollHeight <= list.clientHeight) return;
    const top = row.offsetTop, bottom = top + row.offsetHeight;
    if (top < list.scrollTop || bottom > list.scrollTop + list.clientHeight) {
      list.scrollTo({ top: Math.max(0, top - list.clientHeight / 3), behavior: "smooth" });
    }
  }

  // ---- editing: history ------------------------------------------------------------------

  // Every change makes a new array (cues are never changed in place), so undo
  // keeps the old arrays. Typing in one cue, or nudging one, is one step.
  function commit(v, segs, key) {
    const now = Date.now();
    if (key && v.lastKey === key && now - v.lastAt < 2000 && v.hpos === v.history.length - 1) {
      v.history[v.hpos] = segs;
    } else {
      v.history = v.history.slice(0, v.hpos + 1);
      v.history.push(segs);
      if (v.history.length > 300) v.history.shift();
      v.hpos = v.history.length - 1;
    }
    v.lastKey = key;
    v.lastAt = now;
    v.segments = segs;
    updateUndo(v);
  }

  function updateUndo(v) {
    $("undo-button").disabled = !(v.hpos > 0);
    $("redo-button").disabled = !(v.hpos < v.history.length - 1);
  }

  function travel(v, step) {
    const to = v.hpos + step;
    if (to < 0 || to >= v.history.length) return;
    const before = v.segments;
    v.hpos = to;
    v.segments = v.history[to];
    v.lastKey = null;
    updateUndo(v);
    // Focus where the change was: unchanged cues are the same objects in both arrays.
    let i = 0;
    while (i < before.length && i < v.segments.length && before[i] === v.segments[i]) i++;
    if (i >= before.length && i >= v.segments.length) i = v.current;
    renderSegments(v);
    renderStatus(v);
    focusRow(v, i, null);
    scheduleSave(v, 0);
    scheduleTrack(v);
  }

  // A change of the list's shape: rows made again, then saved (a PUT unless only one cue changed).
  function structural(v, segs, focus, caret) {
    commit(v, segs, null);
    renderSegments(v);
    renderStatus(v); // the count of cues
    focusRow(v, focus, caret);
    scheduleSave(v, 0);
    scheduleTrack(v);
  }

  function onText(v, i, value) {
    commit(v, C.change(v.segments, i, { text: value }), "text:" + i);
    fillRow(v, rowAt(i), i);
    scheduleSave(v, 700);
    scheduleTrack(v);
  }

  function setTimes(v, i, fields, key) {
    for (const k of Object.keys(fields)) fields[k] = Math.max(0, Math.round(fields[k] * 1000) / 1000);
    commit(v, C.change(v.segments, i, fields), key);
    const row = rowAt(i);
    if (row) {
      const s = v.segments[i];
      row.querySelector(".seg-start").value = fmtTime(s.start);
      row.querySelector(".seg-end").value = fmtTime(s.end);
      clearError(row.querySelector(".seg-error"));
    }
    fillRows(v, [i - 1, i, i + 1]);
    drawWaveform(v);
    scheduleSave(v, 400);
    scheduleTrack(v);
  }

  function setTimeField(v, i, field, input) {
    const t = parseTime(input.value);
    const row = rowAt(i);
    if (Number.isNaN(t)) {
      showError(row.querySelector(".seg-error"), "Write times as minutes:seconds (01:02.500) or seconds (62.5).");
      return;
    }
    setTimes(v, i, { [field]: t }, null);
  }

  function run(v, action) {
    if (action === "undo") return travel(v, -1);
    if (action === "redo") return travel(v, 1);
    const player = $("player");
    if (action === "play") {
      if (!v.mediaUrl) return;
      if (player.paused) { const p = player.play(); if (p) p.catch(() => {}); } else player.pause();
      return;
    }
    const segs = v.segments;
    const i = Math.max(0, Math.min(v.current, segs.length - 1));
    const s = segs[i];
    const t = player.currentTime || 0;
    const duration = (v.job && v.job.duration_s) || Infinity;
    if (action === "insert") return structural(v, C.insertAfter(segs, i, t, v.job && v.job.duration_s), segs.length ? i + 1 : 0, 0);
    if (!s) return;
    const length = s.end - s.start;
    switch (action) {
      case "prev":
      case "next": {
        const to = Math.max(0, Math.min(segs.length - 1, i + (action === "next" ? 1 : -1)));
        focusRow(v, to, null);
        if (v.mediaUrl) player.currentTime = segs[to].start;
        break;
      }
      case "split": {
        const ta = rowAt(i) && rowAt(i).querySelector("textarea");
        const pos = ta ? ta.selectionStart : Math.floor(s.text.length / 2);
        structural(v, C.split(segs, i, pos), i + 1, 0);
        break;
      }
      case "merge":
        if (i + 1 < segs.length) structural(v, C.merge(segs, i, v.job && v.job.language), i, s.text.trim().length);
        break;
      case "delete":
        structural(v, C.remove(segs, i), Math.min(i, segs.length - 2), null);
        break;
      case "start-here":
        setTimes(v, i, t < s.end ? { start: t } : { start: t, end: Math.min(duration, t + length) }, null);
        break;
      case "end-here":
        setTimes(v, i, t > s.start ? { end: t } : { start: Math.max(0, t - length), end: t }, null);
        break;
      case "start-minus": setTimes(v, i, { start: s.start - 0.1 }, "nudge:" + i); break;
      case "start-plus": if (s.start + 0.1 < s.end) setTimes(v, i, { start: s.start + 0.1 }, "nudge:" + i); break;
      case "end-minus": if (s.end - 0.1 > s.start) setTimes(v, i, { end: s.end - 0.1 }, "nudge:" + i); break;
      case "end-plus": setTimes(v, i, { end: Math.min(duration, s.end + 0.1) }, "nudge:" + i); break;
      default: break;
    }
  }

  function onKey(e) {
    const v = view;
    if (!v || !editable(v) || e.isComposing) return;
    const inFind = e.target && e.target.closest && e.target.closest("#find-form, #key-box, #upload-form");
    const ctrl = e.ctrlKey || e.metaKey;
    let action = null;
    if (ctrl && !e.altKey && e.code === "KeyZ") action = e.shiftKey ? "redo" : "undo";
    else if (ctrl && !e.altKey && e.code === "KeyY") action = "redo";
    else if (ctrl && !e.altKey && e.key === "Enter") action = "split";
    else if (e.altKey && !ctrl) {
      const arrows = { ArrowLeft: e.shiftKey ? "end-minus" : "start-minus", ArrowRight: e.shiftKey ? "end-plus" : "start-plus" };
      action = { KeyM: "merge", KeyI: "insert", Delete: "delete", BracketLeft: "start-here", BracketRight: "end-here", KeyP: "play", ArrowUp: "prev", ArrowDown: "next" }[e.code] || arrows[e.code] || null;
    }
    if (!action || inFind) return;
    e.preventDefault();
    run(v, action);
  }

  // ---- editing: saving --------------------------------------------------------------------

  function scheduleSave(v, delay) {
    clearTimeout(v.saveTimer);
    $("save-status").textContent = "Unsaved changes…";
    v.saveTimer = setTimeout(() => { v.saveTimer = null; flushSave(v); }, delay);
  }

  // Brings the server up to date: one PATCH when one cue changed, else one PUT. One at a time.
  function flushSave(v) {
    if (!v) return Promise.resolve();
    if (v.saveTimer) { clearTimeout(v.saveTimer); v.saveTimer = null; }
    if (v.saving) { v.saveAgain = true; return v.saving; }
    v.saving = (async () => {
      try {
        do { v.saveAgain = false; await saveOnce(v); } while (v.saveAgain);
      } finally {
        v.saving = null;
      }
    })();
    return v.saving;
  }

  async function saveOnce(v) {
    const target = v.segments;
    const d = C.diff(v.saved, target);
    if (d.kind === "none") {
      if ($("save-status").textContent === "Unsaved changes…") $("save-status").textContent = "All changes saved.";
      return;
    }
    $("save-status").textContent = "Saving…";
    try {
      if (d.kind === "patch") {
        // keepalive: a PATCH sent as the tab closes still arrives.
        const r = await apiJson("PATCH", `${jobPath(v.id)}/transcript/segments/${d.index}`, { json: d.fields, keepalive: !!v.unloading });
        const saved = v.saved.slice();
        saved[d.index] = C.copy(r.segment);
        v.saved = saved;
      } else {
        const body = { segments: target.map(C.copy) };
        const r = await apiJson("PUT", jobPath(v.id) + "/transcript", { json: body, keepalive: !!v.unloading && JSON.stringify(body).length < 60000 });
        v.saved = (r.segments || []).map(C.copy);
      }
      if (v.closed) return;
      clearError($("save-error"));
      for (const row of $("segments").querySelectorAll(".seg-error")) clearError(row);
      const pending = C.diff(v.saved, v.segments).kind !== "none";
      $("save-status").textContent = pending ? "Unsaved changes…" : "All changes saved at " + new Date().toLocaleTimeString() + ".";
    } catch (err) {
      if (v.closed) return;
      $("save-status").textContent = "Not saved: the server refused a change (see below).";
      const index = err.details && Number.isInteger(err.details.index) ? err.details.index : null;
      const row = index !== null ? rowAt(index) : null;
      if (row && row.querySelector(".seg-error")) {
        showError(row.querySelector(".seg-error"), err);
        keepInView(row);
      } else {
        showError($("save-error"), err);
      }
    }
  }

  // ---- search and replace -------------------------------------------------------------------

  function findNext(v) {
    const needle = $("find").value;
    const hits = C.findAll(v.segments, needle, $("match-case").checked);
    if (!hits.length) { $("find-status").textContent = needle ? "No match." : ""; v.findAt = null; return; }
    const at = v.findAt || { index: v.current, pos: -1 };
    let k = hits.findIndex((h) => h.index > at.index || (h.index === at.index && h.pos > at.pos));
    if (k < 0) k = 0;
    const hit = hits[k];
    v.findAt = hit;
    $("find-status").textContent = `${k + 1} of ${hits.length}`;
    setCurrent(v, hit.index);
    const row = rowAt(hit.index);
    keepInView(row);
    const ta = row.querySelector("textarea");
    ta.setSelectionRange(hit.pos, hit.pos + needle.length);
    ta.focus({ preventScroll: true });
  }

  function replaceOne(v) {
    const needle = $("find").value;
    const hit = v.findAt;
    const s = hit && v.segments[hit.index];
    const same = (a, b) => ($("match-case").checked ? a === b : a.toLowerCase() === b.toLowerCase());
    if (!needle || !s || !same(s.text.slice(hit.pos, hit.pos + needle.length), needle)) { findNext(v); return; }
    const replacement = $("replace").value;
    const text = s.text.slice(0, hit.pos) + replacement + s.text.slice(hit.pos + needle.length);
    commit(v, C.change(v.segments, hit.index, { text }), null);
    rowAt(hit.index).querySelector("textarea").value = text;
    fillRow(v, rowAt(hit.index), hit.index);
    scheduleSave(v, 0);
    scheduleTrack(v);
    v.findAt = { index: hit.index, pos: hit.pos + replacement.length - 1 };
    findNext(v);
  }

  function replaceEvery(v) {
    const r = C.replaceAll(v.segments, $("find").value, $("replace").value, $("match-case").checked);
    if (!r.count) { $("find-status").textContent = "No match."; return; }
    structural(v, r.segs, v.current, null);
    $("find-status").textContent = `Replaced ${r.count}.`;
    v.findAt = null;
  }

  // ---- player ---------------------------------------------------------------------------------

  async function setupPlayer(v) {
    const player = $("player");
    $("player-note").hidden = true;
    const file = localFiles.get(v.id);
    if (file) {
      // Uploaded from this tab: it plays at once, before the server has made anything.
      if (!v.localUrl) v.localUrl = URL.createObjectURL(file);
      usePlayer(v, v.localUrl, (file.type || "").startsWith("audio/"));
      return;
    }
    if (v.mediaUrl) return;
    try {
      const link = await apiJson("GET", jobPath(v.id) + "/media/link", { signal: v.abort.signal });
      if (v.closed) return;
      if (!link.ready) {
        $("player-box").hidden = !v.waveform;
        $("player-note").textContent = "The player appears once a copy the browser can play is made, while the job runs.";
        $("player-note").hidden = false;
        return;
      }
      usePlayer(v, link.url, link.kind === "audio");
    } catch (err) {
      if (v.closed) return;
      $("player-box").hidden = true;
      $("no-player").hidden = false;
    }
  }

  function usePlayer(v, url, audioOnly) {
    const player = $("player");
    v.mediaUrl = url;
    player.classList.toggle("audio-only", audioOnly);
    player.src = url;
    $("player-box").hidden = false;
    $("no-player").hidden = true;
    player.hidden = false;
    if (!editable(v)) renderSegments(v); // live rows become buttons that play
    refreshTrack(v);
  }

  function onPlayerError() {
    const v = view;
    if (!v || !v.mediaUrl) return;
    if (v.mediaUrl !== v.localUrl && !v.linkRetried) {
      // The signed link may have expired (a tab left open for hours): ask for a new one, once.
      v.linkRetried = true;
      v.mediaUrl = null;
      setupPlayer(v);
      return;
    }
    const note = $("player-note");
    note.textContent = "This browser cannot play this file; the transcript, downloads and exports still work.";
    note.hidden = false;
  }

  function scheduleTrack(v) {
    clearTimeout(v.trackTimer);
    v.trackTimer = setTimeout(() => refreshTrack(v), 300);
  }

  // The subtitles on the player, made here from the cues as they are now (edits show at once).
  function refreshTrack(v) {
    if (!v.mediaUrl || v.closed) return;
    const player = $("player");
    if (v.trackUrl) URL.revokeObjectURL(v.trackUrl);
    v.trackUrl = URL.createObjectURL(new Blob([C.toVtt(v.segments)], { type: "text/vtt" }));
    const lang = (v.job && v.job.language) || "und";
    const track = el("track", { kind: "subtitles", label: "Subtitles", srclang: lang, src: v.trackUrl, default: true });
    player.replaceChildren(track);
    track.track.mode = "showing";
  }

  function seek(v, index) {
    const seg = v.segments[index];
    const player = $("player");
    if (!seg || !v.mediaUrl) return;
    player.currentTime = seg.start;
    const playing = player.play();
    if (playing) playing.catch(() => { /* autoplay rules or an unplayable file: the seek stands */ });
  }

  function activeIndex(segs, t) {
    let lo = 0, hi = segs.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (segs[mid].start <= t) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found >= 0 && t < segs[found].end ? found : -1;
  }

  function highlight() {
    const v = view;
    if (!v) return;
    drawWaveform(v);
    const i = activeIndex(v.segments, $("player").currentTime);
    if (i === v.active) return;
    const old = rowAt(v.active);
    if (old) { old.classList.remove("active"); old.removeAttribute("aria-current"); }
    v.active = i;
    const row = rowAt(i);
    if (!row) return;
    row.classList.add("active");
    row.setAttribute("aria-current", "true");
    // Kept in sight, unless the user is typing in the list.
    const typing = document.activeElement && $("segments").contains(document.activeElement) && /^(TEXTAREA|INPUT)$/.test(document.activeElement.tagName);
    if (!typing) keepInView(row);
  }

  // ---- waveform -------------------------------------------------------------------------------

  const WAVE_SPAN_S = 20;

  async function loadWaveform(v) {
    v.waveformAsked = true;
    v.waveformTriedAt = Date.now();
    try {
      const data = await apiJson("GET", jobPath(v.id) + "/waveform", { signal: v.abort.signal });
      if (v.closed) return;
      const raw = atob(data.peaks);
      const peaks = new Uint8Array(raw.length);
      let max = 1;
      for (let k = 0; k < raw.length; k++) { peaks[k] = raw.charCodeAt(k); if (peaks[k] > max) max = peaks[k]; }
      v.waveform = { peaks, rate: data.peaks_per_second, duration: data.duration_s, max };
      $("waveform").hidden = false;
      if (!v.mediaUrl) setupPlayer(v);
      drawWaveform(v);
    } catch (_) {
      v.waveformAsked = false; // asked again when the job is done
    }
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // Twenty seconds around the playhead: the cues as boxes (the current one stronger), the peaks, the playhead.
  function drawWaveform(v) {
    const canvas = $("waveform");
    if (!v || !v.waveform || canvas.hidden) return;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const total = v.waveform.duration || 0;
    const span = Math.min(WAVE_SPAN_S, total || WAVE_SPAN_S);
    const t = $("player").currentTime || 0;
    const from = Math.max(0, Math.min(t - span / 2, total - span));
    v.waveView = { from, span, width: w };
    const x = (time) => ((time - from) / span) * w;
    ctx.font = "11px system-ui, sans-serif";
    v.segments.forEach((s, i) => {
      if (s.end < from || s.start > from + span) return;
      const current = i === v.current && editable(v);
      ctx.fillStyle = cssVar(current ? "--cue-current" : "--cue");
      ctx.fillRect(x(s.start), 0, Math.max(1, x(s.end) - x(s.start)), h);
      ctx.fillStyle = cssVar("--muted");
      ctx.fillText(String(i + 1), x(s.start) + 3, 11);
    });
    const { peaks, rate, max } = v.waveform;
    const mid = h / 2 + 4, amp = (h - 16) / 2;
    ctx.fillStyle = cssVar("--wave");
    for (let px = 0; px < w; px++) {
      const k0 = Math.floor((from + (px / w) * span) * rate);
      const k1 = Math.max(k0 + 1, Math.floor((from + ((px + 1) / w) * span) * rate));
      let p = 0;
      for (let k = k0; k < k1 && k < peaks.length; k++) if (peaks[k] > p) p = peaks[k];
      const bar = Math.max(0.5, (p / max) * amp);
      ctx.fillRect(px, mid - bar, 1, bar * 2);
    }
    ctx.fillStyle = cssVar("--danger");
    ctx.fillRect(Math.round(x(t)) - 1, 0, 2, h);
  }

  function onWaveClick(e) {
    const v = view;
    if (!v || !v.waveView || !v.mediaUrl) return;
    const rect = e.currentTarget.getBoundingClientRect();
    const time = v.waveView.from + ((e.clientX - rect.left) / rect.width) * v.waveView.span;
    $("player").currentTime = Math.max(0, time);
    const i = activeIndex(v.segments, time);
    if (i >= 0 && editable(v)) setCurrent(v, i);
  }

  function animateWave() {
    const v = view;
    const player = $("player");
    if (!v || player.paused) return;
    drawWaveform(v);
    requestAnimationFrame(animateWave);
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
      await flushSave(v); // the export renders what the server has: the edits first
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

    $("file").addEventListener("change", (e) => setFiles(e.target.files));
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) setFiles(e.dataTransfer.files);
    });
    // A file dropped beside the zone must not navigate away from the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("upload-form").addEventListener("submit", onUpload);
    $("zip-button").addEventListener("click", downloadZip);

    $("job-title").setAttribute("tabindex", "-1");
    $("job-close").addEventListener("click", closeJob);
    const player = $("player");
    player.addEventListener("timeupdate", highlight);
    player.addEventListener("seeked", highlight);
    player.addEventListener("play", () => requestAnimationFrame(animateWave));
    player.addEventListener("error", onPlayerError);
    $("waveform").addEventListener("click", onWaveClick);
    window.addEventListener("resize", () => { if (view) drawWaveform(view); });
    document.addEventListener("keydown", onKey);
    $("undo-button").addEventListener("click", () => view && run(view, "undo"));
    $("redo-button").addEventListener("click", () => view && run(view, "redo"));
    for (const button of $("editor-tools").querySelectorAll("button[data-action]")) {
      // Keep the text cursor where it is: the button acts on it (split) and on its cue.
      button.addEventListener("mousedown", (e) => e.preventDefault());
      button.addEventListener("click", () => { if (view && editable(view)) run(view, button.dataset.action); });
    }
    $("find-form").addEventListener("submit", (e) => { e.preventDefault(); if (view) findNext(view); });
    $("find").addEventListener("input", () => { if (view) { view.findAt = null; $("find-status").textContent = ""; } });
    $("replace-one").addEventListener("click", () => view && replaceOne(view));
    $("replace-all").addEventListener("click", () => view && replaceEvery(view));
    window.addEventListener("pagehide", () => { if (view) { view.unloading = true; flushSave(view); } });

    for (const button of $("downloads").querySelectorAll("button[data-format]")) {
      button.addEventListener("click", async () => {
        if (!view) return;
        const fmt = button.dataset.format;
        await flushSave(view); // the download is what the server has: the edits first
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
