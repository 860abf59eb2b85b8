// mha's offline page: plain JavaScript, no library, no network. Inlined into the page by mhacli/views/page.py.
// Data: the <script type="application/json" id="mha-data"> block (see webpage.py for its fields).
// Maps: each head's lower triangle, row by row (query i over keys 0..i), one byte per weight: round(255 w),
// zlib-deflated and base64-encoded; decoded with the browser's DecompressionStream when a head is opened.
// Thumbnails: S x S bytes (the largest weight of each block of cells), base64, not compressed.
"use strict";
(function () {
  // 256-entry colour maps, RGB hex, taken from matplotlib (viridis; RdBu_r for differences).
  const VIRIDIS = "44015444025645045745055946075a46085c460a5d460b5e470d60470e6147106347116447136548146748166848176948186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f854240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f881fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad8128ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc743fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc8635ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21ad8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725";
  const RDBU = "05306106326407346708366a09386d0a3b700c3d730d3f760e41790f437b10457e114781124984134c87144e8a15508d1752901854931956961a58991b5a9c1c5c9f1d5fa21e61a51f63a82065ab2267ac2369ad246aae266caf276eb02870b12a71b22b73b32c75b42e77b52f79b5307ab6327cb7337eb83480b93681ba3783bb3885bc3a87bd3b88be3c8abe3e8cbf3f8ec0408fc14291c24393c34695c44997c54c99c64f9bc7529dc8569fc959a1ca5ca3cb5fa5cd62a7ce65a9cf68abd06bacd16eaed271b0d375b2d478b4d57bb6d67eb8d781bad884bcd987beda8ac0db8dc2dc90c4dd93c6de96c7df98c8e09bc9e09dcbe1a0cce2a2cde3a5cee3a7d0e4a9d1e5acd2e5aed3e6b1d5e7b3d6e8b6d7e8b8d8e9bbdaeabddbeac0dcebc2ddecc5dfecc7e0edcae1eecce2efcfe4efd1e5f0d2e6f0d4e6f1d5e7f1d7e8f1d8e9f1dae9f2dbeaf2ddebf2deebf2e0ecf3e1edf3e3edf3e4eef4e6eff4e7f0f4e9f0f4eaf1f5ecf2f5edf2f5eff3f5f0f4f6f2f5f6f3f5f6f5f6f7f6f7f7f7f6f6f7f5f4f8f4f2f8f3f0f8f2eff8f1edf9f0ebf9efe9f9eee7f9ede5f9ebe3faeae1fae9dffae8defae7dcfbe6dafbe5d8fbe4d6fbe3d4fce2d2fce0d0fcdfcffcdecdfdddcbfddcc9fddbc7fdd9c4fcd7c2fcd5bffcd3bcfbd0b9fbceb7fbccb4facab1fac8aff9c6acf9c4a9f9c2a7f8bfa4f8bda1f8bb9ef7b99cf7b799f7b596f6b394f6b191f6af8ef5ac8bf5aa89f5a886f4a683f3a481f2a17ff19e7df09c7bef9979ee9677ec9374eb9172ea8e70e98b6ee8896ce6866ae58368e48066e37e64e27b62e17860df765ede735cdd7059dc6e57db6b55da6853d86551d7634fd6604dd55d4cd35a4ad25849d05548cf5246ce4f45cc4c44cb4942c94741c84440c6413ec53e3dc43b3cc2383ac13639bf3338be3036bd2d35bb2a34ba2832b82531b72230b61f2eb41c2db3192cb1182bae172aab162aa81529a51429a213289f12289c1127991027960f27930e26900d268d0c258a0b25870a248409248108237f08237c07227906227605217304217003206d02206a011f67001f";
  const BG = [244, 244, 244]; // cells with no key visible (upper triangle)
  const LOG_FLOOR = Math.log10(1 / 255); // the log view spans 1/255 .. 1: the quantisation's smallest step

  function lut(hex) {
    const out = new Uint8Array(256 * 3);
    for (let i = 0; i < 256 * 3; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
    return out;
  }
  const CM = lut(VIRIDIS);
  const DM = lut(RDBU);
  // level (0..255, weight * 255) -> colour index in the log view
  const LOG_INDEX = new Uint8Array(256);
  for (let q = 1; q < 256; q++) LOG_INDEX[q] = Math.round(255 * (1 - Math.log10(q / 255) / LOG_FLOOR));

  const data = JSON.parse(document.getElementById("mha-data").textContent);
  const T = data.tokens.length;
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const VISIBLE = { " ": "\u00b7", "\n": "\u21b5", "\t": "\u2192", "\r": "\u240d" };
  const show = (tok) => Array.from(tok).map((c) => VISIBLE[c] || c).join("") || "\u2205";

  const state = { head: -1, query: -1, log: false, maps: {}, search: "" };

  function b64bytes(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function inflate(s) {
    const stream = new Blob([b64bytes(s)]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // the lower triangle of head k of map set `set` ("A", "B"): Uint8Array of T(T+1)/2 levels
  async function levels(set, k) {
    const key = set + k;
    if (!state.maps[key]) state.maps[key] = inflate(data.maps[set][k]);
    return state.maps[key];
  }
  const at = (tri, i, j) => tri[(i * (i + 1)) / 2 + j];

  // --- header, legend, controls -----------------------------------------------------------------------------
  function header() {
    $("#title").textContent = data.title;
    $("#caption").textContent = data.caption;
    const legend = $("#legend");
    if (data.grid.colour === "kind") {
      for (const [kind, k] of Object.entries(data.kinds)) {
        const item = el("span", "kind-key");
        const sw = el("span", "swatch");
        sw.style.background = k.colour;
        item.append(sw, el("b", "", k.letter), " " + kind);
        legend.append(item);
      }
    } else {
      legend.append(el("span", "", data.grid.says));
    }
    $("#search").addEventListener("input", (e) => search(e.target.value));
    $("#filter").addEventListener("input", (e) => filterHeads(e.target.value));
    if (!T) $("#search-box").hidden = true; // no text (census): nothing to search but the heads
    for (const r of document.querySelectorAll("input[name=scale]")) {
      r.addEventListener("change", () => {
        state.log = $("#scale-log").checked;
        if (state.head >= 0) openHead(state.head);
      });
    }
    if (!data.maps) $("#scale").hidden = true;
  }

  // --- the layer x head grid --------------------------------------------------------------------------------
  function grid() {
    const g = $("#grid");
    g.style.gridTemplateColumns = `auto repeat(${data.heads.length}, auto)`;
    g.append(el("div", "corner", data.grid.corner || "L\\H"));
    for (const h of data.heads) g.append(el("div", "colhead", String(h)));
    const byPos = new Map(data.cells.map((c, k) => [c.layer + "." + c.head, k]));
    for (const layer of data.layers) {
      const rh = el("div", "rowhead", String(layer));
      rh.dataset.layer = layer;
      g.append(rh);
      for (const h of data.heads) {
        const k = byPos.get(layer + "." + h);
        if (k === undefined) {
          const e = el("div", "cell empty");
          e.dataset.layer = layer;
          g.append(e);
          continue;
        }
        const c = data.cells[k];
        const cell = el("button", "cell");
        cell.type = "button";
        cell.dataset.k = k;
        cell.dataset.layer = layer;
        cell.title = c.title;
        cell.style.setProperty("--ring", c.colour);
        if (data.thumbs) {
          const cv = el("canvas", "thumb");
          cv.width = cv.height = data.thumb_size;
          drawThumb(cv, b64bytes(data.thumbs[k]));
          cell.append(cv);
        } else {
          const sw = el("div", "thumb swatchcell");
          sw.style.background = c.colour;
          cell.append(sw);
        }
        cell.append(el("span", "label", c.label));
        cell.addEventListener("click", () => openHead(k));
        g.append(cell);
      }
    }
  }

  // --- the head filter: every term must match; `L3` / `L3H5` / `H5` name layers and heads exactly, any other
  // term is looked for in the head's title, label and numbers (kind, confidence, ...); rows with no match hide
  const HEAD_TERM = /^(?:l(\d+))?(?:h(\d+))?$/;
  function headMatches(c, terms) {
    for (const t of terms) {
      const m = HEAD_TERM.exec(t);
      if (m && (m[1] !== undefined || m[2] !== undefined)) {
        if (m[1] !== undefined && Number(m[1]) !== c.layer) return false;
        if (m[2] !== undefined && Number(m[2]) !== c.head) return false;
        continue;
      }
      if (!c.haystack) c.haystack = [c.name, c.title, c.label, ...c.info.flat()].join(" ").toLowerCase();
      if (!c.haystack.includes(t)) return false;
    }
    return true;
  }

  function filterHeads(q) {
    const terms = q.toLowerCase().split(/[\s,]+/).filter((t) => t !== "");
    const shown = new Set();
    let n = 0;
    for (const cell of document.querySelectorAll("#grid .cell:not(.empty)")) {
      const c = data.cells[Number(cell.dataset.k)];
      const ok = headMatches(c, terms);
      cell.classList.toggle("filtered", !ok);
      if (ok) { n++; shown.add(cell.dataset.layer); }
    }
    for (const e of document.querySelectorAll("#grid [data-layer]")) {
      e.classList.toggle("gone", !shown.has(e.dataset.layer));
    }
    $("#filter-count").textContent = terms.length ? `${n} of ${data.cells.length} heads` : "";
    document.documentElement.dataset.filtered = String(n);
  }

  function drawThumb(cv, bytes) {
    const S = data.thumb_size;
    const ctx = cv.getContext("2d");
    const img = ctx.createImageData(S, S);
    for (let p = 0; p < S * S; p++) {
      const i = Math.floor(p / S), j = p % S;
      const o = 4 * p;
      if (j > i) {
        img.data.set(BG, o);
      } else {
        const q = bytes[p];
        img.data[o] = CM[3 * q]; img.data[o + 1] = CM[3 * q + 1]; img.data[o + 2] = CM[3 * q + 2];
      }
      img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  // --- one head, large ---------------------------------------------------------------------------------------
  // panels: [{name, kind: "map"|"diff", sets: ["A"] or ["A", "B"]}]
  // the map's size on screen: whole pixels per cell up to `room`; a longer text is scaled down to `room`
  function displaySide(n) {
    const width = $("#detail").clientWidth || 800;
    const beside = n === 1 ? 300 : 0; // the head's numbers stay beside a single map
    const tall = (window.innerHeight || 900) - 280; // the map, its labels and the text strip on one screen
    const room = Math.max(200, Math.min(n === 1 ? 600 : 400, Math.floor((width - 24 - beside) / n) - 100, tall));
    return T <= room ? T * Math.floor(room / T) : room;
  }

  async function openHead(k) {
    state.head = k;
    for (const b of document.querySelectorAll(".cell.selected")) b.classList.remove("selected");
    const btn = document.querySelector(`.cell[data-k="${k}"]`);
    if (btn) btn.classList.add("selected");
    const c = data.cells[k];
    $("#head-title").textContent = c.title;
    const info = $("#info");
    info.replaceChildren();
    for (const [key, value] of c.info) {
      info.append(el("dt", "", key), el("dd", "", value));
    }
    if (!data.maps) return;
    const maps = $("#maps");
    const tris = {};
    for (const set of Object.keys(data.maps)) tris[set] = await levels(set, k);
    if (state.head !== k) return; // another head was clicked meanwhile
    state.tris = tris;
    maps.replaceChildren();
    state.panels = [];
    const side = displaySide(data.panels.length);
    data.panels.forEach((p, n) => {
      const panel = el("figure", "panel");
      if (p.title) panel.append(el("figcaption", "", p.title.replace("{head}", c.title)));
      const frame = el("div", "frame");
      const ylab = el("div", "ylab");
      const xlab = el("div", "xlab");
      const stack = el("div", "stack");
      const cv = el("canvas", "map");
      const ov = el("canvas", "overlay");
      cv.width = cv.height = T; // one pixel per cell, scaled by CSS
      ov.width = ov.height = Math.round(side * (window.devicePixelRatio || 1)); // the overlay at screen resolution
      cv.style.imageRendering = side >= T ? "pixelated" : "auto";
      stack.style.width = stack.style.height = side + "px";
      stack.append(cv, ov);
      labels(ylab, xlab, side, n === 0);
      frame.append(ylab, stack, el("div"), xlab);
      panel.append(frame);
      const scale = drawMap(cv, p, tris);
      panel.append(colourbar(p, scale));
      maps.append(panel);
      state.panels.push({ ov, stack, p });
      stack.addEventListener("mousemove", (e) => {
        const r = stack.getBoundingClientRect();
        const i = Math.min(T - 1, Math.max(0, Math.floor(((e.clientY - r.top) / r.height) * T)));
        const j = Math.min(T - 1, Math.max(0, Math.floor(((e.clientX - r.left) / r.width) * T)));
        setQuery(i, j);
      });
      stack.addEventListener("mouseleave", () => setQuery(-1));
    });
    setQuery(state.query);
    document.documentElement.dataset.head = c.name;
  }

  function labels(ylab, xlab, side, rows) {
    const step = Math.max(1, Math.ceil(T / Math.floor(side / 11)));
    const px = side / T;
    for (let i = 0; i < T; i += step) {
      const text = (step > 1 ? i + " " : "") + show(data.tokens[i]).slice(0, 10);
      if (rows) {
        const s = el("span", "", text);
        s.style.top = (i + 0.5) * px + "px";
        ylab.append(s);
      }
      const x = el("span", "", text);
      x.style.left = (i + 0.5) * px + "px";
      xlab.append(x);
    }
    ylab.style.height = side + "px";
    xlab.style.width = side + "px";
  }

  // draws panel p on canvas cv (T x T pixels); returns the colour scale's top value (diff panels)
  function drawMap(cv, p, tris) {
    const ctx = cv.getContext("2d");
    const img = ctx.createImageData(T, T);
    const d = img.data;
    let top = 1;
    const a = tris[p.sets[0]], b = p.sets.length > 1 ? tris[p.sets[1]] : null;
    if (p.kind === "diff") {
      let m = 0;
      for (let x = 0; x < a.length; x++) m = Math.max(m, Math.abs(b[x] - a[x]));
      top = m / 255;
    }
    for (let i = 0; i < T; i++) {
      const base = (i * (i + 1)) / 2;
      for (let j = 0; j < T; j++) {
        const o = 4 * (i * T + j);
        d[o + 3] = 255;
        if (j > i) { d[o] = BG[0]; d[o + 1] = BG[1]; d[o + 2] = BG[2]; continue; }
        let q, map = CM;
        if (p.kind === "diff") {
          const delta = b[base + j] - a[base + j];
          q = top > 0 ? Math.round(127.5 + (127.5 * delta) / (top * 255)) : 128;
          q = Math.min(255, Math.max(0, q));
          map = DM;
        } else {
          q = a[base + j];
          if (state.log) q = LOG_INDEX[q];
        }
        d[o] = map[3 * q]; d[o + 1] = map[3 * q + 1]; d[o + 2] = map[3 * q + 2];
      }
    }
    ctx.putImageData(img, 0, 0);
    return top;
  }

  function colourbar(p, top) {
    const bar = el("div", "colourbar");
    const cv = el("canvas", "bar");
    cv.width = 256; cv.height = 1;
    const ctx = cv.getContext("2d");
    const img = ctx.createImageData(256, 1);
    const map = p.kind === "diff" ? DM : CM;
    for (let q = 0; q < 256; q++) {
      img.data[4 * q] = map[3 * q]; img.data[4 * q + 1] = map[3 * q + 1]; img.data[4 * q + 2] = map[3 * q + 2];
      img.data[4 * q + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    let lo = "0", hi = "1", what = "attention weight";
    if (p.kind === "diff") { lo = "\u2212" + top.toFixed(2); hi = "+" + top.toFixed(2); what = "weight in B \u2212 weight in A"; }
    else if (state.log) { lo = "\u2264 0.004"; hi = "1"; what = "attention weight, log scale"; }
    bar.append(el("span", "lo", lo), cv, el("span", "hi", hi), el("div", "what", what));
    return bar;
  }

  // --- hover: a query row and what it attends to --------------------------------------------------------------
  function setQuery(i, j) {
    state.query = i;
    document.documentElement.dataset.query = String(i);
    const strip = $("#strip");
    const spans = strip.children;
    const tri = state.tris ? state.tris[data.panels[0].sets[data.panels[0].sets.length - 1]] : null;
    let rowMax = 0;
    if (i >= 0 && tri) for (let k = 0; k <= i; k++) rowMax = Math.max(rowMax, at(tri, i, k));
    for (let k = 0; k < spans.length; k++) {
      const s = spans[k];
      s.classList.toggle("query", k === i);
      if (i >= 0 && tri && k <= i && rowMax > 0) {
        const w = at(tri, i, k);
        s.style.backgroundColor = w > 0 ? `rgba(230, 159, 0, ${(0.1 + 0.9 * w / rowMax).toFixed(3)})` : "";
        s.dataset.w = (w / 255).toFixed(3);
      } else {
        s.style.backgroundColor = "";
        delete s.dataset.w;
      }
    }
    const hover = $("#hover");
    if (i >= 0 && tri) {
      const jj = j === undefined ? -1 : j;
      hover.textContent = `query ${i} \u201c${show(data.tokens[i])}\u201d` +
        (jj >= 0 && jj <= i ? ` \u2192 key ${jj} \u201c${show(data.tokens[jj])}\u201d: ${(at(tri, i, jj) / 255).toFixed(3)}` : "");
      const q = spans[i];
      if (q && j !== undefined) q.scrollIntoView({ block: "nearest" });
    } else {
      hover.textContent = "hover a token or a row of the map";
    }
    drawOverlays();
  }

  // search marks (a red tick left of each matching query row) and the hovered row's outline
  function drawOverlays() {
    for (const { ov } of state.panels || []) {
      const ctx = ov.getContext("2d");
      const W = ov.width, f = W / T, dpr = window.devicePixelRatio || 1;
      ctx.clearRect(0, 0, W, W);
      if (state.search) {
        ctx.fillStyle = "rgba(255, 40, 40, 0.95)";
        for (let i = 0; i < T; i++) {
          if (matches(i)) ctx.fillRect(0, i * f, Math.max(3 * dpr, W / 40), Math.max(f, dpr));
        }
      }
      if (state.query >= 0) {
        const lw = 2 * dpr;
        ctx.strokeStyle = "rgba(255, 90, 0, 1)";
        ctx.lineWidth = lw;
        const h = Math.max(f, 2 * dpr);
        ctx.strokeRect(lw / 2, state.query * f - lw / 2, (state.query + 1) * f, h + lw);
      }
    }
  }

  // --- the text strip and search -----------------------------------------------------------------------------
  function strip() {
    const s = $("#strip");
    data.tokens.forEach((t, i) => {
      const span = el("span", "tok", show(t));
      span.dataset.i = i;
      span.title = `${i}: ${JSON.stringify(t)}`;
      s.append(span);
    });
    s.addEventListener("mouseover", (e) => {
      const i = e.target.dataset && e.target.dataset.i;
      if (i !== undefined) setQuery(Number(i));
    });
    s.addEventListener("mouseleave", () => setQuery(-1));
  }

  function matches(i) {
    return state.search !== "" && data.tokens[i].toLowerCase().includes(state.search);
  }

  function search(q) {
    state.search = q.toLowerCase();
    let n = 0;
    const spans = $("#strip").children;
    for (let i = 0; i < spans.length; i++) {
      const m = matches(i);
      spans[i].classList.toggle("match", m);
      if (m) n++;
    }
    $("#search-count").textContent = state.search ? `${n} of ${T} tokens` : "";
    drawOverlays();
  }

  async function main() {
    header();
    grid();
    strip();
    if (data.cells.length) await openHead(data.start || 0);
    setQuery(-1);
    window.mhaReadyMs = performance.now();
    document.documentElement.dataset.ready = "1";
  }
  main().catch((err) => {
    const box = $("#error");
    box.hidden = false;
    box.textContent = "This page could not be drawn: " + err +
      (typeof DecompressionStream === "undefined" ? " (this browser lacks DecompressionStream; use a current one)" : "");
    document.documentElement.dataset.ready = "error";
  });
})();
