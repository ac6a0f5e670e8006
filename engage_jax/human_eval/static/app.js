// The rater's page: renders /api/state, sends messages, ends chats, submits ratings.
// All text is inserted with textContent (never as markup), so chat text cannot inject HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;   // the latest state from the server
let busy = false;
const opened = new Set();   // chats whose opening was requested (asked once per page load)

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function status(msg) { $("status").textContent = msg || ""; }

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new Error("connection lost; reload the page to continue where you left off");
  }
  const data = await resp.json().catch(() => ({error: "bad response from the server"}));
  if (!resp.ok) throw new Error(data.error || ("error " + resp.status));
  return data;
}

function renderTurns(list, turns) {
  list.replaceChildren();
  for (const t of turns) {
    const li = el("li", "turn " + t.role);
    li.append(el("span", "who", t.role === "you" ? "You" : "Agent"), el("span", "text", t.text));
    list.append(li);
  }
}

function renderScenario(s) {
  $("scenario").hidden = false;
  $("progress").textContent = "Scenario " + s.number + " of " + s.total;
  $("instructions").textContent = s.instructions;
  const dl = $("fields");
  dl.replaceChildren();
  for (const [k, v] of s.fields) dl.append(el("dt", "", k), el("dd", "", v));
}

function renderChat(st) {
  const c = st.chat;
  $("chat").hidden = false;
  $("chat-title").textContent = "Chat with agent " + c.slot;
  renderTurns($("turns"), c.turns);
  const left = st.limits.max_agent_turns - c.agent_turns;
  $("counter").textContent = left + " agent repl" + (left === 1 ? "y" : "ies") + " left";
  $("message").maxLength = st.limits.max_chars;
  $("send").disabled = busy || c.needs_opening;
  $("end").disabled = busy || !c.can_end;
  $("message").disabled = busy || c.needs_opening;
}

function likertCell(item, slot) {
  const td = el("td", "scale");
  for (let v = item.min; v <= item.max; v += 1) {
    const label = el("label");
    const input = el("input");
    input.type = "radio";
    input.name = slot + ":" + item.key;
    input.value = String(v);
    input.required = true;
    label.append(input, document.createTextNode(" " + v));
    td.append(label);
  }
  return td;
}

function amountCell(item, slot) {
  const td = el("td");
  const input = el("input");
  input.type = "number";
  input.name = slot + ":" + item.key;
  input.min = String(item.min);
  input.max = String(item.max);
  input.step = String(item.step);
  input.required = true;
  td.append(document.createTextNode("$ "), input);
  return td;
}

function renderRate(st) {
  $("rate").hidden = false;
  renderTurns($("turns-A"), st.chats.A);
  renderTurns($("turns-B"), st.chats.B);
  const tbody = $("items").querySelector("tbody");
  tbody.replaceChildren();
  for (const item of st.items) {
    const tr = el("tr");
    tr.append(el("td", "", item.label));
    for (const slot of ["A", "B"]) tr.append(item.kind === "likert" ? likertCell(item, slot) : amountCell(item, slot));
    tbody.append(tr);
  }
  $("rate-form").reset();
}

function render(st) {
  current = st;
  for (const id of ["scenario", "chat", "rate", "done"]) $(id).hidden = true;
  if (st.phase === "done") { $("progress").textContent = ""; $("done").hidden = false; return; }
  renderScenario(st.scenario);
  if (st.phase === "chat") {
    renderChat(st);
    const key = st.scenario.index + ":" + st.chat.slot;
    if (st.chat.needs_opening && !busy && !opened.has(key)) { opened.add(key); openChat(); }
  } else {
    renderRate(st);
  }
}

async function run(fn, msg) {
  busy = true;
  if (current) render(current);
  status(msg || "");
  try {
    const st = await fn();
    busy = false;
    status("");
    render(st);
  } catch (e) {
    busy = false;
    if (current) render(current);
    status(e.message);
  }
}

function openChat() {
  run(() => api("/api/open", {}), "The agent is writing…");
}

$("send-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("message").value.trim();
  if (!text || !current || current.phase !== "chat") return;
  run(async () => {
    const st = await api("/api/message", {text: text, turn: current.chat.turn});
    $("message").value = "";
    return st;
  }, "The agent is writing…");
});

$("end").addEventListener("click", () => run(() => api("/api/end", {})));

$("rate-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = new FormData($("rate-form"));
  const ratings = {A: {}, B: {}};
  for (const item of current.items) {
    for (const slot of ["A", "B"]) ratings[slot][item.key] = Number(form.get(slot + ":" + item.key));
  }
  run(() => api("/api/rate", {scenario: current.scenario.index, ratings: ratings,
                              preference: form.get("preference")}));
});

run(() => api("/api/state"));
