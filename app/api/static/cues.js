// altyazi web page: pure operations on cues (segments) and the words the page says about them.
// No DOM here: every function takes plain {start, end, text, words?} objects and
// returns new ones, so undo can keep old arrays as they are.
"use strict";

(() => {
  // The limits subtitlers work to (Netflix-like): a cue is flagged, never refused, past them.
  const RULES = { maxCps: 17, maxLine: 42, minDuration: 5 / 6, maxDuration: 7 };
  const NO_SPACE = new Set(["zh", "ja", "th", "lo", "my", "km", "bo", "yue"]);
  // A word the model gave less than this probability is marked for a second look.
  const LOW_CONFIDENCE = 0.5;

  function copy(seg) {
    const out = { start: seg.start, end: seg.end, text: seg.text };
    if (seg.words) out.words = seg.words.map((w) => Object.assign({}, w));
    return out;
  }

  const round3 = (t) => Math.round(t * 1000) / 1000;

  // Characters a reader reads: the visible text without line breaks.
  function readable(text) {
    return text.replace(/\s*\n\s*/g, " ").trim();
  }

  function warnings(segs, i) {
    const s = segs[i];
    const out = [];
    const duration = s.end - s.start;
    const chars = [...readable(s.text)].length;
    if (duration > 0 && chars) {
      const cps = chars / duration;
      if (cps > RULES.maxCps) out.push({ kind: "cps", text: `${cps.toFixed(1)} characters a second (over ${RULES.maxCps})` });
    }
    const long = s.text.split("\n").map((l) => [...l.trim()].length).filter((n) => n > RULES.maxLine);
    if (long.length) out.push({ kind: "line", text: `a line of ${Math.max(...long)} characters (over ${RULES.maxLine})` });
    const next = segs[i + 1];
    if (next && next.start < s.end - 0.0005) out.push({ kind: "overlap", text: `overlaps the next cue by ${(s.end - next.start).toFixed(2)} s` });
    if (duration > RULES.maxDuration) out.push({ kind: "duration", text: `on screen ${duration.toFixed(1)} s (over ${RULES.maxDuration} s)` });
    else if (duration < RULES.minDuration) out.push({ kind: "duration", text: `on screen ${duration.toFixed(2)} s (under ${RULES.minDuration.toFixed(2)} s)` });
    return out;
  }

  // Where the text cursor falls in time: at the start of the word it is in or
  // before when the words are timed, else in proportion to the characters.
  function splitTime(seg, pos) {
    const text = seg.text;
    if (seg.words && seg.words.length > 1) {
      let at = 0;
      for (let k = 0; k < seg.words.length; k++) {
        const w = seg.words[k].word;
        const found = text.indexOf(w.trim(), at);
        const startAt = found < 0 ? at : found;
        if (k > 0 && startAt >= pos) return { time: seg.words[k].start, word: k };
        at = startAt + w.trim().length;
      }
    }
    const share = text.length ? pos / text.length : 0.5;
    return { time: seg.start + (seg.end - seg.start) * Math.min(0.9, Math.max(0.1, share)), word: null };
  }

  function split(segs, i, pos) {
    const s = segs[i];
    const cut = Math.max(0, Math.min(pos, s.text.length));
    const at = splitTime(s, cut);
    const time = round3(Math.min(s.end - 0.001, Math.max(s.start + 0.001, at.time)));
    const a = { start: s.start, end: time, text: s.text.slice(0, cut).trim() };
    const b = { start: time, end: s.end, text: s.text.slice(cut).trim() };
    if (s.words && at.word !== null) {
      a.words = s.words.slice(0, at.word).map((w) => Object.assign({}, w, { end: Math.min(w.end, time) }));
      b.words = s.words.slice(at.word).map((w) => Object.assign({}, w, { start: Math.max(w.start, time) }));
    }
    return segs.slice(0, i).concat([a, b], segs.slice(i + 1));
  }

  function merge(segs, i, language) {
    const a = segs[i], b = segs[i + 1];
    if (!b) return segs;
    const sep = NO_SPACE.has((language || "").toLowerCase()) ? "" : " ";
    const joined = { start: a.start, end: Math.max(a.end, b.end), text: [a.text.trim(), b.text.trim()].filter(Boolean).join(sep) };
    if (a.words && b.words) joined.words = a.words.concat(b.words).map((w) => Object.assign({}, w));
    return segs.slice(0, i).concat([joined], segs.slice(i + 2));
  }

  // A new empty cue after cue i: in the gap before the next one when there is room,
  // else in the second half of cue i. With no cues, at ``at`` (the playhead).
  function insertAfter(segs, i, at, duration) {
    if (!segs.length) {
      const start = round3(Math.max(0, at || 0));
      const end = round3(duration ? Math.min(duration, start + 2) : start + 2);
      return [{ start, end: end > start ? end : start + 1, text: "" }];
    }
    const s = segs[i];
    const next = segs[i + 1];
    const limit = next ? next.start : (duration || s.end + 2);
    const out = segs.slice();
    if (limit - s.end >= 0.3) {
      out.splice(i + 1, 0, { start: s.end, end: round3(Math.min(limit, s.end + 2)), text: "" });
      return out;
    }
    const mid = round3((s.start + s.end) / 2);
    const shrunk = copy(s);
    shrunk.end = mid;
    if (shrunk.words) shrunk.words = shrunk.words.filter((w) => w.end <= mid);
    out.splice(i, 1, shrunk, { start: mid, end: s.end, text: "" });
    return out;
  }

  function remove(segs, i) {
    return segs.slice(0, i).concat(segs.slice(i + 1));
  }

  // One cue with new fields; new text drops the word timings (as the server does).
  function change(segs, i, fields) {
    const s = copy(segs[i]);
    const newText = "text" in fields && fields.text !== s.text;
    Object.assign(s, fields);
    if (newText) delete s.words;
    else if (s.words && ("start" in fields || "end" in fields)) s.words = s.words.filter((w) => w.start >= s.start - 0.0005 && w.end <= s.end + 0.0005);
    const out = segs.slice();
    out[i] = s;
    return out;
  }

  function sameCue(a, b) {
    return Math.round(a.start * 1000) === Math.round(b.start * 1000) && Math.round(a.end * 1000) === Math.round(b.end * 1000) && a.text.trim() === b.text.trim();
  }

  // How to bring the server from ``saved`` to ``now``: nothing, one PATCH, or a PUT.
  function diff(saved, now) {
    if (saved.length !== now.length) return { kind: "put" };
    const changed = [];
    for (let i = 0; i < now.length; i++) if (!sameCue(saved[i], now[i])) changed.push(i);
    if (!changed.length) return { kind: "none" };
    if (changed.length > 1) return { kind: "put" };
    const i = changed[0], a = saved[i], b = now[i];
    const fields = {};
    if (a.text.trim() !== b.text.trim()) fields.text = b.text;
    if (Math.round(a.start * 1000) !== Math.round(b.start * 1000)) fields.start = round3(b.start);
    if (Math.round(a.end * 1000) !== Math.round(b.end * 1000)) fields.end = round3(b.end);
    return { kind: "patch", index: i, fields };
  }

  // Each match of ``needle`` in the cues' text, in order: {index, pos}.
  function findAll(segs, needle, matchCase) {
    const out = [];
    if (!needle) return out;
    const n = matchCase ? needle : needle.toLowerCase();
    segs.forEach((s, index) => {
      const hay = matchCase ? s.text : s.text.toLowerCase();
      for (let pos = hay.indexOf(n); pos >= 0; pos = hay.indexOf(n, pos + n.length)) out.push({ index, pos });
    });
    return out;
  }

  function replaceAll(segs, needle, replacement, matchCase) {
    if (!needle) return { segs, count: 0 };
    const flags = matchCase ? "g" : "gi";
    const pattern = new RegExp(needle.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), flags);
    let count = 0;
    let out = segs;
    segs.forEach((s, i) => {
      const found = s.text.match(pattern);
      if (found) {
        count += found.length;
        out = change(out, i, { text: s.text.replace(pattern, () => replacement) });
      }
    });
    return { segs: out, count };
  }

  // The text as WebVTT, for the player's track (made here, so it follows every edit).
  function toVtt(segs) {
    const clock = (t) => {
      let ms = Math.max(0, Math.round(t * 1000));
      const h = Math.floor(ms / 3600000); ms -= h * 3600000;
      const m = Math.floor(ms / 60000); ms -= m * 60000;
      const s = Math.floor(ms / 1000); ms -= s * 1000;
      const two = (n) => String(n).padStart(2, "0");
      return `${two(h)}:${two(m)}:${two(s)}.${String(ms).padStart(3, "0")}`;
    };
    const esc = (line) => line.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    const cues = segs.filter((s) => s.text.trim()).map((s) => {
      const end = Math.max(s.end, s.start + 0.001);
      const lines = s.text.split("\n").map((l) => l.trim()).filter(Boolean).map(esc);
      return `${clock(s.start)} --> ${clock(end)}\n${lines.join("\n")}`;
    });
    return "WEBVTT\n\n" + cues.join("\n\n") + "\n";
  }

  // "about 2 min left" for the job's eta_seconds; null when there is nothing sensible to say.
  function etaText(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return null;
    if (seconds < 45) return "less than a minute left";
    if (seconds < 90) return "about 1 min left";
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return `about ${minutes} min left`;
    const h = Math.floor(minutes / 60), m = minutes % 60;
    return `about ${h} h${m ? " " + m + " min" : ""} left`;
  }

  window.altyaziCues = { RULES, LOW_CONFIDENCE, copy, warnings, split, merge, insertAfter, remove, change, diff, findAll, replaceAll, toVtt, etaText };
})();
