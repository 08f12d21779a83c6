// The side panels: recent routing decisions (and why), traffic (latency histograms by
// tier and domain pair, bytes in flight per shared link, drift alerts), the placement.

import {bucketQuantile, el, fill, fmtAgo, fmtBytes, fmtClock, fmtSeconds, svg,
        TIER_NAME, TIERS} from "./util.js";

const KEPT = 100;
const TERMS = [["queue_s", "queue"], ["prefill_compute_s", "prefill"],
               ["transfer_s", "KV transfer"], ["admission_s", "admission"]];

function tierBadge(tier) {
  return el(`span.tier.t-${tier}`, {text: TIER_NAME[tier] || tier});
}

// -- decisions ---------------------------------------------------------------------------

export class DecisionsPanel {
  constructor(list, detail, count, fabric) {
    this.list = list;
    this.detail = detail;
    this.count = count;
    this.fabric = fabric;
    this.items = [];
    this.pinned = null;
    this.skipped = 0;
    this.render();
  }

  /** Forget every decision (the stream now comes from another process). */
  clear() {
    this.items = [];
    this.pinned = null;
    this.skipped = 0;
    this.render();
  }

  add(batch) {
    const newest = this.items.length ? this.items[0].seq : 0;
    const fresh = batch.items.filter((d) => d.seq > newest).reverse();
    if (!fresh.length && !batch.skipped) return;
    this.skipped += batch.skipped;
    this.items = fresh.concat(this.items).slice(0, KEPT);
    this.render();
  }

  render() {
    fill(this.count, `${this.items.length ? `#${this.items[0].seq}` : "none yet"}` +
      (this.skipped ? ` · ${this.skipped} not shown (more than the page takes per tick)` : ""));
    fill(this.list, this.items.length ? this.items.map((d) => this.row(d))
      : el("li.empty", {text: "No request routed yet: POST /v1/route."}));
    const shown = this.items.find((d) => d.seq === this.pinned) || this.items[0];
    fill(this.detail, shown ? this.explain(shown) : null);
    if (shown) this.mark(shown);
  }

  mark(d) {
    if (d.status !== "scheduled") this.fabric.mark([], []);
    else this.fabric.mark(d.prefill.gpus, d.decode.gpus);
  }

  row(d) {
    const pick = () => { this.pinned = this.pinned === d.seq ? null : d.seq; this.render(); };
    const attrs = {dataset: {seq: d.seq, request: d.request_id}, onclick: pick,
                   onmouseenter: () => this.mark(d),
                   onmouseleave: () => this.mark(this.items.find((x) => x.seq === this.pinned) || this.items[0])};
    const cls = `li.decision${d.seq === this.pinned ? ".pinned" : ""}${d.status !== "scheduled" ? ".refused" : ""}`;
    if (d.status !== "scheduled") {
      return el(cls, attrs, el("span.when", {text: fmtClock(d.at)}), el("b.req", {text: d.request_id}),
        el("span.tier.t-refused", {text: "unschedulable"}), el("div.sub", {text: d.reasons.join("; ")}));
    }
    return el(cls, attrs,
      el("span.when", {text: fmtClock(d.at)}), el("b.req", {text: d.request_id}), tierBadge(d.transfer.tier),
      el("div.sub", {},
        el("span.side.prefill", {text: d.prefill.worker}), el("span.arrow", {text: d.mode === "local-prefill" ? " ⟲ " : " → "}),
        el("span.side.decode", {text: d.decode.worker}),
        el("span.muted", {text: ` · ${d.transfer.blocks} block${d.transfer.blocks === 1 ? "" : "s"} · ${fmtBytes(d.transfer.bytes)} · TTFT ≈ ${fmtSeconds(d.estimate.total_s)}`})));
  }

