// pinfold's dashboard: plain JavaScript, no build step, no CDN. Every value
// from the API reaches the page through textContent (the `h` helper), never
// as HTML, and styles are set through the DOM (the controller's Content-Security-Policy
// allows no inline script or style). The admin token stays in sessionStorage, for this tab only.
"use strict";

const main = document.getElementById("main");
const REFRESH_MS = 2000;
let timer = null;

function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    // styles through the DOM: the Content-Security-Policy refuses inline style attributes
    else if (key === "style") Object.assign(element.style, value);
    else if (value !== false && value !== null && value !== undefined) element.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function token() { return sessionStorage.getItem("pinfold-token") || ""; }

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) { showLogin("Your token was refused: log in again."); throw new Error("unauthorized"); }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error((data && (data.error + ": " + data.detail)) || response.statusText);
  return data;
}

function levelClass(level) {
  if (level === null || level === undefined) return "level-free";
  const known = { "1.0": "level-1", "2.0": "level-2", "3.0": "level-3" };
  return known[String(level)] || "level-x";
}

function levelName(ratio) { return Number(ratio) === 1 ? "1:1" : Number(ratio) + ":1"; }

function legend(levels) {
  return h("p", { class: "legend" },
    [...levels].sort().map((level) => h("span", {}, h("i", { class: levelClass(level) }), levelName(level) + " vNode")),
    h("span", {}, h("i", { class: "level-free" }), "free"),
    h("span", { class: "muted" }, "darker band: CPU use"));
}

// -- overview ---------------------------------------------------------------------------

// The migrations in flight (their time so far) and the last ones (their time, how they ended).
function migrationsTable(listed) {
  if (!listed.length) return "";
  const shown = listed.filter((m) => m.outcome === null).concat(listed.filter((m) => m.outcome !== null).slice(0, 10));
  return h("section", {},
    h("h2", {}, "Migrations"),
    h("table", { "data-testid": "migrations" },
      h("tr", {}, ["VM", "from", "to", "seconds", "state", "detail"].map((t) => h("th", {}, t))),
      shown.map((m) => h("tr", { "data-migration": m.id, "data-outcome": m.outcome || "in flight" },
        h("td", {}, m.vm), h("td", {}, m.source), h("td", {}, m.target),
        h("td", {}, m.elapsed_s.toFixed(1)),
        h("td", {}, h("span", { class: "badge " + (m.outcome || "in-flight") }, m.outcome || "in flight")),
        h("td", { class: "muted" }, m.detail)))));
}

