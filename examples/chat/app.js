// wsguard chat page: joins a room over /ws through the wsguard.v1 client (/wsguard.js), sends and
// shows messages, survives dropped connections, and polls /stats for the panel.
import { WsguardClient } from "/wsguard.js";

const $ = (id) => document.getElementById(id);
// The room and name survive a reload, and so does the session (the client's storageKey).
const SAVED = "wsguard-chat";
const SESSION_KEY = "wsguard-chat-session";
// `?backoff=MS`: the first reconnection delay; raise it to have time to talk while a page is away.
const backoffMs = Number(new URLSearchParams(location.search).get("backoff")) || 250;

let client = null;
let me = null;
let room = null;
let lastFrame = null;
// Messages of this page the rate limit refused, counted on one line instead of one each.
let limited = 0;
let limitedLine = null;
const FLOOD = 200;

function addLine(text, cls, from) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  if (from) {
    const who = document.createElement("span");
    who.className = "from";
    who.textContent = from;
    li.appendChild(who);
  }
  li.appendChild(document.createTextNode(text));
  $("messages").appendChild(li);
  $("messages").scrollTop = $("messages").scrollHeight;
}

function show(id, value) {
  $(id).textContent = value === undefined || value === null ? "-" : String(value);
}

/** `state`: connected, connecting, reconnecting or disconnected. */
function setStatus(state, text = state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
  // Messages typed while away are held and sent on reconnect, so sending stays on.
  const usable = client !== null && state !== "disconnected";
  for (const id of ["text", "send"]) $(id).disabled = !usable;
  $("resend").disabled = !usable || lastFrame === null;
  $("flood").disabled = !usable;
  $("drop").disabled = state !== "connected";
}

function showCounters() {
  const c = client?.counters;
  show("page-counters", c ? `${c.resumed} / ${c.replayed} / ${c.refused}` : "-");
  show("page-session", client?.session ? `${client.session.slice(0, 6)}…, seq ${client.last}` : client ? "plain" : "-");
}

function render(msg, text) {
  switch (msg?.type) {
    case "message": return addLine(msg.text, "", msg.from);
    case "joined": return addLine(`${msg.name} joined ${msg.room}`, "system");
    case "left": return addLine(`${msg.name} left ${msg.room ?? ""}`.trim(), "system");
    case "duplicate": return addLine("duplicate dropped", "system");
    case "error":
      if (msg.error === "rate_limited") return countLimited(msg);
      return addLine(`error: ${msg.error}${msg.retry_after_ms ? ` (retry in ${Math.ceil(msg.retry_after_ms / 1000)} s)` : ""}`, "error");
    default: return addLine(text ?? JSON.stringify(msg), "system");
  }
}

function countLimited(msg) {
  limited += 1;
  const text = `${limited} of your messages refused by the rate limit${msg.retry_after_ms != null ? ` (next allowed in ${msg.retry_after_ms} ms)` : ""}`;
  if (limitedLine === null) {
    addLine(text, "error");
    limitedLine = $("messages").lastElementChild;
    limitedLine.id = "limited-line";
  } else {
    limitedLine.textContent = text;
  }
}

function send(value) {
  if (!client) return false;
  if (client.send(value)) return true;
  addLine("too many messages wait for the server's acknowledgement; try again in a moment", "error");
  return false;
}

function start(name) {
  me = name;
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("client", name);
  const c = new WsguardClient(url, {
    storageKey: SESSION_KEY,
    plainFallback: true,
    backoff: { initialMs: backoffMs },
  });
  client = c;
  setStatus("connecting");
  const restored = c.restored;
  c.on("session", (e) => {
    if (e.status === "resumed") {
      addLine(restored && c.counters.resumed === 1 ? "session resumed after the reload (earlier messages are not shown)" : "reconnected: session resumed, nothing lost", "system");
    } else if (e.status === "refused") {
      const lost = e.lost != null ? `, ${e.lost} messages lost` : ", messages sent to you meanwhile are lost";
      addLine(`reconnected, but the session could not be resumed (${e.reason}${lost})`, "error");
      if (e.unconfirmed.length) addLine(`${e.unconfirmed.length} of your messages may not have been delivered`, "error");
    } else if (e.status === "plain" && c.counters.sessions > 1) {
      addLine("reconnected (the server offers no session: messages meanwhile are lost)", "system");
    }
    // Joining again under the same name is silent on the server: it only learns the newest
    // connection. A new session joins for real; this goes out before anything resent.
    c.send({ type: "join", room, name: me });
    showCounters();
  });
  c.on("message", (e) => (e.binary ? addLine(`(${e.binary.length} binary bytes)`, "system") : render(e.data, e.text)));
  c.on("unnumbered", (e) => render(e.data, e.text));
  c.on("state", (e) => {
    if (c !== client) return;
    if (e.state === "open") setStatus("connected");
    else if (e.state === "connecting") setStatus(e.previous === "waiting" ? "reconnecting" : "connecting", "connecting");
    else if (e.state === "waiting") {
      if (e.previous === "open") addLine(`connection lost (${e.code}${e.reason ? ": " + e.reason : ""})`, "system");
      setStatus("reconnecting", `reconnecting in ${(e.delayMs / 1000).toFixed(1)} s`);
    }
    showCounters();
  });
  c.on("stop", (e) => {
    if (c !== client) return;
    const why = {
      superseded: "another tab or connection took this session over",
      unsupported: "the server does not speak wsguard.v1",
      gave_up: "gave up reconnecting",
    }[e.reason] ?? `connection closed (${e.code ?? "-"}${e.message ? ": " + e.message : ""})`;
    if (e.reason !== "closed") addLine(why, "system");
    sessionStorage.removeItem(SAVED);
    client = null;
    setStatus("disconnected");
    showCounters();
  });
}