  explain(d) {
    if (d.status !== "scheduled") {
      return el("div.explain", {}, el("h4", {text: `${d.request_id}: unschedulable`}),
        el("ul.reasons", {}, d.reasons.map((r) => el("li", {text: r}))));
    }
    const e = d.estimate;
    const total = TERMS.reduce((sum, [key]) => sum + (e[key] || 0), 0) || 1;
    const bar = el("div.terms", {}, TERMS.map(([key, name]) => {
      const part = el(`span.term.${key}`, {title: `${name}: ${fmtSeconds(e[key])}`});
      part.style.flexGrow = String(Math.max(e[key] / total, 0.002));
      return part;
    }));
    const legend = el("div.term-legend", {}, TERMS.map(([key, name]) =>
      el("span", {}, el(`i.swatch.${key}`), `${name} ${fmtSeconds(e[key])}`)));
    return el("div.explain", {},
      el("h4", {}, `${d.request_id} `, el("span.muted", {text: `· ${d.policy} · ${d.mode} · ${d.considered} pairs considered · decided in ${d.decision_us.toFixed(0)} µs`})),
      el("p.why", {}, "Chose ", el("b.prefill-text", {text: d.prefill.worker}), " → ",
        el("b.decode-text", {text: d.decode.worker}),
        ` (score ${d.score.toFixed(3)}): estimated TTFT ${fmtSeconds(e.total_s)}, of which`),
      bar, legend,
      el("dl.facts", {},
        el("dt", {text: "prefix cached"}), el("dd", {text: `prefill ${d.prefill.cached_blocks} blocks · decode ${d.decode.cached_blocks} blocks`}),
        el("dt", {text: "moves"}), el("dd", {}, `${d.transfer.blocks} block(s), ${fmtBytes(d.transfer.bytes)} over `, tierBadge(d.transfer.tier),
          d.transfer.bottleneck_gb_per_s ? ` · bottleneck ${d.transfer.bottleneck_gb_per_s.toFixed(1)} GB/s` : ""),
        el("dt", {text: "shared links"}), el("dd", {}, d.transfer.links.length ? d.transfer.links.map((l) => el("code.link", {text: l}))
          : el("span.muted", {text: "none (stays inside the host or NVLink domain)"})),
        d.notes.length ? [el("dt", {text: "notes"}), el("dd", {text: d.notes.join("; ")})] : null),
      d.runners_up.length ? el("table.runners", {},
        el("thead", {}, el("tr", {}, ["runner-up pair", "score", "Δ score", "TTFT est."].map((h) => el("th", {text: h})))),
        el("tbody", {}, d.runners_up.map((r) => el("tr", {},
          el("td", {text: `${r.prefill} → ${r.decode}${r.local_prefill ? " (local)" : ""}`}),
          el("td", {text: r.score.toFixed(3)}), el("td", {text: (r.score - d.score).toFixed(3)}),
          el("td", {text: fmtSeconds(r.ttft_s)}))))) : el("p.muted", {text: "No runner-up: only one pair was possible."}));
  }
}

// -- traffic -----------------------------------------------------------------------------

export class TrafficPanel {
  constructor(parts, fabric, toast) {
    this.parts = parts;   // {histograms, pairs, tiers, links, alerts}
    this.fabric = fabric;
    this.toast = toast;
    this.frame = null;
    this.pair = "";
    this.firing = new Set();
    this.first = true;
    parts.pairs.addEventListener("change", () => { this.pair = parts.pairs.value; this.renderLatency(); });
  }

  set(frame) {
    this.frame = frame;
    this.renderPairs();
    this.renderLatency();
    this.renderLinks();
    this.renderAlerts();
    this.fabric.setLinks(frame.links.items);
  }

  renderPairs() {
    const keys = [...new Set(this.frame.latency.series.map((s) => `${s.src} → ${s.dst}`))].sort();
    const select = this.parts.pairs;
    const have = [...select.options].map((o) => o.value).join("|");
    if (have === ["", ...keys].join("|")) return;
    fill(select, el("option", {value: "", text: `all domain pairs (${keys.length})`}),
         keys.map((k) => el("option", {value: k, text: k})));
    select.value = keys.includes(this.pair) ? this.pair : "";
    select.hidden = keys.length === 0;
    this.pair = select.value;
  }

