// wsguard.js: a client of wsguard's session protocol, `wsguard.v1` (docs/protocol.md), for
// browsers and Node.js 20+. One ES module, no dependencies, no build step.
//
// A client that drops and reconnects loses nothing and sees nothing twice: every server message
// is delivered exactly once and in order, every message sent is processed by the server exactly
// once, across any number of disconnects within the session TTL; when that cannot hold, the
// client says exactly what was lost.
//
//   import { WsguardClient } from "/wsguard.js";
//   const client = new WsguardClient("wss://example.com/ws?client=alice", { storageKey: "chat" });
//   client.on("session", (e) => { if (!e.resumed) client.send({ type: "join", room: "lobby" }); });
//   client.on("message", (e) => console.log(e.seq, e.data));
//   client.send({ type: "say", text: "hi" });   // false if the unacknowledged buffer is full
//
// new WsguardClient(url, options) connects at once. Options (all optional):
//   backoff            { initialMs: 250, maxMs: 10000, multiplier: 2, jitter: 0.5 }: the wait
//                      before reconnecting, initialMs after a drop, times multiplier after each
//                      failed attempt, at most maxMs, drawn from wait * (1 ± jitter).
//   maxAttempts        0 (never give up): failed attempts in a row before the client stops.
//   maxUnacknowledged  1000: messages sent and not yet acknowledged by the server, at most.
//   ackEvery, ackIntervalMs   32, 50: acknowledge after this many messages, or this long after
//                      the first unacknowledged one.
//   connectTimeoutMs   10000: the longest an attempt may take, up to the server's session frame.
//   closeTimeoutMs     2000: how long close() waits for the server to acknowledge what was sent.
//   resendUnconfirmed  false: after a resume refused as unknown or expired, resend what the old
//                      session had not acknowledged (only if repeating it is safe); otherwise it
//                      is handed back in the session event's `unconfirmed`.
//   plainFallback      false: if the server does not speak wsguard.v1, carry on as a plain
//                      WebSocket (no resume, no numbering; a session event with status "plain"
//                      after every connect) instead of stopping. A browser fails the handshake
//                      of such a server as if it were down, so until a session has opened every
//                      other attempt offers no subprotocol. Without plainFallback the browser
//                      client retries such a server as it would a down one.
//   storageKey         null: a sessionStorage key; when set, the session (token, last seq, next
//                      id, unacknowledged messages) is saved when the page is hidden (reload,
//                      navigation) and taken back by the next client with the same key and URL,
//                      so a reload resumes too. The saved copy is used once.
//   WebSocket, storage the WebSocket class and Storage to use (globals by default; for tests).
//
// Methods and properties:
//   send(value) -> boolean    queues a message: a string travels as text (JSON text as its value,
//                      any other text as a JSON string), an ArrayBuffer or typed array as binary,
//                      anything else as its JSON value. Numbered at once, sent now or after the
//                      next session opens, held until acknowledged and resent after a resume.
//                      false (nothing queued) when maxUnacknowledged messages are unacknowledged;
//                      throws once the client has stopped.
//   writable() -> Promise     resolves when send() has room again.
//   close() -> Promise<{unconfirmed}>   waits up to closeTimeoutMs for acknowledgements, then
//                      acknowledges what arrived and closes with 1000; the client stops.
//   reconnect()        drops the connection now (no close frame is awaited) and reconnects at
//                      once (or, while waiting, stops waiting).
//   save()             with storageKey: saves the session now (done by itself on pagehide).
//   state              "connecting" | "open" | "waiting" (away; a reconnection is scheduled) |
//                      "closed" (stopped).
//   session, last, unacknowledged   the session token, the highest seq delivered, the number of
//                      messages held for resend.
//   counters           { sessions, resumed, refused, refusedBy: { unknown, expired, gap,
//                      unavailable }, replayed, resent, duplicates, lost, reconnects }.
//                      `replayed` counts the messages delivered in the burst that follows a resume
//                      (until the stream is quiet for 100 ms): an estimate, as the wire does not
//                      mark replays; the server's own figure is exact.
//   on(type, listener) -> off()   listens; off(type, listener) too. Events (one object each):
//     "session"  { status: "opened" | "resumed" | "refused" | "plain", resumed, session, last,
//                  reason, lost, unconfirmed }: a session is attached. On anything but "resumed"
//                  the application restores its state (a new session starts from seq 1);
//                  messages it sends from this listener go out before the ones resent from the
//                  old session. `reason` (unknown, expired, gap) and `lost` (with gap: how many
//                  server messages cannot be replayed) come with "refused"; `unconfirmed` lists
//                  messages that may or may not have been processed (unknown, expired).
//     "message"  { seq, data, text, binary }: a server message, exactly once and in seq order.
//                  data is the JSON value sent; text the message as the server's handler wrote
//                  it (a JSON string's content, or the value's JSON text); binary a Uint8Array
//                  for a binary message (data and text are then undefined).
//     "unnumbered" { data, text }: a text frame outside the sequence, such as the server's error
//                  frames ({"type":"error",...,"id":N}); not replayed after a reconnect.
//     "state"    { state, previous, delayMs, attempt, code, reason }: the state changed; with
//                  "waiting", the delay before the next attempt and why the last one ended.
//     "stop"     { reason: "closed" | "superseded" | "server" | "gave_up" | "unsupported" |
//                  "protocol", code, message, unconfirmed }: the client stopped for good (after
//                  close(), a 1008 superseded close, a close code that forbids coming back,
//                  maxAttempts failures, or a server without wsguard.v1).
//
// Reconnection: a drop without a close frame, or a close with any code but 1000, 1002, 1003,
// 1007, 1009, 1010 and 1008 "superseded", reconnects after the backoff and resumes with the
// token and the highest seq delivered in order. A 1001 close whose reason says "reconnect in N
// ms" (a draining server) reconnects after N ms. A session frame answered "unavailable" (then
// 1013) is retried after the backoff with the same first frame. While the browser is offline
// the client waits for it to come online instead of counting failures.