$("join").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  room = $("room").value.trim();
  sessionStorage.setItem(SAVED, JSON.stringify({ name, room }));
  if (client && name === me) {
    // Same client id, same session: moving rooms is one more message.
    send({ type: "join", room, name });
    return;
  }
  if (client) {
    const old = client;
    client = null;
    try { old.send({ type: "leave" }); } catch {}
    await old.close();
  }
  start(name);
});

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  const frame = JSON.stringify({ type: "say", id: crypto.randomUUID(), text });
  if (!send(frame)) return;
  lastFrame = frame;
  $("text").value = "";
  $("resend").disabled = false;
});

$("resend").addEventListener("click", () => {
  if (lastFrame !== null) send(lastFrame);
});

$("flood").addEventListener("click", () => {
  // A new count for each flood, on a line of its own.
  limited = 0;
  if (limitedLine) limitedLine.removeAttribute("id");
  limitedLine = null;
  for (let i = 1; i <= FLOOD; i++) {
    const frame = JSON.stringify({ type: "say", id: crypto.randomUUID(), text: `flood ${i}/${FLOOD}` });
    if (!send(frame)) return;
  }
});

$("drop").addEventListener("click", async () => {
  if (!client) return;
  const who = client.session ? `session=${client.session}` : `client=${encodeURIComponent(me)}`;
  try {
    const answer = await (await fetch(`/drop?${who}`, { method: "POST" })).json();
    if (answer.error) addLine(`drop: ${answer.error}`, "error");
  } catch (error) {
    addLine(`drop failed: ${error}`, "error");
  }
});

$("fail").addEventListener("submit", async (event) => {
  event.preventDefault();
  const n = Number($("fail-n").value) || 1;
  await fetch(`/fail?n=${n}`, { method: "POST" });
  addLine(`the handler fails the next ${n} messages`, "system");
});

async function poll() {
  try {
    const stats = await (await fetch("/stats")).json();
    show("node", stats.node && `${stats.node.slice(0, 8)} (rooms: ${stats.rooms})`);
    show("members", stats.members);
    const state = stats.breaker?.state ?? "unknown";
    $("breaker-state").textContent = state.replace("_", " ");
    $("breaker-state").dataset.state = state;
    show("duplicates", stats.duplicates);
    show("rate-limited", stats.rate_limited);
    show("rejected", stats.rejected);
    show("handled", stats.handled);
    show("errors", stats.errors);
    show("connections", stats.connections);
    const sessions = stats.sessions ?? {};
    show("sessions", sessions.live);
    show("sessions-detached", sessions.detached);
    show("resumed", sessions.resumed);
    show("replayed", sessions.replayed);
    const refused = sessions.refused;
    show("refused", refused && `${refused.unknown} / ${refused.expired} / ${refused.gap} / ${refused.unavailable}`);
    const body = $("clients").tBodies[0];
    body.replaceChildren();
    for (const c of stats.clients ?? []) {
      const tr = document.createElement("tr");
      for (const v of [c.client, c.messages_in, c.messages_out, c.duplicates, c.rejections, c.errors]) {
        const td = document.createElement("td");
        td.textContent = v ?? "-";
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  } catch (_) {
    // The server may be restarting; the next poll tries again.
  }
  showCounters();
}
setInterval(poll, 500);
poll();

// After a reload: the same name and room, and the session resumes (what arrived meanwhile shows).
try {
  const saved = JSON.parse(sessionStorage.getItem(SAVED) ?? "null");
  if (saved?.name && saved?.room) {
    $("name").value = saved.name;
    $("room").value = saved.room;
    room = saved.room;
    start(saved.name);
  }
} catch {}