  /** Per tier: the histogram summed over the chosen domain pairs. */
  byTier() {
    const {bounds, series} = this.frame.latency;
    const tiers = new Map();
    for (const s of series) {
      if (this.pair && `${s.src} → ${s.dst}` !== this.pair) continue;
      const t = tiers.get(s.tier) || {counts: new Array(bounds.length + 1).fill(0), count: 0, sum: 0, pairs: 0};
      s.counts.forEach((n, i) => { t.counts[i] += n; });
      t.count += s.count;
      t.sum += s.sum;
      t.pairs += 1;
      tiers.set(s.tier, t);
    }
    return tiers;
  }

  renderLatency() {
    const bounds = this.frame.latency.bounds;
    const tiers = this.byTier();
    const outcomes = new Map();
    for (const t of this.frame.transfers) {
      const o = outcomes.get(t.tier) || {ok: 0, failed: 0};
      o[t.outcome] = t.count;
      outcomes.set(t.tier, o);
    }
    const shown = TIERS.filter(([tier]) => tiers.has(tier) || outcomes.has(tier));
    fill(this.parts.histograms, shown.length ? shown.map(([tier, name]) => this.histogram(tier, name, bounds, tiers.get(tier)))
      : el("p.empty", {text: "No transfer measured yet: sidecars report each one, and it lands here by tier."}));
    if (!shown.length) { fill(this.parts.tiers); return; }
    fill(this.parts.tiers, el("table.tier-table", {},
      el("thead", {}, el("tr", {}, ["tier", "transfers", "failed", "bytes", "mean", "p50 ≤", "p99 ≤"].map((h) => el("th", {text: h})))),
      el("tbody", {}, shown.map(([tier]) => {
        const t = tiers.get(tier), o = outcomes.get(tier) || {ok: 0, failed: 0};
        return el("tr", {dataset: {tier}},
          el("td", {}, tierBadge(tier)), el("td", {text: String(o.ok)}), el("td", {text: String(o.failed)}),
          el("td", {text: fmtBytes(this.frame.bytes[tier] || 0)}),
          el("td", {text: t && t.count ? fmtSeconds(t.sum / t.count) : "–"}),
          el("td", {text: t ? fmtSeconds(bucketQuantile(bounds, t.counts, 0.5)) : "–"}),
          el("td", {text: t ? fmtSeconds(bucketQuantile(bounds, t.counts, 0.99)) : "–"}));
      }))));
  }

