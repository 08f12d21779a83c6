// The fabric at three zooms: the cluster (zones → pods → leaves and racks → one tile
// per host), a pod (each host's GPUs, instances and their pairings) and a host (GPUs,
// NVLink, PCIe switches, NICs and the leaves they land on). Only the cluster view is
// held in full; a pod or a host is fetched when the operator zooms in.

import {el, fill, fmtBytes, fmtGbit, hostOf, svg, TIER_NAME} from "./util.js";

const ROLES = ["prefill", "decode", "both"];
const ROLE_COLOUR = {prefill: "#4c9bff", decode: "#ff9f43", both: "#b197fc"};
const IDLE = "#2b3548";
/** Clusters up to this many hosts draw each host as a card with its GPUs' roles. */
const BIG_TILES_UP_TO = 64;
/** Pods with more hosts than this draw each host as a small grid of unnumbered GPUs. */
const COMPACT_POD_OVER = 24;

/** In-flight load of a link id as a level 0–3 (none, some, ≥256 MiB, ≥4 GiB). */
function level(load) {
  if (!load || !load.bytes) return 0;
  return load.bytes >= 4 * 2 ** 30 ? 3 : load.bytes >= 256 * 2 ** 20 ? 2 : 1;
}

function loadTitle(name, load, capacityText) {
  const base = `${name} · ${capacityText}`;
  if (!load || !load.bytes) return `${base} · idle`;
  return `${base} · ${fmtBytes(load.bytes)} in flight (${load.transfers} transfer${load.transfers === 1 ? "" : "s"})`;
}

function tileBackground(tile) {
  const n = tile.gpus || 1;
  let at = 0;
  const stops = [];
  for (const role of ROLES) {
    if (!tile[role]) continue;
    const end = at + (tile[role] / n) * 100;
    stops.push(`${ROLE_COLOUR[role]} ${at}% ${end}%`);
    at = end;
  }
  stops.push(`${IDLE} ${at}% 100%`);
  return `linear-gradient(90deg, ${stops.join(", ")})`;
}

function kind(inst) {
  return inst.placed && inst.live ? "placed, worker live" : inst.placed ? "placed, no worker yet" : "worker (not placed)";
}