async function overview() {
  const [hosts, vms, moves] = await Promise.all(
    [api("GET", "/api/v1/hosts"), api("GET", "/api/v1/vms"), api("GET", "/api/v1/migrations")]);
  const levels = [...new Set(vms.map((vm) => vm.ratio.toFixed(1)))].sort();
  const totals = { cpus: 0, allocated: 0, used: 0, memTotal: 0, memVMs: 0, memUsed: 0, perLevel: {} };
  const rows = hosts.map((host) => {
    const subset = ((host.status || {}).cpu || {}).subset || {};
    const allocated = Object.values(subset).reduce((sum, level) => sum + level.pcap, 0);
    const usage = host.usage || {};
    const used = Object.values(usage.cpu || {}).reduce((sum, share) => sum + share, 0);
    const memTotal = (usage.memory_mib || {}).total || 0;
    const memUsed = memTotal ? memTotal - ((usage.memory_mib || {}).available || 0) : 0;
    const mine = vms.filter((vm) => vm.host === host.id);
    const memVMs = mine.reduce((sum, vm) => sum + vm.memory_mib, 0);
    totals.cpus += host.cpus; totals.allocated += allocated; totals.used += used;
    totals.memTotal += memTotal; totals.memVMs += memVMs; totals.memUsed += memUsed;
    const counts = levels.map((level) => {
      const n = mine.filter((vm) => vm.ratio.toFixed(1) === level).length;
      totals.perLevel[level] = (totals.perLevel[level] || 0) + n;
      return h("td", {}, n);
    });
    return h("tr", { "data-testid": "host-row" },
      h("td", {}, h("a", { href: "#/hosts/" + encodeURIComponent(host.id) }, host.id)),
      // a cloud agent's host: its CPUs are the cloud's (per level, from Placement); the controller places nothing there
      h("td", {}, h("span", { class: "badge " + host.state }, host.state), host.cloud ? " " + host.cloud + " cloud" : ""),
      h("td", {}, host.cpus), h("td", {}, allocated), h("td", {}, used.toFixed(2)),
      h("td", {}, memTotal ? Math.round(memVMs) + " / " + Math.round(memTotal) : Math.round(memVMs)),
      h("td", {}, Math.round(memUsed)),
      counts);
  });
  main.replaceChildren(
    h("h2", {}, "Cluster"),
    h("table", { "data-testid": "hosts" },
      h("tr", {}, ["host", "state", "CPUs", "in vNodes", "cores used", "MiB of VMs / host", "MiB used"].map((t) => h("th", {}, t)),
        levels.map((level) => h("th", {}, "VMs " + levelName(level)))),
      rows,
      h("tr", { class: "total" }, h("td", {}, "total"), h("td", {}, hosts.length + " hosts"), h("td", {}, totals.cpus),
        h("td", {}, totals.allocated), h("td", {}, totals.used.toFixed(2)),
        h("td", {}, Math.round(totals.memVMs) + " / " + Math.round(totals.memTotal)),
        h("td", {}, Math.round(totals.memUsed)),
        levels.map((level) => h("td", {}, totals.perLevel[level] || 0)))),
    hosts.length ? "" : h("p", { class: "muted" }, "No host has registered yet."),
    migrationsTable(moves.migrations));
}

// -- one host ---------------------------------------------------------------------------

function groupBy(items, key) {
  const groups = new Map();
  for (const item of items) {
    if (!groups.has(item[key])) groups.set(item[key], []);
    groups.get(item[key]).push(item);
  }
  return groups;
}

function cpuCell(cpu) {
  const percent = Math.round(cpu.busy * 100);
  return h("div", {
    class: "cell " + levelClass(cpu.level), "data-cpu": cpu.cpu, "data-level": cpu.level || "free",
    title: "CPU " + cpu.cpu + (cpu.level ? ", " + levelName(cpu.level) + " vNode" : ", free") + ", " + percent + "% busy",
  }, h("div", { class: "use", style: { height: percent + "%" } }), h("span", {}, cpu.cpu));
}

function cpuMap(cpus) {
  const sockets = [...groupBy(cpus, "socket").entries()].map(([socket, inSocket]) => {
    const l3s = [...groupBy(inSocket, "l3").entries()].map(([l3, inL3]) => {
      const cores = [...groupBy(inL3, "core").values()].map((threads) => h("div", { class: "core" }, threads.map(cpuCell)));
      return h("div", { class: "l3", title: "L3 " + l3 }, cores);
    });
    return h("div", { class: "socket", title: "socket of CPU " + socket }, l3s);
  });
  return h("div", { "data-testid": "cpu-map" }, sockets);
}

function svg(tag, attrs = {}, text = "") {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, value);
  element.textContent = text;
  return element;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// The last hour by the controller's clock (history.now), not the browser's: the
