// The operator's page: reads the fabric at the zoom shown, then follows the service's
// event stream (what changed, once per tick) without reloading.

import {FabricView} from "./fabric.js";
import {DecisionsPanel, renderPlacement, TrafficPanel} from "./panels.js";
import {Api, el, fill, fmtClock, openStream, Unauthorized} from "./util.js";

const $ = (id) => document.getElementById(id);
const api = new Api();
const fabric = new FabricView($("fabric"), api, $("crumbs"));
const decisions = new DecisionsPanel($("decisions"), $("decision-detail"), $("decision-count"), fabric);
const traffic = new TrafficPanel({histograms: $("histograms"), pairs: $("pair-select"), tiers: $("tier-table"),
                                  links: $("links"), alerts: $("alerts")}, fabric, toast);
let version = null;
let boot = null;
let closeStream = null;

function route() {
  const [, level, ...rest] = (location.hash || "#/").slice(1).split("/");
  const name = decodeURIComponent(rest.join("/"));
  return level === "pod" || level === "host" ? {level, name} : {level: "cluster"};
}

async function loadOverview() {
  const overview = await api.get("/v1/ui/overview");
  version = overview ? overview.version : null;
  fabric.setOverview(overview);
  renderCounts(overview);
}

function renderCounts(ov) {
  if (!ov) { fill($("counts"), el("span.muted", {text: "no fabric"})); return; }
  const c = ov.summary;
  fill($("cluster-name"), c.name);
  fill($("counts"), [["zones", c.zones], ["pods", c.pods], ["leaves", c.leaves], ["hosts", c.hosts],
    ["GPUs", c.gpus], ["NICs", c.nics], ["workers", ov.workers], ["placed", ov.instances]].map(([k, v]) =>
    el("span.count", {}, el("b", {text: v.toLocaleString()}), ` ${k}`)),
    c.warnings.length || c.conflicts.length ? el("span.warnings", {
      title: [...c.conflicts.map((x) => `CONFLICT: ${x}`), ...c.warnings].join("\n"),
      text: `⚠ ${c.conflicts.length + c.warnings.length} fabric warning(s)`}) : null);
  fill($("tiers"), el("span.tiers-title", {text: "link figures of the cost model"}), ov.tiers.map((t) => el("span.edge", {title: `${t.kind}: ${t.latency_us} µs, ${t.bandwidth_gb_per_s} GB/s per edge`},
    el("b", {text: t.kind.replace("_", " ")}), ` ${t.latency_us} µs · ${t.bandwidth_gb_per_s} GB/s`)));
}

function showState(state) {
  const node = $("live");
  node.dataset.state = state;
  node.textContent = {live: "live", reconnecting: "reconnecting…", unauthorized: "token needed",
                      connecting: "connecting…"}[state] || state;
}

function setLive(state) {
  showState(state);
  if (state === "unauthorized") askToken("The service refused the token.");
}

function onEvent(name, data) {
  $("updated").textContent = `updated ${fmtClock(Date.now() / 1000)}`;
  if (name === "hello") {
    setLive("live");
    if (boot !== null && data.boot !== boot) decisions.clear();  // another process now
    boot = data.boot;
  }
  else if (name === "decisions") decisions.add(data);
  else if (name === "traffic") traffic.set(data);
  else if (name === "placement") renderPlacement($("placement"), data);
  else if (name === "version" && data !== version) {
    version = data;
    if (data === null) { fabric.setOverview(null); renderCounts(null); return; }
    loadOverview().then(() => fabric.refresh()).catch(report);
  }
}

function report(err) {
  if (err instanceof Unauthorized) askToken(api.token ? `The service refused the token: ${err.message}.` : "");
  else { console.error(err); toast(String(err.message || err)); }
}

function toast(text) {
  const node = el("div.toast", {text});
  $("toasts").append(node);
  setTimeout(() => node.remove(), 8000);
}

function askToken(reason) {
  if (closeStream) { closeStream(); closeStream = null; }
  showState("unauthorized");
  $("login-reason").textContent = reason || "";
  $("login").hidden = false;
  $("token").focus();
}

async function start() {
  $("login").hidden = true;
  setLive("connecting");
  try {
    await loadOverview();
    await fabric.show(route());
  } catch (err) {
    report(err);
    if (err instanceof Unauthorized) return;
  }
  if (closeStream) closeStream();
  closeStream = openStream(api, "/v1/ui/events", onEvent, setLive);
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  api.setToken($("token").value.trim());
  $("token").value = "";
  start();
});
$("sign-out").addEventListener("click", () => { api.setToken(""); askToken("Signed out: the token is gone from this tab."); });
window.addEventListener("hashchange", () => fabric.show(route()).catch(report));
window.addEventListener("resize", () => { if (route().level === "pod") fabric.drawPairings(); });
start();
