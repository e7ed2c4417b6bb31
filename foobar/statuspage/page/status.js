// The status page: every two seconds, /api/site (what foobar's collector read from each
// role's admin listener), drawn as a topology diagram and two small charts. Plain DOM and
// SVG; text goes in with textContent, never as markup.
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const COLUMNS = [
  { label: "balancer", roles: ["lb"] },
  { label: "web", roles: ["web"] },
  { label: "app", roles: ["app"] },
  { label: "database", roles: ["primary", "replica"] },
];
const NODE_W = 210, NODE_H = 84, GAP_X = 70, GAP_Y = 22, TOP = 34, LEFT = 16;

function el(name, attributes = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function number(value, digits = 1) {
  return value === null || value === undefined ? "–" : value.toFixed(digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? `${(seconds * 1000).toFixed(0)} ms` : `${seconds.toFixed(2)} s`;
}

function clip(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

// the lines under a node's name: what a person checks first for that role
function details(node) {
  if (node.role === "primary" || node.role === "replica") {
    const lag = node.role === "replica" ? `lag ${node.lag === null ? "?" : node.lag + " s"}` : "takes writes";
    const semi = node.semi_sync === null ? "semi-sync ?" : `semi-sync ${node.semi_sync ? "on" : "OFF"}`;
    const epoch = node.epoch === null || node.epoch === undefined ? "epoch –" : `epoch ${node.epoch}`;
    return [`${node.role} · ${node.address}`, `${lag} · ${semi}`, epoch];
  }
  const lines = [`${node.role} · ${node.address}`, `${number(node.rate)} req/s · ${number(node.errors, 2)} 5xx/s`];
  if (node.p99 !== null && node.p99 !== undefined) lines.push(`p99 ${duration(node.p99)}`);
  else if (node.health !== "up") lines.push(clip(node.reason, 30));
  return lines;
}

function drawTopology(svg, site) {
  const byColumn = COLUMNS.map((column) => site.nodes.filter((n) => column.roles.includes(n.role)));
  const rows = Math.max(1, ...byColumn.map((nodes) => nodes.length));
  const height = TOP + rows * (NODE_H + GAP_Y) + 10;
  const width = LEFT * 2 + COLUMNS.length * NODE_W + (COLUMNS.length - 1) * GAP_X;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();

  const places = new Map();
  byColumn.forEach((nodes, c) => {
    const x = LEFT + c * (NODE_W + GAP_X);
    svg.append(el("text", { x, y: 20, class: "column-label" }, COLUMNS[c].label));
    const offset = ((rows - nodes.length) * (NODE_H + GAP_Y)) / 2;  // centre short columns
    nodes.forEach((node, r) => places.set(node.id, { x, y: TOP + offset + r * (NODE_H + GAP_Y), node }));
  });

  const health = new Map(site.nodes.map((n) => [n.id, n.health]));
  for (const [from, to, kind] of site.edges) {
    const a = places.get(from), b = places.get(to);
    if (!a || !b) continue;
    const broken = health.get(from) === "down" || health.get(to) === "down";
    let d;
    if (a.x === b.x) {  // within a column: the primary's replication down to a replica
      const x = a.x + NODE_W / 2, top = Math.min(a.y, b.y), bottom = Math.max(a.y, b.y);
      d = `M${x},${top + NODE_H} L${x},${bottom}`;
    } else {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      d = `M${x1},${y1} C${x1 + GAP_X / 2},${y1} ${x2 - GAP_X / 2},${y2} ${x2},${y2}`;
    }
    svg.append(el("path", { d, class: `edge ${kind}${broken ? " broken" : ""}` }));
  }

  for (const { x, y, node } of places.values()) {
    const group = el("g", { class: "node", "data-node": node.id, "data-health": node.health });
    group.append(el("title", {}, `${node.name}: ${node.health} (${node.reason})`));
    group.append(el("rect", { x, y, width: NODE_W, height: NODE_H }));
    group.append(el("text", { x: x + 12, y: y + 20, class: "title" }, node.name));
    group.append(el("text", { x: x + NODE_W - 12, y: y + 20, "text-anchor": "end", class: "health" }, node.health));
    details(node).forEach((line, i) =>
      group.append(el("text", { x: x + 12, y: y + 40 + i * 16, class: i === 0 ? "dim" : "" }, line)));
    svg.append(group);
  }
}

function drawChart(svg, points, format) {
  const W = 460, H = 140, PAD_L = 54, PAD_B = 20, PAD_T = 10;
  svg.replaceChildren();
  const values = points.filter((p) => p.value !== null);
  const max = Math.max(1e-9, ...values.map((p) => p.value)) * 1.15;
  const end = points.length ? points[points.length - 1].time : 0;
  const span = 600;  // seconds: the collector keeps ten minutes
  const px = (t) => PAD_L + ((t - (end - span)) / span) * (W - PAD_L - 4);
  const py = (v) => H - PAD_B - (v / max) * (H - PAD_B - PAD_T);
  for (const fraction of [0, 0.5, 1]) {
    const y = py(max * fraction / 1.15);
    svg.append(el("line", { x1: PAD_L, x2: W - 4, y1: y, y2: y, class: "grid" }));
    svg.append(el("text", { x: PAD_L - 6, y: y + 4, "text-anchor": "end" }, format(max * fraction / 1.15)));
  }
  svg.append(el("text", { x: PAD_L, y: H - 4 }, "10 min ago"));
  svg.append(el("text", { x: W - 4, y: H - 4, "text-anchor": "end" }, "now"));
  if (values.length < 2) return;
  const line = values.map((p) => `${px(p.time).toFixed(1)},${py(p.value).toFixed(1)}`).join(" ");
  const first = px(values[0].time).toFixed(1), last = px(values[values.length - 1].time).toFixed(1);
  svg.append(el("polygon", { points: `${first},${H - PAD_B} ${line} ${last},${H - PAD_B}`, class: "area" }));
  svg.append(el("polyline", { points: line, class: "series" }));
}

function drawProblems(list, site) {
  const problems = site.nodes.filter((n) => n.health !== "up").map((n) => `${n.name} (${n.role}): ${n.health}, ${n.reason}`);
  if (site.database.supervisor && site.database.supervisor !== "up") {
    problems.push(`foobar.db at ${site.database.address}: ${site.database.supervisor}, ${site.database.reason}`);
  }
  list.replaceChildren(...(problems.length ? problems : ["none"]).map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  return problems.length;
}

async function refresh() {
  const summary = document.getElementById("summary");
  try {
    const response = await fetch("/api/site", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const site = await response.json();
    drawTopology(document.getElementById("topology"), site);
    const count = drawProblems(document.getElementById("problems"), site);
    summary.dataset.state = count ? "problem" : "ok";
    summary.textContent = count ? `${count} problem${count > 1 ? "s" : ""}` : "all up";
    const last = site.history[site.history.length - 1] || {};
    drawChart(document.getElementById("chart-rate"), site.history.map((p) => ({ time: p.time, value: p.rate })), (v) => v.toFixed(1));
    drawChart(document.getElementById("chart-p99"), site.history.map((p) => ({ time: p.time, value: p.p99 })), duration);
    document.getElementById("rate-now").textContent = `${number(last.rate)} /s`;
    document.getElementById("p99-now").textContent = duration(last.p99);
    document.getElementById("updated").textContent = `updated ${new Date(site.generated * 1000).toLocaleTimeString()}`;
  } catch (error) {
    summary.dataset.state = "stale";
    summary.textContent = `no data: ${error.message}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