// x axis ends at the controller's "now", whatever the two clocks disagree by.
function historyPlot(history) {
  const samples = history.samples;
  if (samples.length < 2) return h("p", { class: "muted" }, "Collecting samples for the vNode plot...");
  const width = 640, height = 200, pad = 32, t1 = history.now, t0 = t1 - history.span_s;
  const plot = svg("svg", { class: "history", width, height, "data-testid": "history" });
  const levels = [...new Set(samples.flatMap((s) => Object.keys(s.sizes)))].sort();
  const top = Math.max(1, ...samples.flatMap((s) => Object.values(s.sizes)), ...samples.flatMap((s) => Object.values(s.used)));
  const x = (t) => pad + (width - 2 * pad) * (t - t0) / history.span_s;
  const y = (v) => height - pad - (height - 2 * pad) * v / top;
  const colour = { "level-1": "#2f6fd6", "level-2": "#e08a1e", "level-3": "#2e9d57", "level-x": "#8e44ad" };
  for (let quarter = 0; quarter <= 4; quarter++) {  // a tick every 15 minutes, labelled with the time
    const t = t0 + quarter * history.span_s / 4;
    plot.append(svg("line", { x1: x(t), x2: x(t), y1: pad, y2: height - pad, stroke: "#e3e6ea" }),
      svg("text", { x: x(t), y: height - pad + 14, "font-size": 11, "text-anchor": "middle", class: "tick" }, clock(t)));
  }
  for (const level of levels) {
    for (const [key, dash] of [["sizes", "5,4"], ["used", ""]]) {
      const points = samples.map((s) => x(s.time) + "," + y(s[key][level] || 0)).join(" ");
      const line = svg("polyline", { points, fill: "none", stroke: colour[levelClass(level)], "stroke-width": 2, "data-level": level });
      if (dash) line.setAttribute("stroke-dasharray", dash);
      plot.append(line);
    }
  }
  plot.append(svg("text", { x: 4, y: 14, "font-size": 11 }, "CPUs: dashed = vNode size, solid = cores used (0.." + top.toFixed(1) + ")"));
  return plot;
}

async function hostPage(id) {
  const path = "/api/v1/hosts/" + encodeURIComponent(id);
  const [host, map, vms, history] = await Promise.all([
    api("GET", path), api("GET", path + "/cpus"), api("GET", "/api/v1/vms?host=" + encodeURIComponent(id)),
    api("GET", path + "/history"),
  ]);
  const usage = host.usage || {};
  const memory = usage.memory_mib || {};
  const used = memory.total ? (memory.total - memory.available) / memory.total : 0;
  const gpus = (usage.gpus || {});
  const levels = new Set(map.cpus.filter((c) => c.level).map((c) => c.level));
  main.replaceChildren(
    h("h2", {}, "Host " + host.id + " ", h("span", { class: "badge " + host.state }, host.state)),
    h("p", { class: "muted" }, host.address + " - " + host.cpus + " CPUs"),
    legend(levels), cpuMap(map.cpus),
    h("h3", {}, "Memory"),
    h("div", { class: "bar", title: Math.round(used * 100) + "% in use" }, h("div", { style: { width: Math.round(used * 100) + "%" } })),
    h("p", { class: "muted" }, memory.total ? Math.round(memory.total - memory.available) + " of " + memory.total + " MiB in use" : "no sample yet"),
    h("h3", {}, "GPUs"),
    h("p", {}, gpus.available ? gpus.devices.map((g) => g.name + ": " + g.utilization_pct + "%").join(", ") : "No GPU (" + (gpus.reason || "not reported") + ")"),
    h("h3", {}, "vNodes over the last hour"), historyPlot(history),
    h("h3", {}, "VMs"), vmTable(vms, null, usage.vms || {}));
}

// -- VMs --------------------------------------------------------------------------------

const filters = { host: "", level: "", state: "" };

