// Small helpers shared by the page: DOM building, number formatting, the API client
// (bearer token from sessionStorage, sent as a header) and server-sent events read
// over fetch (EventSource cannot send an Authorization header).

export const TOKEN_KEY = "toposched.token";

/** Build an element: el("div.card#id", {title: "x", onclick: f}, child, "text", …). */
export function el(spec, attrs, ...children) {
  const [head, id] = spec.split("#");
  const [tag, ...classes] = head.split(".");
  const node = document.createElement(tag || "div");
  if (id) node.id = id;
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Build an SVG element: svg("rect", {x: 1, y: 2, class: "gpu"}, children…). */
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 1e-3) return `${(s * 1e6).toFixed(s < 1e-5 ? 1 : 0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(s < 10 ? 2 : 1)} s`;
}

export function fmtGbit(gbit) {
  if (gbit === null || gbit === undefined) return "non-blocking";
  return gbit >= 1000 ? `${(gbit / 1000).toFixed(gbit % 1000 ? 1 : 0)} Tb/s` : `${gbit} Gb/s`;
}

export function fmtAgo(unixSeconds) {
  if (!unixSeconds) return "–";
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return new Date(unixSeconds * 1000).toLocaleString();
}

export function fmtClock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], {hour12: false});
}

/** Tier labels nearest first, with the names the page shows. */
export const TIERS = [
  ["same_gpu", "same GPU"], ["nvlink", "NVLink"], ["pcie_switch", "PCIe switch"],
  ["host_bridge", "host bridge"], ["cross_socket", "cross socket"],
  ["same_leaf", "same leaf"], ["same_pod", "same pod"], ["same_zone", "same zone"],
  ["cross_zone", "cross zone"],
];
export const TIER_NAME = Object.fromEntries(TIERS);

export class Unauthorized extends Error {}

/** The API, with the tab's token (if any) as a bearer header. */
export class Api {
  constructor() { this.token = sessionStorage.getItem(TOKEN_KEY) || ""; }

  headers() { return this.token ? {Authorization: `Bearer ${this.token}`} : {}; }

  setToken(token) {
    this.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  /** GET a JSON read; null on 404; Unauthorized on 401/403. */
  async get(path) {
    const res = await fetch(path, {headers: this.headers(), cache: "no-store"});
    if (res.status === 401 || res.status === 403) throw new Unauthorized(await detail(res));
    if (res.status === 404) return null;
    if (!res.ok) throw new Error(`${path}: ${res.status} ${await detail(res)}`);
    return res.json();
  }
}

async function detail(res) {
  try { return (await res.json()).detail || res.statusText; } catch { return res.statusText; }
}

/**
 * Read a server-sent event stream over fetch, reconnecting with back-off.
 * onEvent(name, data) for each event; onState("live" | "reconnecting" | "unauthorized").
 * A stream silent for `staleMs` (the server sends keep-alives) is dropped and reopened.
 */
export function openStream(api, path, onEvent, onState, staleMs = 40000) {
  let stopped = false, controller = null, backoff = 500;
  async function once() {
    controller = new AbortController();
    let timer = null;
    const arm = () => { clearTimeout(timer); timer = setTimeout(() => controller.abort(), staleMs); };
    try {
      arm();
      const res = await fetch(path, {headers: api.headers(), cache: "no-store",
                                     signal: controller.signal});
      if (res.status === 401 || res.status === 403) { onState("unauthorized"); stopped = true; return; }
      if (!res.ok || !res.body) throw new Error(`stream: ${res.status}`);
      onState("live");
      backoff = 500;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        arm();
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, cut), onEvent);
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (err) {
      if (!stopped) console.debug("stream interrupted", err && err.message);
    } finally {
      clearTimeout(timer);
    }
  }
  (async () => {
    while (!stopped) {
      await once();
      if (stopped) break;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  })();
  return () => { stopped = true; if (controller) controller.abort(); };
}

function dispatch(block, onEvent) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  try {
    onEvent(name, JSON.parse(data.join("\n")));
  } catch (err) {
    console.error(`bad ${name} event`, err);
  }
}

/** Quantile from per-bucket counts (upper bounds; the last bucket is +Inf). */
export function bucketQuantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  let running = 0;
  for (let i = 0; i < counts.length; i++) {
    running += counts[i];
    if (running >= q * total) return i < bounds.length ? bounds[i] : Infinity;
  }
  return Infinity;
}

export function hostOf(gpu) { return gpu.split("/")[0]; }