export const SUBPROTOCOL = "wsguard.v1";

const FINAL_CODES = new Set([1000, 1002, 1003, 1007, 1009, 1010]);
const REPLAY_QUIET_MS = 100;

/** The server's messages: the highest seq delivered in order, and what was acknowledged. */
export class Inbox {
  constructor() {
    this.last = 0;
    this.acked = 0;
  }

  /** "next" (deliver it), "seen" (a replay of something delivered: drop it) or "skipped". */
  arrive(seq) {
    if (seq <= this.last) return "seen";
    if (seq !== this.last + 1) return "skipped";
    this.last = seq;
    return "next";
  }

  /** Delivered and not yet acknowledged. */
  get unacked() {
    return this.last - this.acked;
  }

  /** Marks everything delivered as acknowledged; the seq to send. */
  ack() {
    this.acked = this.last;
    return this.last;
  }

  /** A new session numbers from 1 again. */
  restart() {
    this.last = 0;
    this.acked = 0;
  }
}

/** The client's messages not yet acknowledged by the server, oldest first. */
export class Outbox {
  constructor() {
    this.entries = [];
    this.head = 0;
    this.nextId = 1;
  }

  get size() {
    return this.entries.length - this.head;
  }

  /** Numbers `payload` and holds it; returns the entry ({ id, payload }). */
  push(payload) {
    const entry = { id: this.nextId++, payload };
    this.entries.push(entry);
    return entry;
  }