// `lifecycle`: the controller's table of each state's legal actions (a button each), or null for none.
function vmTable(vms, lifecycle, use) {
  return h("table", { "data-testid": "vms" },
    h("tr", {}, ["name", "host", "level", "vCPUs", "MiB", "state", "pinned to", "address"].map((t) => h("th", {}, t)),
      use ? h("th", {}, "cores used") : [], lifecycle ? h("th", {}, "") : []),
    vms.map((vm) => h("tr", { "data-vm": vm.name },
      h("td", {}, vm.name), h("td", {}, vm.host || "-"),
      h("td", {}, h("span", { class: "badge " + levelClass(vm.ratio.toFixed(1)) }, levelName(vm.ratio))),
      h("td", {}, vm.vcpus), h("td", {}, vm.memory_mib),
      h("td", { "data-testid": "state" }, vm.host_state === "down" ? vm.state + " (host down)" : vm.state),
      h("td", {}, (vm.pinning || []).join(",") || "-"),
      h("td", { "data-testid": "address", title: allAddresses(vm) }, (vm.addresses || [])[0] || "-"),
      use ? h("td", {}, use[vm.name] ? use[vm.name].cpu_cores.toFixed(2) : "-") : [],
      lifecycle ? h("td", {}, actions(vm, lifecycle[vm.state] || ["delete"]), consoleLink(vm)) : [])));
}

// Every address of every NIC, for the address cell's tooltip (the cell shows the first IPv4 one).
function allAddresses(vm) {
  return (vm.nics || []).flatMap((nic) => nic.addresses || []).join(", ");
}

// A VM's NICs as its agent reported them: where each is, its MAC, its addresses.
function nicList(vm) {
  const nics = vm.nics || [];
  if (!nics.length) return h("p", { class: "muted", "data-testid": "vm-nics" }, "No NIC.");
  return h("ul", { "data-testid": "vm-nics" }, nics.map((nic) => h("li", {},
    (nic.network ? "network " + nic.network : "bridge " + nic.bridge) + " - " + (nic.mac || "MAC not chosen yet") +
    " - " + ((nic.addresses || []).join(", ") || "no address yet"))));
}

// The destructive actions ask first.
const CONFIRM = {
  shutdown: (name) => "Shut " + name + " down?",
  delete: (name) => "Delete " + name + "? Its disk goes with it.",
};

function actions(vm, allowed) {
  const path = "/api/v1/vms/" + encodeURIComponent(vm.name);
  return allowed.map((action) => h("button", {
    "data-action": action,
    onclick: async () => {
      if (CONFIRM[action] && !window.confirm(CONFIRM[action](vm.name))) return;
      try { await (action === "delete" ? api("DELETE", path) : api("POST", path + "/" + action)); } catch (error) { flash(error.message); }
      render();
    },
  }, action));
}

// -- console ------------------------------------------------------------------------------
// A running VM's serial console in xterm.js (vendored in the package: /dashboard/vendor/xterm,
// loaded on this page only). The browser cannot set headers on a WebSocket: the admin token
// goes as the offered subprotocol "pinfold.token.<token>" (never in the URL, which is logged).

let openConsole = null;  // { name, socket, terminal } while a console page is shown

function consoleLink(vm) {
  if (vm.state !== "running") return [];
  return h("a", { href: "#/console/" + encodeURIComponent(vm.name), "data-console": vm.name }, "console");
}

function load(tag, attrs) {
  return new Promise((resolve, reject) => {
    const element = h(tag, { ...attrs, onload: resolve, onerror: () => reject(new Error("cannot load " + (attrs.src || attrs.href))) });
    document.head.append(element);
  });
}

async function xterm() {
  if (!window.Terminal) {
    await Promise.all([
      load("link", { rel: "stylesheet", href: "/dashboard/vendor/xterm/xterm.css" }),
      load("script", { src: "/dashboard/vendor/xterm/xterm.js" }),
    ]);
  }
  return window.Terminal;
}

// xterm.js writes <style> elements of its own, which the Content-Security-Policy refuses as
// inline styles: their text is copied into constructed style sheets (CSSOM, which it allows).
const adopted = new Map();
function adoptStyles() {
  for (const style of document.querySelectorAll(".terminal style")) {
    if (!adopted.has(style)) adopted.set(style, new CSSStyleSheet());
    adopted.get(style).replaceSync(style.textContent);
  }
  for (const style of [...adopted.keys()]) if (!style.isConnected) adopted.delete(style);
  document.adoptedStyleSheets = [...adopted.values()];
}
new MutationObserver(adoptStyles).observe(document.documentElement, { subtree: true, childList: true, characterData: true });

