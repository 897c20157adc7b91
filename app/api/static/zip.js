// altyazi web page: a store-only ZIP writer (no compression) for "all SRTs at once".
// Subtitle files are small; storing them keeps this to a CRC and two headers per file.
"use strict";

(() => {
  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  // DOS date and time of ``d``, as ZIP headers keep them.
  function dosTime(d) {
    const time = (d.getHours() << 11) | (d.getMinutes() << 5) | (d.getSeconds() >> 1);
    const date = ((Math.max(1980, d.getFullYear()) - 1980) << 9) | ((d.getMonth() + 1) << 5) | d.getDate();
    return { time, date };
  }

  // Names unique within the archive: "talk.srt", "talk (2).srt", ...
  function uniqueName(name, used) {
    let out = name, n = 2;
    const dot = name.lastIndexOf(".");
    while (used.has(out)) out = dot > 0 ? `${name.slice(0, dot)} (${n++})${name.slice(dot)}` : `${name} (${n++})`;
    used.add(out);
    return out;
  }

  // files: [{name, data: Uint8Array}] -> Blob (application/zip)
  function makeZip(files, now) {
    const enc = new TextEncoder();
    const { time, date } = dosTime(now || new Date());
    const parts = [];
    const central = [];
    const used = new Set();
    let offset = 0;
    for (const file of files) {
      const name = enc.encode(uniqueName(file.name, used));
      const data = file.data;
      const crc = crc32(data);
      // The fields both headers share, from "version needed" on; the central one has "made by" first.
      const common = (view, at) => {
        view.setUint16(at, 20, true); // version needed: 2.0
        view.setUint16(at + 2, 0x0800, true); // names are UTF-8
        view.setUint16(at + 4, 0, true); // stored, not compressed
        view.setUint16(at + 6, time, true);
        view.setUint16(at + 8, date, true);
        view.setUint32(at + 10, crc, true);
        view.setUint32(at + 14, data.length, true); // compressed size
        view.setUint32(at + 18, data.length, true); // size
        view.setUint16(at + 22, name.length, true);
      };
      const local = new DataView(new ArrayBuffer(30));
      local.setUint32(0, 0x04034b50, true);
      common(local, 4);
      parts.push(local.buffer, name, data);
      const dir = new DataView(new ArrayBuffer(46));
      dir.setUint32(0, 0x02014b50, true);
      dir.setUint16(4, 20, true); // made by
      common(dir, 6);
      dir.setUint32(42, offset, true);
      central.push(dir.buffer, name);
      offset += 30 + name.length + data.length;
    }
    const dirSize = central.reduce((n, p) => n + p.byteLength, 0);
    const end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true);
    end.setUint16(8, files.length, true);
    end.setUint16(10, files.length, true);
    end.setUint32(12, dirSize, true);
    end.setUint32(16, offset, true);
    return new Blob([...parts, ...central, end.buffer], { type: "application/zip" });
  }

  window.altyaziZip = { makeZip, crc32 };
})();