  /** Frees every message up to `id` (a cumulative ack, or a session frame's `last`). */
  acknowledge(id) {
    let freed = 0;
    while (this.head < this.entries.length && this.entries[this.head].id <= id) {
      this.entries[this.head++] = undefined;
      freed++;
    }
    if (this.head > 64 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
    return freed;
  }

  /** The entries held, oldest first. */
  held() {
    return this.entries.slice(this.head);
  }

  /** Takes every entry out; the next id is 1 (a new session). */
  take() {
    const taken = this.held();
    this.entries = [];
    this.head = 0;
    this.nextId = 1;
    return taken;
  }
}

/** What `send` was given, encoded for the wire: `{ json }` (a JSON text) or `{ bytes }`. */
export function encodePayload(value) {
  if (typeof value === "string") {
    return { json: isJson(value) ? value : JSON.stringify(value), value };
  }
  if (value instanceof ArrayBuffer) return { bytes: new Uint8Array(value), value };
  if (ArrayBuffer.isView(value)) {
    return { bytes: new Uint8Array(value.buffer, value.byteOffset, value.byteLength), value };
  }
  const json = JSON.stringify(value);
  if (json === undefined) throw new TypeError("wsguard: cannot send " + typeof value);
  return { json, value };
}

function isJson(text) {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** The wire frame of message `id`: a text frame, or a binary one behind its 8-byte number. */
export function msgFrame(id, payload) {
  if (payload.json !== undefined) return `{"type":"msg","id":${id},"data":${payload.json}}`;
  const frame = new Uint8Array(8 + payload.bytes.length);
  new DataView(frame.buffer).setBigUint64(0, BigInt(id));
  frame.set(payload.bytes, 8);
  return frame;
}

/** The number and payload of a binary frame, or null if it is shorter than 8 bytes or numbered 0. */
export function decodeBinary(buffer) {
  const bytes = buffer instanceof ArrayBuffer ? new Uint8Array(buffer) : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  if (bytes.length < 8) return null;
  const seq = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0));
  if (seq === 0) return null;
  return { seq, payload: bytes.subarray(8) };
}

/** A JSON value as the server's handler wrote it: a string's content, any other value's JSON. */
export function dataToText(data) {
  return typeof data === "string" ? data : JSON.stringify(data);
}

/** The delay a 1001 close asks for ("... reconnect in N ms"), or null. */
export function reconnectHint(code, reason) {
  if (code !== 1001 || typeof reason !== "string") return null;
  const found = /reconnect in (\d+)\s*ms/.exec(reason);
  return found ? Number(found[1]) : null;
}

/** Whether a close says not to come back. */
export function isFinalClose(code, reason) {
  return FINAL_CODES.has(code) || (code === 1008 && reason === "superseded");
}

/** The wait before retry number `retry` (0 for the first), with jitter from `unit` in [0, 1). */
export function backoffDelay(backoff, retry, unit) {
  const base = Math.min(backoff.maxMs, backoff.initialMs * Math.pow(backoff.multiplier, retry));
  const jitter = Math.min(Math.max(backoff.jitter, 0), 1);
  return Math.max(0, Math.round(base * (1 + jitter * (2 * unit - 1))));
}

function randomUnit() {
  const c = globalThis.crypto;
  if (c && c.getRandomValues) return c.getRandomValues(new Uint32Array(1))[0] / 2 ** 32;
  return Math.random();
}

export class WsguardClient {
  constructor(url, options = {}) {
    this.url = String(url);
    this.options = {
      maxAttempts: 0,
      maxUnacknowledged: 1000,
      ackEvery: 32,
      ackIntervalMs: 50,
      connectTimeoutMs: 10_000,
      closeTimeoutMs: 2_000,
      resendUnconfirmed: false,
      plainFallback: false,
      storageKey: null,
      ...options,
      backoff: { initialMs: 250, maxMs: 10_000, multiplier: 2, jitter: 0.5, ...options.backoff },
    };
    this._WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    this._storage = this.options.storage ?? safeSessionStorage();
    this._listeners = new Map();
    this._inbox = new Inbox();
    this._outbox = new Outbox();
    this._plainQueue = [];
    this._waiters = [];
    this._token = null;
    this._state = "connecting";
    this._ws = null;
    this._phase = null; // "handshake" | "open" on the current socket
    this._first = null; // the first frame sent on the current socket
    this._failed = 0;
    this._plain = false;
    this._probePlain = false;
    this._everOpened = false;
    this._stopped = false;
    this._timers = new Set();
    this._ackTimer = null;
    this._retryTimer = null;
    this._replayTimer = null;
    this._closing = null;
    this._drained = null;
    this._held = null;
    this._replaying = false;
    this.restored = false;
    this.counters = {
      sessions: 0,
      resumed: 0,
      refused: 0,
      refusedBy: { unknown: 0, expired: 0, gap: 0, unavailable: 0 },
      replayed: 0,
      resent: 0,
      duplicates: 0,
      lost: 0,
      reconnects: 0,
    };
    this._restore();
    this._onPageHide = () => this.save();
    this._onOnline = () => {
      if (this._state === "waiting") this._connectNow();
    };
    globalThis.addEventListener?.("pagehide", this._onPageHide);
    globalThis.addEventListener?.("online", this._onOnline);
    this._connect();
  }