function closeConsole() {
  if (!openConsole) return;
  if (openConsole.socket) openConsole.socket.close();
  if (openConsole.terminal) openConsole.terminal.dispose();
  openConsole = null;
}

function consoleSocket(name, mode) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const url = scheme + location.host + "/api/v1/vms/" + encodeURIComponent(name) + "/console?mode=" + mode;
  const socket = new WebSocket(url, ["pinfold.console", "pinfold.token." + token()]);
  socket.binaryType = "arraybuffer";
  return socket;
}

// Write first; a console another client writes to (or a refusal the browser cannot read)
// is tried again read-only, and the page says which it got.
function attach(name, terminal, note, mode) {
  const socket = consoleSocket(name, mode);
  let opened = false;
  openConsole.socket = socket;
  socket.onopen = () => {
    opened = true;
    note.textContent = mode === "write" ? "attached: type in the terminal" : "watching read-only: another client writes";
    note.dataset.mode = mode;
    if (mode === "write") terminal.focus();
  };
  socket.onmessage = (event) => terminal.write(new Uint8Array(event.data));
  socket.onclose = (event) => {
    if (!openConsole || openConsole.socket !== socket) return;
    if (!opened && mode === "write") { attach(name, terminal, note, "read"); return; }
    note.textContent = opened ? "console closed" + (event.reason ? ": " + event.reason : "") : "the console refused: is the VM running?";
    note.dataset.mode = "closed";
  };
  terminal.onData((data) => {
    if (mode === "write" && socket.readyState === WebSocket.OPEN) socket.send(new TextEncoder().encode(data));
  });
}

async function consolePage(name) {
  if (openConsole && openConsole.name === name) return refreshNics(name);  // the refresh keeps the terminal
  closeConsole();
  openConsole = { name, socket: null, terminal: null };
  const vm = await api("GET", "/api/v1/vms/" + encodeURIComponent(name));
  const note = h("p", { class: "muted", "data-testid": "console-status" }, "connecting");
  const screen = h("div", { class: "terminal", "data-testid": "terminal" });
  main.replaceChildren(h("h2", {}, "Console of " + name), nicList(vm), note, screen,
    h("p", { class: "muted" }, "The VM's serial console; its log: GET /api/v1/vms/" + name + "/console/log."));
  if (vm.state !== "running") { note.textContent = name + " is " + vm.state + ": a console needs a running VM"; return; }
  const Terminal = await xterm();
  if (!openConsole || openConsole.name !== name) return;  // left meanwhile
  const terminal = new Terminal({ cursorBlink: true, rows: 24, cols: 80 });
  openConsole.terminal = terminal;
  terminal.open(screen);
  attach(name, terminal, note, "write");
}

// On each refresh of an open console page only its NIC list is drawn again (a guest that
// boots takes its address meanwhile); the terminal and its socket are left as they are.
async function refreshNics(name) {
  const vm = await api("GET", "/api/v1/vms/" + encodeURIComponent(name));
  const shown = main.querySelector("[data-testid=vm-nics]");
  if (shown && openConsole && openConsole.name === name) shown.replaceWith(nicList(vm));
}

// The lifecycle table, asked once: it changes only with the controller's version.
let lifecycleTable = null;

async function lifecycle() {
  if (lifecycleTable === null) lifecycleTable = await api("GET", "/api/v1/lifecycle");
  return lifecycleTable;
}

function flash(text) { document.getElementById("status").textContent = text; }

function select(name, values) {
  return h("label", {}, name, h("select", {
    "data-filter": name,
    onchange: (event) => { filters[name] = event.target.value; render(); },
  }, h("option", { value: "" }, "all"), values.map((v) => h("option", { value: v, selected: filters[name] === v ? "" : null }, v))));
}