function domainHue(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

export class FabricView {
  constructor(root, api, crumbs) {
    this.root = root;
    this.api = api;
    this.crumbs = crumbs;
    this.overview = null;
    this.route = {level: "cluster"};
    this.detail = null;
    this.links = new Map();
    this.hostBytes = new Map();
    this.marked = {prefill: [], decode: []};
  }

  setOverview(overview) {
    this.overview = overview;
    if (this.route.level === "cluster") this.render();
  }

  /** Traffic frame in: colour the links (uplinks, leaves, NICs) by bytes in flight. */
  setLinks(items) {
    this.links = new Map();
    this.hostBytes = new Map();
    for (const item of items) {
      const id = item.link.slice(0, item.link.lastIndexOf(":"));  // both directions together
      const known = this.links.get(id) || {bytes: 0, transfers: 0};
      this.links.set(id, {bytes: known.bytes + item.bytes,
                          transfers: known.transfers + item.transfers});
      if (id.startsWith("nic:")) {
        const host = hostOf(id.slice(4));
        this.hostBytes.set(host, (this.hostBytes.get(host) || 0) + item.bytes);
      }
    }
    this.paintLinks();
  }

  /** Show a zoom: {level: "cluster"} | {level: "pod", name} | {level: "host", name}. */
  async show(route) {
    this.route = route;
    this.detail = null;
    if (route.level !== "cluster") {
      this.detail = await this.api.get(`/v1/ui/${route.level}s/${encodeURIComponent(route.name)}`);
      if (this.route !== route) return;  // the operator moved on meanwhile
    }
    this.render();
  }

  /** The fabric, placement or workers changed: re-read the zoom shown. */
  async refresh() {
    if (this.route.level !== "cluster") await this.show(this.route);
  }

  render() {
    this.renderCrumbs();
    if (!this.overview) {
      fill(this.root, el("p.empty", {text: "No fabric loaded yet: PUT /v1/topology/inventory (or start the service with --fabric)."}));
      return;
    }
    if (this.route.level === "cluster") fill(this.root, this.cluster());
    else if (!this.detail) fill(this.root, el("p.empty", {text: `No ${this.route.level} named ${this.route.name} in this fabric.`}));
    else if (this.route.level === "pod") fill(this.root, this.pod(this.detail));
    else fill(this.root, this.host(this.detail));
    this.paintLinks();
    this.paintMarks();
    if (this.route.level === "pod" && this.detail) requestAnimationFrame(() => this.drawPairings());
  }

  renderCrumbs() {
    const parts = [el("a", {href: "#/", text: this.overview ? this.overview.summary.name : "cluster"})];
    const d = this.detail;
    if (d && this.route.level === "pod") parts.push(el("span", {text: d.zone}), el("b", {text: d.name}));
    if (d && this.route.level === "host") {
      parts.push(el("span", {text: d.zone}), el("a", {href: `#/pod/${d.pod}`, text: d.pod}),
                 el("span", {text: d.rack}), el("b", {text: d.name}));
    }
    fill(this.crumbs, ...parts.flatMap((p, i) => (i ? [el("i.sep", {text: "›"}), p] : [p])));
  }

  // -- cluster ---------------------------------------------------------------------
  cluster() {
    const ov = this.overview;
    this.big = ov.summary.hosts <= BIG_TILES_UP_TO;
    return el("div.zones", {}, ov.zones.map((zone) => el("section.zone", {dataset: {zone: zone.name}},
      el("header", {},
        el("h3", {text: zone.name}), zone.region ? el("span.muted", {text: zone.region}) : null,
        this.uplink(`zone:${zone.name}`, `zone link ${fmtGbit(zone.uplink_gbit)}`)),
      el("div.pods", {}, zone.pods.map((pod) => this.podCard(pod))))));
  }

  uplink(id, text) {
    return el("span.uplink", {dataset: {link: id}}, el("i.bar"), el("span", {text}));
  }

  podCard(pod) {
    const widest = Math.max(1, ...pod.racks.map((r) => r.hosts.length));
    const size = widest > 24 ? 8 : widest > 12 ? 10 : widest > 6 ? 14 : 18;
    const card = el("article.pod", {dataset: {pod: pod.name}},
      el("header", {},
        el("a.pod-name", {href: `#/pod/${encodeURIComponent(pod.name)}`, text: pod.name,
                           title: "zoom into this pod"}),
        this.uplink(`pod:${pod.name}`, `uplink ${fmtGbit(pod.uplink_gbit)}`)),
      el("div.leaves", {}, pod.leaves.map((leaf) => el("span.leaf", {
        dataset: {link: `leaf:${leaf.name}`, label: `${leaf.name} · uplink ${fmtGbit(leaf.uplink_gbit)}`},
        text: leaf.rail !== null ? `r${leaf.rail}` : leaf.name.replace(pod.name + "-", "")}))),
      el("div.racks", {}, pod.racks.map((rack) => el("div.rack", {},
        el("span.rack-name", {text: rack.name.replace(pod.name + "-", ""), title: rack.name}),
        el("div.hosts", {}, rack.hosts.map((tile) => this.tile(tile)))))));
    if (!this.big) card.style.setProperty("--tile", `${size}px`);
    return card;
  }

  tile(tile) {
    const busy = ROLES.map((r) => (tile[r] ? `${r} ${tile[r]}` : null)).filter(Boolean).join(", ");
    const title = `${tile.name} · ${tile.gpus}× ${tile.gpu_type}` +
      (busy ? ` · ${busy}` : " · idle") + (tile.live ? ` · ${tile.live} GPU(s) with a live worker` : "") +
      (tile.domain ? ` · NVLink domain ${tile.domain}` : tile.nvlink ? " · NVLink inside" : "");
    const node = el(`a.host${tile.live ? ".live" : ""}${tile.domain ? ".dom" : ""}${this.big ? ".big" : ""}`,
                    {href: `#/host/${encodeURIComponent(tile.name)}`, title,
                     dataset: {host: tile.name}});
    if (this.big) {
      // Counts drawn as cells (role by role), not GPU positions: those need the pod zoom.
      const cells = ROLES.flatMap((role) => new Array(tile[role]).fill(role));
      while (cells.length < tile.gpus) cells.push("idle");
      node.append(el("span.hn", {text: tile.name.split("-").pop()}),
                  el("span.waffle", {}, cells.map((role) => el(`i.${role}`))));
    } else {
      node.style.background = tileBackground(tile);
    }
    if (tile.domain) node.style.setProperty("--dom", `hsl(${domainHue(tile.domain)} 70% 60%)`);
    return node;
  }

  // -- pod ---------------------------------------------------------------------------
  pod(d) {
    this.compact = d.hosts.length > COMPACT_POD_OVER;
    const racks = new Map();
    for (const host of d.hosts) {
      if (!racks.has(host.rack)) racks.set(host.rack, []);
      racks.get(host.rack).push(host);
    }
    const grid = el("div.pod-racks", {}, [...racks].map(([rack, hosts]) => el("div.rack-row", {},
      el("h4", {text: rack}),
      el("div.pod-hosts", {}, hosts.map((host) => this.podHost(host))))));
    this.pairLayer = svg("svg", {class: "pair-layer"});
    return el(`div.pod-detail${this.compact ? ".compact" : ""}`, {},
      el("header.detail-head", {},
        el("h3", {text: `pod ${d.name}`}), el("span.muted", {text: `zone ${d.zone}`}),
        this.uplink(`pod:${d.name}`, `uplink ${fmtGbit(d.uplink_gbit)}`),
        el("div.leaves", {}, d.leaves.map((leaf) => el("span.leaf.wide", {
          dataset: {link: `leaf:${leaf.name}`, label: `${leaf.name} · uplink ${fmtGbit(leaf.uplink_gbit)}`},
          text: leaf.rail !== null ? `rail ${leaf.rail}` : leaf.name})))),
      el("div.pod-body", {},
        el("div.pod-canvas", {}, grid, this.pairLayer),
        this.instanceList(d)));
  }

  podHost(host) {
    const label = this.compact ? host.name.split("-").pop() : host.name;
    return el("div.pod-host", {dataset: {host: host.name}, title: this.compact ? host.name : null},
      el("a.pod-host-name", {href: `#/host/${encodeURIComponent(host.name)}`, text: label}),
      host.domain ? el("span.chip.dom-chip", {text: host.domain}) : null,
      el("div.gpus", {}, host.gpus.map((gpu) => this.gpuCell(gpu))));
  }

  gpuCell(gpu) {
    const title = `${gpu.name}` + (gpu.role ? ` · ${gpu.role}` : " · idle") +
      (gpu.instance ? ` · instance ${gpu.instance}` : "") + (gpu.worker ? ` · worker ${gpu.worker}` : "") +
      (gpu.tp ? ` · TP${gpu.tp}` : "");
    return el(`span.gpu${gpu.role ? "." + gpu.role : ""}${gpu.worker ? ".live" : ""}`,
              {title, dataset: {gpu: gpu.name, instance: gpu.instance || "", worker: gpu.worker || ""}},
              this.compact ? null : String(gpu.index));
  }

  instanceList(d) {
    const pairsOf = new Map();
    for (const p of d.pairings) {
      for (const [me, other] of [[p.prefill, p.decode], [p.decode, p.prefill]]) {
        if (!pairsOf.has(me)) pairsOf.set(me, []);
        pairsOf.get(me).push({other, weight: p.weight, tier: p.tier});
      }
    }
    if (!d.instances.length) return el("aside.instances", {}, el("p.muted", {text: "Nothing placed or registered on this pod."}));
    return el("aside.instances", {}, el("h4", {text: `instances and workers (${d.instances.length})`}),
      d.instances.map((inst) => el("div.inst", {
        dataset: {who: inst.id},
        onmouseenter: () => this.focusInstance(inst.id), onmouseleave: () => this.focusInstance(null)},
        el(`span.role.${inst.role}`, {text: inst.role}),
        el("b", {text: inst.id}), el("span.muted", {text: ` ${kind(inst)} · TP${inst.gpus.length} · ${inst.hosts.join(", ")}`}),
        (pairsOf.get(inst.id) || []).length ? el("div.pairs", {}, (pairsOf.get(inst.id) || []).map((p) =>
          el("span.pair", {text: `⇄ ${p.other} ${(p.weight * 100).toFixed(0)}% · ${TIER_NAME[p.tier] || p.tier}` +
            (d.partners[p.other] ? ` (${d.partners[p.other].join(", ")})` : "")}))) : null)));
  }

  focusInstance(id) {
    for (const node of this.root.querySelectorAll(".gpu")) {
      node.classList.toggle("focus", id !== null && (node.dataset.instance === id || node.dataset.worker === id));
    }
    for (const path of this.root.querySelectorAll(".pair-layer path")) {
      const hit = id !== null && (path.dataset.prefill === id || path.dataset.decode === id);
      path.classList.toggle("focus", hit);
    }
  }

  /** Curves from each prefill instance to the decode instances it pairs with. */
  drawPairings() {
    const layer = this.pairLayer, d = this.detail;
    if (!layer || !d || !layer.isConnected) return;
    const box = layer.getBoundingClientRect();
    const cellsOf = new Map();
    for (const cell of this.root.querySelectorAll(".gpu")) {
      for (const who of new Set([cell.dataset.instance, cell.dataset.worker])) {
        if (!who) continue;
        if (!cellsOf.has(who)) cellsOf.set(who, []);
        cellsOf.get(who).push(cell);
      }
    }
    const centre = (id) => {
      const cells = cellsOf.get(id);
      if (!cells) return null;
      const r = cells[0].getBoundingClientRect(), s = cells[cells.length - 1].getBoundingClientRect();
      return [(r.left + s.right) / 2 - box.left, (r.top + s.bottom) / 2 - box.top];
    };
    fill(layer);
    for (const p of d.pairings) {
      const a = centre(p.prefill), b = centre(p.decode);
      if (!a || !b) continue;
      const lift = Math.min(80, 20 + Math.hypot(b[0] - a[0], b[1] - a[1]) / 4);
      const mid = [(a[0] + b[0]) / 2, Math.min(a[1], b[1]) - lift];
      layer.append(svg("path", {d: `M${a[0]},${a[1]} Q${mid[0]},${mid[1]} ${b[0]},${b[1]}`,
        "stroke-width": 1 + 4 * p.weight, "data-prefill": p.prefill, "data-decode": p.decode},
        svg("title", {text: `${p.prefill} → ${p.decode} · ${(p.weight * 100).toFixed(0)}% · ${TIER_NAME[p.tier] || p.tier}`})));
    }
  }

  // -- host --------------------------------------------------------------------------
  host(d) {
    return el("div.host-detail", {},
      el("header.detail-head", {},
        el("h3", {text: d.name}),
        el("span.muted", {text: `${d.gpus.length}× ${d.gpu_type} · ${d.sockets} socket(s) · rack ${d.rack} · pod ${d.pod} · zone ${d.zone}`}),
        d.domain ? el("span.chip.dom-chip", {text: `NVLink domain ${d.domain.name}: ${d.domain.hosts.length} hosts, ${d.domain.nvlinks_per_gpu} links per GPU`}) : null),
      el("div.host-body", {},
        el("div.host-drawing", {}, this.hostDrawing(d)),
        el("div.host-side", {}, this.linkMatrix(d), this.hostInstances(d))));
  }

  hostDrawing(d) {
    const n = d.gpus.length, w = 92, gap = 14, left = 30;
    const width = Math.max(760, left * 2 + n * w + (n - 1) * gap);
    const x = (i) => left + i * (w + gap);
    const nvlink = d.gpu_links.some((row) => row.some((code) => code.startsWith("NV")));
    const drawing = svg("svg", {class: "host-svg", viewBox: `0 0 ${width} 420`, width, height: 420});
    const gpuTop = 70, gpuH = 70;
    if (nvlink) {
      const count = Math.max(...d.gpu_links.flat().filter((c) => c.startsWith("NV")).map((c) => +c.slice(2) || 0));
      drawing.append(svg("rect", {x: left, y: 16, width: width - 2 * left, height: 22, rx: 6, class: "nvswitch"}),
        svg("text", {x: width / 2, y: 31, class: "label center", text: `NVLink${count ? ` · NV${count} per GPU pair` : ""}${d.domain ? ` · domain ${d.domain.name}` : ""}`}));
      d.gpus.forEach((_, i) => drawing.append(svg("line", {x1: x(i) + w / 2, y1: 38, x2: x(i) + w / 2, y2: gpuTop, class: "nvl"})));
    }
    d.gpus.forEach((gpu, i) => drawing.append(this.gpuBox(gpu, x(i), gpuTop, w, gpuH)));
    this.tpBrackets(d, x, w, gpuTop + gpuH + 8).forEach((node) => drawing.append(node));
    this.pcieAndNics(d, drawing, x, w, width);
    return drawing;
  }

  gpuBox(gpu, x, y, w, h) {
    const who = gpu.worker || gpu.instance || "idle";
    return svg("g", {class: `gpu-box ${gpu.role || "idle"}${gpu.worker ? " live" : ""}`, "data-gpu": gpu.name},
      svg("rect", {x, y, width: w, height: h, rx: 8}),
      svg("text", {x: x + 8, y: y + 18, class: "label strong", text: `gpu${gpu.index}`}),
      svg("text", {x: x + 8, y: y + 38, class: "label", text: who.length > 12 ? who.slice(0, 11) + "…" : who}),
      svg("text", {x: x + 8, y: y + 56, class: "label muted", text: gpu.role ? `${gpu.role}${gpu.tp ? ` · TP${gpu.tp}` : ""}` : ""}),
      svg("title", {text: `${gpu.name} · ${gpu.role || "idle"}${gpu.instance ? ` · instance ${gpu.instance}` : ""}${gpu.worker ? ` · worker ${gpu.worker}` : ""}`}));
  }

  tpBrackets(d, x, w, y) {
    const groups = new Map();
    d.gpus.forEach((gpu, i) => {
      const who = gpu.worker || gpu.instance;
      if (!who) return;
      if (!groups.has(who)) groups.set(who, {role: gpu.role, at: []});
      groups.get(who).at.push(i);
    });
    const nodes = [];
    for (const [who, g] of groups) {
      const a = x(Math.min(...g.at)), b = x(Math.max(...g.at)) + w;
      nodes.push(svg("path", {d: `M${a},${y} v6 H${b} v-6`, class: `bracket ${g.role}`}),
                 svg("text", {x: (a + b) / 2, y: y + 20, class: "label center small", text: `${who} · TP${g.at.length}`}));
    }
    return nodes;
  }

  pcieAndNics(d, drawing, x, w, width) {
    const switches = new Map();
    d.gpu_pcie.forEach((sw, i) => {
      const key = sw || "root";
      if (!switches.has(key)) switches.set(key, {gpus: [], nics: []});
      switches.get(key).gpus.push(i);
    });
    d.nics.forEach((nic, j) => {
      const key = nic.pcie_switch || "root";
      if (!switches.has(key)) switches.set(key, {gpus: [], nics: []});
      switches.get(key).nics.push(j);
    });
    const swY = 200, nicY = 268, leafY = 350;
    let spare = 0;
    for (const [name, sw] of switches) {
      const span = sw.gpus.length ? [x(Math.min(...sw.gpus)), x(Math.max(...sw.gpus)) + w]
        : [x(spare), x(spare) + w];
      if (!sw.gpus.length) spare++;
      drawing.append(svg("rect", {x: span[0], y: swY, width: span[1] - span[0], height: 26, rx: 5, class: "pcie"}),
        svg("text", {x: (span[0] + span[1]) / 2, y: swY + 17, class: "label center small", text: name === "root" ? "PCIe (CPU root)" : `PCIe ${name}`}));
      for (const i of sw.gpus) drawing.append(svg("line", {x1: x(i) + w / 2, y1: 140, x2: x(i) + w / 2, y2: swY, class: "pcie-link"}));
      const slot = (span[1] - span[0]) / Math.max(1, sw.nics.length);
      sw.nics.forEach((j, k) => {
        const nic = d.nics[j];
        const cx = span[0] + slot * (k + 0.5);
        drawing.append(this.nicBox(d.name, nic, cx, nicY, leafY, swY + 26));
      });
    }
    drawing.setAttribute("width", String(width));
  }

  nicBox(host, nic, cx, y, leafY, fromY) {
    const id = `nic:${host}/${nic.device}`;
    const w = 84;
    return svg("g", {class: "nic", "data-link": id},
      svg("line", {x1: cx, y1: fromY, x2: cx, y2: y, class: "pcie-link"}),
      svg("rect", {x: cx - w / 2, y, width: w, height: 34, rx: 5}),
      svg("text", {x: cx, y: y + 14, class: "label center small strong", text: nic.device}),
      svg("text", {x: cx, y: y + 28, class: "label center small muted", text: `${nic.gbit} Gb/s`}),
      svg("line", {x1: cx, y1: y + 34, x2: cx, y2: leafY, class: "wire"}),
      svg("rect", {x: cx - w / 2, y: leafY, width: w, height: 24, rx: 12, class: "leaf-box"}),
      svg("text", {x: cx, y: leafY + 16, class: "label center small", text: nic.rail !== null ? `rail ${nic.rail}` : (nic.leaf || "no leaf")}),
      svg("title", {text: `${nic.device} · ${nic.gbit} Gb/s · NUMA ${nic.numa} → ${nic.leaf || "unknown leaf"}`}));
  }

  linkMatrix(d) {
    const n = d.gpus.length;
    const head = el("tr", {}, el("th"), d.gpus.map((g) => el("th", {text: `G${g.index}`})));
    const rows = d.gpu_links.map((row, i) => el("tr", {}, el("th", {text: `G${d.gpus[i].index}`}),
      row.map((code) => el(`td.${code === "X" ? "self" : code.startsWith("NV") ? "nv" : "pci"}`, {text: code}))));
    return el("div.matrix", {}, el("h4", {text: `GPU links (${n}×${n}, as nvidia-smi topo -m)`}),
      el("table", {}, el("thead", {}, head), el("tbody", {}, rows)));
  }

  hostInstances(d) {
    if (!d.instances.length) return el("p.muted", {text: "No instance placed and no worker registered on this host."});
    return el("div.host-insts", {}, el("h4", {text: "on this host"}), d.instances.map((inst) => {
      const pairs = d.pairings.filter((p) => p.prefill === inst.id || p.decode === inst.id);
      return el("div.inst", {},
        el(`span.role.${inst.role}`, {text: inst.role}), el("b", {text: inst.id}),
        el("span.muted", {text: ` ${kind(inst)} · TP${inst.gpus.length} · ${inst.gpus.map((g) => g.split("/")[1]).join(" ")}`}),
        pairs.length ? el("div.pairs", {}, pairs.map((p) => {
          const other = p.prefill === inst.id ? p.decode : p.prefill;
          return el("span.pair", {text: `⇄ ${other} ${(p.weight * 100).toFixed(0)}% · ${TIER_NAME[p.tier] || p.tier}` +
            (d.partners[other] ? ` (${d.partners[other].join(", ")})` : "")});
        })) : null);
    }));
  }

  // -- overlays ----------------------------------------------------------------------
  paintLinks() {
    for (const node of this.root.querySelectorAll("[data-link]")) {
      const load = this.links.get(node.dataset.link);
      node.dataset.load = String(level(load));
      const label = node.dataset.label || node.dataset.link;
      if (node.tagName === "g") continue;
      node.title = loadTitle(label, load, "");
    }
    for (const tile of this.root.querySelectorAll("a.host")) {
      tile.classList.toggle("moving", (this.hostBytes.get(tile.dataset.host) || 0) > 0);
    }
  }

  /** Mark the GPUs (and their hosts) of one decision: prefill and decode sides. */
  mark(prefillGpus, decodeGpus) {
    this.marked = {prefill: prefillGpus || [], decode: decodeGpus || []};
    this.paintMarks();
  }

  paintMarks() {
    for (const node of this.root.querySelectorAll(".mark-prefill, .mark-decode")) {
      node.classList.remove("mark-prefill", "mark-decode");
    }
    for (const side of ["prefill", "decode"]) {
      for (const gpu of this.marked[side]) {
        const host = hostOf(gpu);
        for (const node of this.root.querySelectorAll(`[data-host="${CSS.escape(host)}"], [data-gpu="${CSS.escape(gpu)}"]`)) {
          if (node.classList.contains("pod-host")) continue;
          node.classList.add(`mark-${side}`);
        }
      }
    }
  }
}