  histogram(tier, name, bounds, t) {
    const counts = t ? t.counts : new Array(bounds.length + 1).fill(0);
    const used = counts.map((n, i) => (n ? i : -1)).filter((i) => i >= 0);
    let lo = used.length ? Math.max(0, used[0] - 2) : 0;
    let hi = used.length ? Math.min(counts.length - 1, used[used.length - 1] + 2) : 8;
    while (hi - lo < 9) { if (lo > 0) lo--; if (hi - lo < 9 && hi < counts.length - 1) hi++; else if (lo === 0) break; }
    const W = 250, H = 96, pad = 18, bw = (W - 8) / (hi - lo + 1);
    const peak = Math.max(1, ...counts.slice(lo, hi + 1));
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H + pad}`, class: "hist"});
    for (let i = lo; i <= hi; i++) {
      const h = counts[i] ? Math.max(2, (counts[i] / peak) * (H - 14)) : 0;
      const upper = i < bounds.length ? fmtSeconds(bounds[i]) : "∞";
      const lower = i === 0 ? "0" : fmtSeconds(bounds[i - 1]);
      chart.append(svg("rect", {x: 4 + (i - lo) * bw + 1, y: H - h, width: bw - 2, height: h, class: `bar t-${tier}`},
        svg("title", {text: `${lower} – ${upper}: ${counts[i]} transfer(s)`})));
    }
    const edge = (i) => (i === 0 ? "0" : i - 1 < bounds.length ? fmtSeconds(bounds[i - 1]) : "∞");
    const mid = Math.round((lo + hi + 1) / 2);
    chart.append(svg("line", {x1: 4, y1: H + 0.5, x2: W - 4, y2: H + 0.5, class: "axis"}),
      svg("text", {x: 4, y: H + 13, class: "tick", text: edge(lo)}),
      svg("text", {x: 4 + (mid - lo) * bw, y: H + 13, class: "tick middle", text: edge(mid)}),
      svg("line", {x1: 4 + (mid - lo) * bw, y1: H + 0.5, x2: 4 + (mid - lo) * bw, y2: H + 4, class: "axis"}),
      svg("text", {x: W - 4, y: H + 13, class: "tick end", text: edge(hi + 1)}),
      svg("text", {x: W - 4, y: 9, class: "tick end", text: `peak ${peak}`}));
    const count = t ? t.count : 0;
    return el("figure.histogram", {dataset: {tier, count: String(count)}},
      el("figcaption", {}, tierBadge(tier), el("span.muted", {text: ` ${count} transfer${count === 1 ? "" : "s"}` +
        (t && t.count ? ` · p50 ≤ ${fmtSeconds(bucketQuantile(bounds, counts, 0.5))}` : "") +
        (t && t.pairs > 1 ? ` · ${t.pairs} domain pairs` : "")})),
      chart);
  }

  renderLinks() {
    const {items, total} = this.frame.links;
    const peak = Math.max(1, ...items.map((i) => i.bytes));
    fill(this.parts.links, items.length ? [
      items.slice(0, 12).map((item) => {
        const bar = el("i.fillbar");
        bar.style.width = `${Math.max(2, (item.bytes / peak) * 100)}%`;
        return el("div.linkrow", {title: item.link},
          el("span.linkname", {text: linkName(item.link)}),
          el("span.linkbar", {}, bar),
          el("span.linkval", {text: `${fmtBytes(item.bytes)} · ${item.transfers}×` +
            (item.capacity_gb_per_s ? ` · ${item.capacity_gb_per_s.toFixed(0)} GB/s` : "")}));
      }),
      total > 12 ? el("p.muted", {text: `… and ${total - 12} more links carrying KV now`}) : null,
    ] : el("p.empty", {text: "No KV transfer in flight on a shared link."}));
  }

  renderAlerts() {
    const alerts = this.frame.alerts;
    const firing = new Set(alerts.filter((a) => a.state === "firing").map((a) => a.id));
    for (const a of alerts) {
      if (a.state === "firing" && !this.firing.has(a.id) && !this.first) {
        this.toast(`Drift alert on ${TIER_NAME[a.tier] || a.tier}: p99 ${a.recent_p99_ms.toFixed(1)} ms vs ${a.baseline_p99_ms.toFixed(1)} ms (×${a.factor.toFixed(1)})`);
      }
    }
    this.firing = firing;
    this.first = false;
    fill(this.parts.alerts, alerts.length ? alerts.map((a) => el(`div.alert.${a.state}`, {dataset: {alert: a.id}},
      el("b", {text: a.state === "firing" ? "FIRING" : "resolved"}), " ", tierBadge(a.tier),
      el("span", {text: ` p99 ${a.recent_p99_ms.toFixed(2)} ms vs baseline ${a.baseline_p99_ms.toFixed(2)} ms (×${a.factor.toFixed(2)}, KS p=${a.p_value.toExponential(1)})`}),
      el("div.sub.muted", {text: `since ${fmtAgo(a.since)}` + (a.domains.length ? ` · domains ${a.domains.join(", ")}` : "") +
        (a.resolved_at ? ` · resolved ${fmtAgo(a.resolved_at)}` : "")})))
      : el("p.empty", {text: "No drift alert: every tier's recent p99 is within bounds of its baseline."}));
  }
}

function linkName(link) {
  const parts = link.split(":");
  const dir = parts.pop();
  const arrow = {up: "↑", down: "↓", tx: "tx", rx: "rx"}[dir] || dir;
  return `${parts[0]} ${parts.slice(1).join(":")} ${arrow}`;
}

// -- placement ---------------------------------------------------------------------------

export function renderPlacement(root, p) {
  if (!p) {
    fill(root, el("p.empty", {text: "No placement in force: POST /v1/placement/solve (or PUT one)."}));
    return;
  }
  const change = p.change || {};
  const shares = p.traffic;
  const levels = [["nvlink_domain", "NVLink domain"], ["rack", "rack"], ["pod", "pod"], ["zone", "zone"],
                  ["cross_zone", "crosses zones"]];
  const shareBars = el("div.shares", {}, levels.map(([k, name]) => {
    const bar = el(`i.s-${k}`);
    bar.style.width = `${Math.max(0, Math.min(1, shares[k])) * 100}%`;
    return el("div.share", {}, el("span.share-name", {text: name}), el("span.share-bar", {}, bar),
              el("span.share-val", {text: `${(shares[k] * 100).toFixed(0)}%`}));
  }));
  fill(root,
    el("div.kv", {},
      el("span", {}, el("b", {text: p.origin}), ` ${fmtAgo(p.applied_at)} · ${p.method} (${p.status}, ${fmtSeconds(p.solve_time_s)})`),
      el("span", {text: `${p.model} · ${p.prefill} prefill × TP${p.tp_prefill} · ${p.decode} decode × TP${p.tp_decode} · ${p.pairings} pairings · ${p.rate_rps} req/s`}),
      el("span", {text: `transfer cost ${p.objective.transfer_cost_ms.toFixed(2)} ms/request · ${(p.gap).toFixed(2)}× the lower bound · churn ${p.objective.churn} · rack imbalance ${p.objective.imbalance}`})),
    el("div.share-label", {text: "share of the expected KV bytes that stays within each level"}), shareBars,
    el("div.change", {},
      el("h4", {text: change.compared ? `last change: ${change.placed_count} placed, ${change.removed_count} removed, ${change.kept} kept`
        : `first placement seen: ${change.placed_count || 0} instances${p.moved !== null && p.moved !== undefined ? `, solver reports ${p.moved} moved` : ""}`}),
      p.job && p.job.reason ? el("p.reason", {text: `${p.job.kind} ${p.job.id}: ${p.job.reason}`}) : null,
      moves(change)),
    p.busiest_links.length ? el("div.busiest", {}, el("h4", {text: "busiest uplinks (expected)"}), p.busiest_links.slice(0, 5).map((l) =>
      el("div", {text: `${l.link}: ${l.gb_per_s.toFixed(1)} of ${l.capacity_gb_per_s.toFixed(0)} GB/s (${(100 * l.gb_per_s / l.capacity_gb_per_s).toFixed(0)}%)`}))) : null);
}

const MOVES_LISTED = 8;

function moves(change) {
  const rows = [...(change.placed || []).map((i) => ["+", i]), ...(change.removed || []).map((i) => ["−", i])];
  const total = (change.placed_count || 0) + (change.removed_count || 0);
  return [rows.slice(0, MOVES_LISTED).map(([sign, i]) =>
    el(`div.moved.${sign === "+" ? "add" : "del"}`, {title: i.gpus.join(" ")},
       `${sign} ${i.role} `, el("b", {text: i.id}), ` · TP${i.gpus.length} @ ${i.host}`)),
  total > MOVES_LISTED ? el("div.muted", {text: `… and ${total - MOVES_LISTED} more`}) : null];
}