// What the create form holds, kept across the re-render of every refresh.
const EMPTY_DRAFT = { name: "", vcpus: "1", memory_mib: "512", ratio: "1", image: "" };
const draft = { ...EMPTY_DRAFT };

function createForm() {
  const keep = (event) => { draft[event.target.name] = event.target.value; };
  const field = (name, attrs) => h("label", {}, name, h("input", { name, value: draft[name], oninput: keep, ...attrs }));
  return h("form", {
    class: "inline", "data-testid": "create",
    onsubmit: async (event) => {
      event.preventDefault();
      const data = new FormData(event.target);
      const body = { name: data.get("name"), vcpus: Number(data.get("vcpus")), memory_mib: Number(data.get("memory_mib")), ratio: Number(data.get("ratio")) };
      if (data.get("image")) body.image = data.get("image");
      try { await api("POST", "/api/v1/vms", body); flash("created " + body.name); Object.assign(draft, EMPTY_DRAFT); } catch (error) { flash(error.message); }
      render();
    },
  },
  field("name", { required: "", pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,62}" }),
  field("vcpus", { type: "number", min: 1 }),
  field("memory_mib", { type: "number", min: 1 }),
  h("label", {}, "level", h("select", { name: "ratio", onchange: keep },
    ["1", "2", "3", "4"].map((r) => h("option", { value: r, selected: draft.ratio === r ? "" : null }, levelName(r))))),
  field("image", { placeholder: "base image (optional)" }),
  h("button", { type: "submit" }, "Create VM"));
}

async function vmsPage() {
  const [vms, table] = await Promise.all([api("GET", "/api/v1/vms"), lifecycle()]);
  const shown = vms.filter((vm) => (!filters.host || (vm.host || "-") === filters.host) &&
    (!filters.level || levelName(vm.ratio) === filters.level) && (!filters.state || vm.state === filters.state));
  const unique = (values) => [...new Set(values)].sort();
  main.replaceChildren(
    h("h2", {}, "VMs"), createForm(),
    h("form", { class: "inline" }, select("host", unique(vms.map((vm) => vm.host || "-"))),
      select("level", unique(vms.map((vm) => levelName(vm.ratio)))), select("state", unique(vms.map((vm) => vm.state)))),
    vmTable(shown, table));
}

// -- routing, refresh, login -------------------------------------------------------------

let busy = false;

async function render() {
  if (busy || !token()) return;
  busy = true;
  const route = location.hash.slice(1) || "/";
  try {
    if (!route.startsWith("/console/")) closeConsole();
    if (route.startsWith("/console/")) await consolePage(decodeURIComponent(route.slice(9)));
    else if (route.startsWith("/hosts/")) await hostPage(decodeURIComponent(route.slice(7)));
    else if (route === "/vms") await vmsPage();
    else await overview();
  } catch (error) {
    flash(error.message);
  } finally {
    busy = false;
  }
}

function showLogin(message) {
  closeConsole();
  sessionStorage.removeItem("pinfold-token");
  document.getElementById("login").hidden = false;
  document.getElementById("logout").hidden = true;
  document.getElementById("login-error").textContent = message || "";
  main.replaceChildren();
}

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem("pinfold-token", document.getElementById("token").value.trim());
  try {
    await api("GET", "/api/v1/whoami");
  } catch (error) {
    return;
  }
  document.getElementById("login").hidden = true;
  document.getElementById("logout").hidden = false;
  render();
});

document.getElementById("logout").addEventListener("click", () => showLogin(""));
window.addEventListener("hashchange", render);
timer = setInterval(() => { if (!document.querySelector("form.inline input:focus, select:focus")) render(); }, REFRESH_MS);

if (token()) { document.getElementById("logout").hidden = false; render(); } else { showLogin(""); }