  get state() {
    return this._state;
  }

  get session() {
    return this._token;
  }

  get last() {
    return this._inbox.last;
  }

  get unacknowledged() {
    return this._plain ? this._plainQueue.length : this._outbox.size;
  }

  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  send(value) {
    if (this._stopped || this._closing) throw new Error("wsguard: the client is closed");
    if (this.unacknowledged + (this._held?.length ?? 0) >= this.options.maxUnacknowledged) {
      return false;
    }
    const payload = encodePayload(value);
    if (this._plain) {
      if (this._phase === "open" && this._ws.readyState === 1) {
        this._ws.send(payload.json ?? payload.bytes);
      } else {
        this._plainQueue.push(payload);
      }
      return true;
    }
    const entry = this._outbox.push(payload);
    if (this._phase === "open") this._transmit(msgFrame(entry.id, payload));
    return true;
  }

  writable() {
    if (this._stopped) return Promise.reject(new Error("wsguard: the client is closed"));
    if (this.unacknowledged < this.options.maxUnacknowledged) return Promise.resolve();
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  async close() {
    if (this._stopped) return { unconfirmed: [] };
    if (!this._closing) {
      this._closing = (async () => {
        if (this._phase === "open" && this._outbox.size > 0) {
          await new Promise((resolve) => {
            const done = () => resolve();
            this._drained = done;
            this._later(done, this.options.closeTimeoutMs);
          });
        }
        const ws = this._ws;
        if (ws && this._phase === "open" && ws.readyState === 1 && !this._plain) {
          ws.send(ackFrame(this._inbox.ack()));
        }
        this._forget();
        return this._stop({ reason: "closed", code: 1000 }, ws);
      })();
    }
    return this._closing;
  }

  reconnect() {
    if (this._stopped) return;
    if (this._state === "waiting") return this._connectNow();
    const ws = this._ws;
    if (ws) this._lost(ws, { code: null, reason: "reconnect() called" });
    if (this._state === "waiting") this._connectNow();
  }

  // ---- connecting -------------------------------------------------------------------------

  _connect() {
    if (this._stopped) return;
    this._setState("connecting");
    let ws;
    try {
      ws = this._probePlain ? new this._WebSocket(this.url) : new this._WebSocket(this.url, [SUBPROTOCOL]);
    } catch (error) {
      return this._stop({ reason: "protocol", message: String(error?.message ?? error) });
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._phase = "handshake";
    this._first = null;
    const timer = this._later(
      () => this._lost(ws, { code: 1006, reason: "connection attempt timed out" }),
      this.options.connectTimeoutMs,
    );
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._everOpened = true;
      if (ws.protocol !== SUBPROTOCOL) {
        this._clear(timer);
        if (this.options.plainFallback) return this._openPlain(ws);
        return this._stop({ reason: "unsupported", message: "the server does not speak wsguard.v1" }, ws);
      }
      this._first = this._token ? { type: "resume", session: this._token, last: this._inbox.last } : { type: "hello" };
      ws.send(JSON.stringify(this._first));
    };
    ws.onmessage = (event) => {
      if (ws !== this._ws) return;
      if (this._phase === "handshake") {
        this._clear(timer);
        return this._onSessionFrame(ws, event.data);
      }
      if (this._phase !== "open") return;
      if (this._plain) return this._deliverPlain(event.data);
      this._onFrame(ws, event.data);
    };
    ws.onclose = (event) => {
      this._clear(timer);
      if (ws === this._ws) this._lost(ws, event);
    };
    ws.onerror = () => {}; // a close event follows
  }

  _connectNow() {
    this._clear(this._retryTimer);
    this._retryTimer = null;
    this._connect();
  }

  _onSessionFrame(ws, data) {
    let frame = null;
    if (typeof data === "string") {
      try {
        frame = JSON.parse(data);
      } catch {}
    }
    if (!frame || frame.type !== "session") {
      return this._stop({ reason: "protocol", message: `expected the session frame, got ${String(data).slice(0, 200)}` }, ws);
    }
    if (!frame.session) {
      // `unavailable`: the server closes with 1013; the next attempt sends the same first frame.
      this.counters.refused++;
      this.counters.refusedBy.unavailable++;
      this._phase = "unavailable";
      return;
    }
    const resuming = this._first?.type === "resume";
    this._token = frame.session;
    this._failed = 0;
    if (frame.resumed) {
      this._inbox.ack(); // a resume acknowledges up to its `last`
      this._outbox.acknowledge(frame.last);
      this.counters.resumed++;
      this.counters.resent += this._outbox.size;
      this._replaying = true;
      this._armReplayQuiet();
      this._emit("session", { status: "resumed", resumed: true, session: frame.session, last: frame.last, reason: null, lost: null, unconfirmed: [] });
      return this._opened(ws);
    }
    this.counters.sessions++;
    this._inbox.restart();
    let kept = [];
    let unconfirmed = [];
    let reason = null;
    let lost = null;
    if (resuming) {
      reason = frame.reason ?? "unknown";
      lost = typeof frame.lost === "number" ? frame.lost : null;
      this.counters.refused++;
      if (reason in this.counters.refusedBy) this.counters.refusedBy[reason]++;
      if (reason === "gap") {
        this._outbox.acknowledge(frame.last);
        kept = this._outbox.take();
        this.counters.lost += lost ?? 0;
      } else if (this.options.resendUnconfirmed) {
        kept = this._outbox.take();
      } else {
        unconfirmed = this._outbox.take().map((e) => e.payload.value);
      }
    } else {
      // Never sent in a session: numbered again from 1 after what the listener sends.
      kept = this._outbox.take();
    }
    // Messages sent from the listener are numbered first; the kept ones follow, in order.
    this._held = kept;
    try {
      this._emit("session", {
        status: resuming ? "refused" : "opened",
        resumed: false,
        session: frame.session,
        last: frame.last,
        reason,
        lost,
        unconfirmed,
      });
    } finally {
      this._held = null;
    }
    for (const entry of kept) this._outbox.push(entry.payload);
    if (resuming) this.counters.resent += kept.length;
    this._opened(ws);
  }

  _opened(ws) {
    if (ws !== this._ws || this._stopped) return;
    this._phase = "open";
    for (const entry of this._outbox.held()) this._transmit(msgFrame(entry.id, entry.payload));
    this._wake(); // the session frame's `last` may have freed room
    this._setState("open");
  }

  _openPlain(ws) {
    this._plain = true;
    this._failed = 0;
    this._phase = "open";
    this.counters.sessions++;
    this._emit("session", { status: "plain", resumed: false, session: null, last: 0, reason: null, lost: null, unconfirmed: [] });
    // Sent before the server was known to be plain: numbered for a session, sent plain now.
    const queued = [...this._outbox.take().map((e) => e.payload), ...this._plainQueue];
    this._plainQueue = [];
    for (const payload of queued) {
      if (ws.readyState === 1) ws.send(payload.json ?? payload.bytes);
    }
    this._wake();
    this._setState("open");
  }

  // ---- an open session --------------------------------------------------------------------

  _onFrame(ws, data) {
    let seq;
    let message;
    if (typeof data === "string") {
      let frame;
      try {
        frame = JSON.parse(data);
      } catch {
        return this._emit("unnumbered", { data, text: data });
      }
      if (frame?.type === "msg" && Number.isSafeInteger(frame.seq)) {
        seq = frame.seq;
        message = { seq, data: frame.data, text: dataToText(frame.data), binary: undefined };
      } else if (frame?.type === "ack" && Number.isSafeInteger(frame.id)) {
        if (this._outbox.acknowledge(frame.id) > 0) this._wake();
        return;
      } else if (frame?.type === "session") {
        return this._lost(ws, { code: null, reason: "a second session frame" });
      } else {
        return this._emit("unnumbered", { data: frame, text: data });
      }
    } else {
      const decoded = decodeBinary(data);
      if (!decoded) return this._lost(ws, { code: null, reason: "a binary frame without its number" });
      seq = decoded.seq;
      message = { seq, data: undefined, text: undefined, binary: decoded.payload };
    }
    const arrival = this._inbox.arrive(seq);
    if (arrival === "seen") {
      this.counters.duplicates++;
      return;
    }
    if (arrival === "skipped") {
      return this._lost(ws, { code: null, reason: `server seq ${seq} skipped a number after ${this._inbox.last}` });
    }
    if (this._replaying) {
      this.counters.replayed++;
      this._armReplayQuiet();
    }
    this._emit("message", message);
    if (this._inbox.unacked >= this.options.ackEvery) {
      this._sendAck();
    } else if (!this._ackTimer) {
      this._ackTimer = this._later(() => this._sendAck(), this.options.ackIntervalMs);
    }
  }

  _deliverPlain(data) {
    if (typeof data === "string") {
      let value = data;
      try {
        value = JSON.parse(data);
      } catch {}
      this._emit("message", { seq: null, data: value, text: data, binary: undefined });
    } else {
      this._emit("message", { seq: null, data: undefined, text: undefined, binary: new Uint8Array(data) });
    }
  }

  _sendAck() {
    this._clear(this._ackTimer);
    this._ackTimer = null;
    if (this._inbox.unacked > 0) this._transmit(ackFrame(this._inbox.ack()));
  }

  _armReplayQuiet() {
    this._clear(this._replayTimer);
    this._replayTimer = this._later(() => {
      this._replaying = false;
    }, REPLAY_QUIET_MS);
  }

  _transmit(frame) {
    const ws = this._ws;
    if (ws && ws.readyState === 1) ws.send(frame);
  }

  /** Room in the unacknowledged buffer: wake whoever waits for it. */
  _wake() {
    if (this._drained && this.unacknowledged === 0) this._drained();
    while (this._waiters.length && this.unacknowledged < this.options.maxUnacknowledged) {
      this._waiters.shift().resolve();
    }
  }

  // ---- losing a connection ----------------------------------------------------------------

  _lost(ws, { code, reason }) {
    if (ws !== this._ws || this._stopped) return;
    const phase = this._phase;
    const opened = this._everOpened;
    this._everOpened = false;
    this._ws = null;
    this._phase = null;
    this._clear(this._ackTimer);
    this._ackTimer = null;
    this._replaying = false;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch {}
    if (this._closing) return this._drained?.();
    if (isFinalClose(code, reason)) {
      return this._stop({ reason: code === 1008 ? "superseded" : "server", code, message: reason });
    }
    const hint = reconnectHint(code, reason);
    if (this.options.plainFallback && !this._plain && this._token === null) {
      // A browser fails the handshake of a server that does not accept wsguard.v1, as if it
      // were down: until a session opens, every other attempt offers no subprotocol.
      this._probePlain = !opened && !this._probePlain;
    }
    if (phase !== "open") {
      this._failed++;
      if (this.options.maxAttempts && this._failed >= this.options.maxAttempts) {
        return this._stop({ reason: "gave_up", code, message: reason });
      }
    }
    const delayMs = hint ?? backoffDelay(this.options.backoff, phase === "open" ? 0 : this._failed, randomUnit());
    this.counters.reconnects++;
    this._setState("waiting", { delayMs, attempt: this._failed + 1, code, reason });
    const offline = globalThis.navigator?.onLine === false;
    // Offline: the `online` event reconnects; the timer is only a safety net.
    this._retryTimer = this._later(() => this._connectNow(), offline ? Math.max(delayMs, this.options.backoff.maxMs) : delayMs);
  }

  _stop(details, ws = this._ws) {
    if (this._stopped) return { unconfirmed: [] };
    this._stopped = true;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {}
    }
    this._ws = null;
    this._phase = null;
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    globalThis.removeEventListener?.("pagehide", this._onPageHide);
    globalThis.removeEventListener?.("online", this._onOnline);
    if (details.reason === "superseded") this._forget();
    const unconfirmed = this._plain
      ? this._plainQueue.map((p) => p.value)
      : this._outbox.take().map((e) => e.payload.value);
    this._plainQueue = [];
    for (const waiter of this._waiters.splice(0)) waiter.reject(new Error("wsguard: the client is closed"));
    const stop = { code: null, message: "", ...details, unconfirmed };
    this._setState("closed", { code: stop.code, reason: stop.message });
    this._emit("stop", stop);
    return { unconfirmed };
  }

