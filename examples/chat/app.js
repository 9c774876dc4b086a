// wsguard chat page: joins a room over /ws, sends and shows messages, polls /stats for the panel.
"use strict";

const $ = (id) => document.getElementById(id);
let socket = null;
let lastFrame = null;

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

function setConnected(on) {
  $("status").textContent = on ? "connected" : "disconnected";
  $("status").dataset.state = on ? "connected" : "disconnected";
  for (const id of ["text", "send"]) $(id).disabled = !on;
  $("resend").disabled = !on || lastFrame === null;
}

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(frame);
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  if (socket) socket.close(1000, "rejoin");
  const name = $("name").value.trim();
  const room = $("room").value.trim();
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("client", name);
  socket = new WebSocket(url);
  socket.addEventListener("open", () => {
    setConnected(true);
    send(JSON.stringify({ type: "join", room, name }));
  });
  socket.addEventListener("close", (e) => {
    setConnected(false);
    addLine(`connection closed (${e.code}${e.reason ? ": " + e.reason : ""})`, "system");
  });
  socket.addEventListener("message", (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch { return addLine(String(e.data), "system"); }
    switch (msg.type) {
      case "message": return addLine(msg.text, "", msg.from);
      case "joined": return addLine(`${msg.name} joined ${msg.room}`, "system");
      case "left": return addLine(`${msg.name} left`, "system");
      case "duplicate": return addLine("duplicate dropped", "system");
      case "error": return addLine(`error: ${msg.error}${msg.retry_after_ms ? ` (retry in ${Math.ceil(msg.retry_after_ms / 1000)} s)` : ""}`, "error");
      default: return addLine(e.data, "system");
    }
  });
});

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  lastFrame = JSON.stringify({ type: "say", id: crypto.randomUUID(), text });
  send(lastFrame);
  $("text").value = "";
  $("resend").disabled = false;
});

$("resend").addEventListener("click", () => {
  if (lastFrame !== null) send(lastFrame);
});

$("fail").addEventListener("submit", async (event) => {
  event.preventDefault();
  const n = Number($("fail-n").value) || 1;
  await fetch(`/fail?n=${n}`, { method: "POST" });
  addLine(`the handler fails the next ${n} messages`, "system");
});

function show(id, value) {
  $(id).textContent = value === undefined || value === null ? "-" : String(value);
}

async function poll() {
  try {
    const stats = await (await fetch("/stats")).json();
    const state = stats.breaker?.state ?? "unknown";
    $("breaker-state").textContent = state.replace("_", " ");
    $("breaker-state").dataset.state = state;
    show("duplicates", stats.duplicates);
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
}
setInterval(poll, 500);
poll();
