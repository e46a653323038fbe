// The live admin page of presence-ha (server/net/admin_page.py): polls /api/overview
// every second and redraws; actions go to /api/action with the CSRF token, after a
// confirmation for every disruptive one. No framework; DOM built with textContent only.
"use strict";

const POLL_MS = 1000;
const STALE_MS = 5000;
const FETCH_TIMEOUT_MS = 5000;
const FAILED = new Set(["Running in Failed Mode", "Unknown"]);
const STEADY = new Set(["Normal"]);

const $ = (selector, root = document) => root.querySelector(selector);
const state = { data: null, lastOk: 0, timer: null, inFlight: false, pending: null, keys: new Map() };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function csrf() {
  return $("input[name=csrf]").value;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function timeOf(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

// --- polling ---------------------------------------------------------------------------

async function poll() {
  if (state.inFlight) return;
  state.inFlight = true;
  clearTimeout(state.timer);
  const abort = new AbortController();
  const timeout = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch("/api/overview", { signal: abort.signal, cache: "no-store" });
    if (response.status === 401) {
      location.assign("/");  // the session expired: the login form
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state.data = await response.json();
    state.lastOk = Date.now();
    render(state.data);
    banner(databaseTrouble(state.data.database));
  } catch (error) {
    banner(unreachable(error));
  } finally {
    clearTimeout(timeout);
    state.inFlight = false;
    state.timer = setTimeout(poll, POLL_MS);
  }
}

function unreachable(error) {
  const me = document.body.dataset.node;
  const why = error.name === "AbortError" ? "no answer" : error.message || String(error);
  const others = [];
  for (const group of state.data ? state.data.groups : []) {
    for (const node of group.nodes) {
      if (node.name !== me && node.admin_port) {
        const href = `${location.protocol}//${location.hostname}:${node.admin_port}/`;
        others.push(" ", el("a", { href }, `open ${node.name}'s page`));
      }
    }
  }
  return [`Node ${me}, which serves this page, does not answer (${why}); what you see is stale.`, ...others];
}

function databaseTrouble(database) {
  if (!database || database.ok) return null;
  return [`Node ${document.body.dataset.node} cannot reach the database (${database.error}): states are live, `
    + `users and the event log are as of ${timeOf(database.as_of)}.`];
}

function banner(content) {
  const box = $("#banner");
  box.hidden = !content;
  box.replaceChildren(...(content || []));
}

function note(text, ok = true) {
  const box = $("#note");
  box.hidden = !text;
  box.className = ok ? "note" : "note error";
  box.textContent = text || "";
}

// --- rendering -------------------------------------------------------------------------

function render(data) {
  const main = $("#groups");
  if (!main.dataset.ready) {
    main.replaceChildren();
    main.dataset.ready = "1";
  }
  const seen = new Set();
  for (const group of data.groups) {
    seen.add(`group-${group.name}`);
    let section = document.getElementById(`group-${group.name}`);
    if (!section) {
      section = el("section", { class: "group", id: `group-${group.name}` }, el("h2"), el("div", { class: "nodes" }));
      main.append(section);
    }
    refresh(section.firstChild, { name: group.name, ha: group.ha, buttons: group.buttons }, groupHeading);
    const row = section.lastChild;
    group.nodes.forEach((node, index) => {
      let card = row.children[index];
      if (!card || card.id !== `node-${node.name}`) {
        card = el("article", { id: `node-${node.name}` }, el("div", { class: "body" }), el("div", { class: "countdowns" }));
        row.insertBefore(card, row.children[index] || null);
      }
      refresh(card.firstChild, { ...node, countdowns: null }, (n) => nodeBody(group, n), card, node);
      card.lastChild.replaceChildren(...node.countdowns.map(countdown));
    });
  }
  for (const section of [...main.children]) if (!seen.has(section.id)) section.remove();
  refresh($("#events tbody"), data.events, events);
}

// Redraws `box` only when `value` changed: buttons are not replaced under the pointer.
function refresh(box, value, draw, card = null, node = null) {
  const key = JSON.stringify(value);
  if (state.keys.get(box) === key) return;
  state.keys.set(box, key);
  box.replaceChildren(...[draw(value)].flat());
  if (card) {
    card.className = `node ${node.alive ? cardClass(node.state) : "down"}`;
    card.dataset.state = node.alive ? node.state : "down";
  }
}

function cardClass(name) {
  if (STEADY.has(name)) return "ok";
  if (FAILED.has(name)) return "failed";
  return "moving";
}

function groupHeading(group) {
  return [`Group ${group.name}`, el("span", { class: "muted" }, `HA ${group.ha ? "on" : "off"}`),
    ...group.buttons.map(actionButton)];
}

function nodeBody(group, node) {
  const heading = el("h3", {}, node.name, node.alive
    ? el("span", { class: "badge" }, "reachable")
    : el("span", { class: "badge down" }, "DOWN"));
  if (!node.alive) {
    return [heading,
      el("p", { class: "state down-text" }, "Down: its admin RPC does not answer."),
      el("p", { class: "muted" }, `Database heartbeat last renewed ${ago(node.last_seen_s)}. Its last state is not shown: it is stale.`),
      usersTable(node)];
  }
  return [heading,
    el("dl", {},
      el("dt", {}, "State"), el("dd", { class: "state" }, node.state),
      el("dt", {}, "Reason"), el("dd", { class: "reason" }, node.reason),
      el("dt", {}, "Since"), el("dd", { class: "since" }, node.since ? timeOf(node.since) : "just now")),
    usersTable(node), servicesTable(node),
    el("div", { class: "actions" }, node.buttons.map(actionButton))];
}

function usersTable(node) {
  const rows = [["Users assigned", node.users.assigned, "users-assigned"], ["Users served", node.users.served, "users-served"]];
  for (const [name, value] of Object.entries(node.sessions || {})) rows.push([name, value, name]);
  return el("table", { class: "counters" }, el("tbody", {}, rows.map(([label, value, key]) =>
    el("tr", {}, el("th", {}, label), el("td", { class: "num counter", "data-name": key }, value)))));
}

function servicesTable(node) {
  const rows = (node.services || []).map((s) => {
    const status = !s.applicable ? "not applicable" : s.running ? "running" : s.cause || "stopped";
    const watched = s.applicable && !s.monitored ? " (not monitored)" : "";
    const fault = s.applicable && s.monitored && !s.running && s.cause !== "stopped by the SRM";
    return el("tr", { class: fault ? "service-down" : s.running ? "" : "service-held", "data-service": s.name },
      el("td", {}, s.display_name), el("td", { class: "service-state" }, status + watched));
  });
  return el("table", { class: "services" }, el("thead", {}, el("tr", {}, el("th", {}, "critical service"), el("th", {}, "state"))),
    el("tbody", {}, rows));
}

function countdown(item) {
  const secs = el("span", { class: "secs" });
  const box = el("div", { class: "countdown", "data-timer": item.timer }, `${item.what} in `, secs, " s");
  box.dataset.deadline = String(Date.now() + item.seconds * 1000);
  tickOne(box);
  return box;
}

function tickOne(box) {
  const left = Math.max(0, Math.ceil((Number(box.dataset.deadline) - Date.now()) / 1000));
  box.querySelector(".secs").textContent = String(left);
}

function tick() {
  document.querySelectorAll(".countdown").forEach(tickOne);
  const updated = $("#updated");
  if (state.lastOk) {
    const age = (Date.now() - state.lastOk) / 1000;
    updated.textContent = `updated ${age < 1.5 ? "just now" : ago(age)}`;
    updated.className = Date.now() - state.lastOk > STALE_MS ? "banner" : "muted";
  }
}

function events(list) {
  return list.map((e) => el("tr", {},
    el("td", { title: e.at }, timeOf(e.at)), el("td", {}, e.node), el("td", {}, e.from), el("td", {}, e.to),
    el("td", {}, e.reason), el("td", {}, e.event)));
}

// --- actions ---------------------------------------------------------------------------

function actionButton(action) {
  const button = el("button", {
    type: "button", class: !action.confirm ? "" : action.op.startsWith("service.") ? "warn" : "danger",
    "data-op": action.op,
    "data-node": action.node, "data-group": action.group, "data-service": action.service,
  }, action.label);
  button.addEventListener("click", () => ask(action));
  return button;
}

function ask(action) {
  if (!action.confirm) {
    act(action);
    return;
  }
  state.pending = action;
  $("#confirm-title").textContent = `${action.label}?`;
  $("#confirm-text").textContent = action.confirm;
  $("#confirm-ok").textContent = action.label;
  $("#confirm").returnValue = "";
  $("#confirm").showModal();
}

function confirmed() {
  const action = state.pending;
  state.pending = null;
  if (action && $("#confirm").returnValue === "ok") act(action);
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
  });
  return response.json().catch(() => ({ ok: false, error: `HTTP ${response.status}` }));
}

async function act(action) {
  note(`${action.label}: sent…`);
  try {
    const answer = await post("/api/action", {
      op: action.op, node: action.node, group: action.group, service: action.service,
    });
    note(answer.notes ? answer.notes.join("; ") : answer.error, Boolean(answer.ok));
  } catch (error) {
    note(`${action.label} failed: ${error.message || error}`, false);
  }
  poll();
}

async function logout(event) {
  event.preventDefault();
  await post("/logout", {});
  location.assign("/");
}

document.addEventListener("DOMContentLoaded", () => {
  $("#confirm").addEventListener("close", confirmed);
  $("#logout-form").addEventListener("submit", logout);
  history.replaceState(null, "", "/");  // the link's token leaves the address bar and the history
  setInterval(tick, 250);
  poll();
});