  // ---- saving across a reload -------------------------------------------------------------

  _restore() {
    const key = this.options.storageKey;
    if (!key || !this._storage) return;
    let saved = null;
    try {
      saved = JSON.parse(this._storage.getItem(key) ?? "null");
      this._storage.removeItem(key); // used once, so that a duplicated tab cannot reuse ids
    } catch {}
    if (!saved || saved.v !== 1 || saved.url !== this.url || typeof saved.token !== "string") return;
    this._token = saved.token;
    this._inbox.last = this._inbox.acked = saved.last | 0;
    for (const { id, json, b64 } of saved.entries ?? []) {
      const payload = json !== undefined ? { json, value: json } : { bytes: fromBase64(b64), value: fromBase64(b64) };
      this._outbox.nextId = id;
      this._outbox.push(payload);
    }
    this._outbox.nextId = Math.max(this._outbox.nextId, saved.nextId | 0, 1);
    this.restored = true;
  }

  save() {
    const key = this.options.storageKey;
    if (!key || !this._storage || this._stopped || this._plain || !this._token) return;
    const entries = this._outbox.held().map(({ id, payload }) =>
      payload.json !== undefined ? { id, json: payload.json } : { id, b64: toBase64(payload.bytes) },
    );
    const saved = { v: 1, url: this.url, token: this._token, last: this._inbox.last, nextId: this._outbox.nextId, entries };
    try {
      this._storage.setItem(key, JSON.stringify(saved));
    } catch {}
  }

  _forget() {
    const key = this.options.storageKey;
    if (key && this._storage) {
      try {
        this._storage.removeItem(key);
      } catch {}
    }
  }

  // ---- plumbing ---------------------------------------------------------------------------

  _setState(state, details = {}) {
    const previous = this._state;
    if (previous === state && state !== "waiting") return;
    this._state = state;
    this._emit("state", { state, previous, delayMs: null, attempt: null, code: null, reason: null, ...details });
  }

  _emit(type, event) {
    for (const listener of [...(this._listeners.get(type) ?? [])]) {
      try {
        listener.call(this, event);
      } catch (error) {
        // A listener's bug must not break delivery to the others or the client's state.
        (globalThis.reportError ?? console.error)(error);
      }
    }
  }

  _later(fn, ms) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
    return timer;
  }

  _clear(timer) {
    if (timer == null) return;
    clearTimeout(timer);
    this._timers.delete(timer);
  }
}

function ackFrame(seq) {
  return `{"type":"ack","seq":${seq}}`;
}

function safeSessionStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // storage disabled (some privacy settings throw on access)
  }
}

function toBase64(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}
