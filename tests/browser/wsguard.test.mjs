// Unit tests of the chat's wsguard.v1 client (examples/chat/wsguard.js) against a scripted
// socket, on mocked timers: numbering, in-order exactly-once delivery, batched cumulative acks,
// resume and resend, refusals, reconnection rules and the bounded buffer.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Inbox,
  Outbox,
  WsguardClient,
  backoffDelay,
  decodeBinary,
  reconnectHint,
} from "../../examples/chat/wsguard.js";

const TOKEN = "5f0c3e1a9b7d4c2e8a6f1b3d5c7e9a0b";
const OTHER = "0a9e7c5d3b1f6a8e2c4d7b9a1e3c0f5d";

/** A WebSocket whose server side the test plays. */
class FakeSocket {
  static all = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.protocol = "";
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }

  send(frame) {
    assert.equal(this.readyState, 1, "sent on a socket that is not open");
    this.sent.push(frame);
  }

  close(code) {
    this.readyState = 3;
    this.closedWith = code ?? 1005;
  }

  accept(protocol = "wsguard.v1") {
    this.readyState = 1;
    this.protocol = protocol;
    this.onopen?.({});
  }

  receive(frame) {
    this.onmessage?.({ data: typeof frame === "string" || frame instanceof ArrayBuffer ? frame : JSON.stringify(frame) });
  }

  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Text frames sent, parsed; binary ones as arrays of bytes. */
  frames() {
    return this.sent.map((f) => (typeof f === "string" ? JSON.parse(f) : [...f]));
  }

  /** Sent frames after the first (hello or resume), parsed. */
  after() {
    return this.frames().slice(1);
  }
}

function latest() {
  return FakeSocket.all.at(-1);
}

/** A client on the fake socket, its events recorded; no jitter, so delays are exact. */
function client(t, options = {}) {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  FakeSocket.all = [];
  const c = new WsguardClient("ws://test/ws", {
    WebSocket: FakeSocket,
    storage: null,
    ...options,
    backoff: { jitter: 0, ...options.backoff },
  });
  const events = [];
  for (const type of ["session", "message", "unnumbered", "state", "stop"]) {
    c.on(type, (e) => events.push({ type, ...e }));
  }
  const of = (type) => events.filter((e) => e.type === type);
  return { c, events, of };
}

/** Accepts the latest socket and answers its first frame with `session`. */
function attach(session = { session: TOKEN, resumed: false, last: 0 }) {
  const ws = latest();
  ws.accept();
  ws.receive({ type: "session", ...session });
  return ws;
}

test("inbox: the next seq is delivered, a replay of a delivered one is not, a skip is caught", () => {
  const inbox = new Inbox();
  assert.deepEqual([1, 2, 2, 1, 4, 3].map((seq) => inbox.arrive(seq)), ["next", "next", "seen", "seen", "skipped", "next"]);
  assert.equal(inbox.last, 3);
  assert.equal(inbox.unacked, 3);
  assert.equal(inbox.ack(), 3);
  assert.equal(inbox.unacked, 0);
  inbox.restart();
  assert.equal(inbox.arrive(1), "next");
});

test("outbox: numbered from 1, freed by cumulative acks, taken out for a new session", () => {
  const outbox = new Outbox();
  for (const json of ["1", "2", "3", "4"]) outbox.push({ json });
  assert.equal(outbox.acknowledge(2), 2);
  assert.equal(outbox.acknowledge(1), 0, "an old ack changes nothing");
  assert.deepEqual(outbox.held().map((e) => e.id), [3, 4]);
  assert.deepEqual(outbox.take().map((e) => e.payload.json), ["3", "4"]);
  assert.equal(outbox.push({ json: "5" }).id, 1);
  for (let i = 0; i < 200; i++) outbox.push({ json: String(i) });
  outbox.acknowledge(150);
  assert.equal(outbox.size, 51);
  assert.equal(outbox.held()[0].id, 151);
});

test("backoff grows by the multiplier up to the cap, with jitter around it; a 1001 hint is read", () => {
  const b = { initialMs: 100, maxMs: 1000, multiplier: 2, jitter: 0.2 };
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((r) => backoffDelay(b, r, 0.5)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(backoffDelay(b, 0, 0), 80);
  assert.equal(backoffDelay(b, 0, 0.999999), 120);
  assert.equal(reconnectHint(1001, "server going away; reconnect in 1234 ms"), 1234);
  assert.equal(reconnectHint(1006, "reconnect in 1234 ms"), null);
  assert.equal(reconnectHint(1001, "bye"), null);
});

test("hello, then messages numbered from 1 in the protocol's frames, text and binary", (t) => {
  const { c, of } = client(t);
  const ws = latest();
  assert.deepEqual(ws.protocols, ["wsguard.v1"]);
  assert.equal(c.send("queued before the session"), true);
  ws.accept();
  assert.deepEqual(ws.frames(), [{ type: "hello" }], "nothing but hello before the session frame");
  ws.receive({ type: "session", session: TOKEN, resumed: false, last: 0 });
  assert.equal(of("session")[0].status, "opened");
  assert.equal(c.state, "open");
  c.send('{"k": [1, 2]}');
  c.send({ type: "say", text: "hi" });
  c.send(new Uint8Array([7, 8]));
  assert.deepEqual(ws.sent.slice(1, 4), [
    '{"type":"msg","id":1,"data":"queued before the session"}',
    '{"type":"msg","id":2,"data":{"k": [1, 2]}}',
    '{"type":"msg","id":3,"data":{"type":"say","text":"hi"}}',
  ]);
  assert.deepEqual([...ws.sent[4]], [0, 0, 0, 0, 0, 0, 0, 4, 7, 8]);
  assert.equal(c.unacknowledged, 4);
  ws.receive({ type: "ack", id: 3 });
  assert.equal(c.unacknowledged, 1);
});

test("server messages are delivered once, in order, and acknowledged cumulatively in batches", (t) => {
  const { c, of } = client(t, { ackEvery: 3, ackIntervalMs: 50 });
  const ws = attach();
  ws.receive({ type: "msg", seq: 1, data: { text: "a" } });
  ws.receive({ type: "msg", seq: 2, data: "plain text" });
  ws.receive({ type: "msg", seq: 1, data: { text: "a" } });
  ws.receive({ type: "error", error: "handler_error", id: 9 });
  assert.deepEqual(of("message").map((m) => [m.seq, m.text]), [[1, '{"text":"a"}'], [2, "plain text"]]);
  assert.deepEqual(of("message")[0].data, { text: "a" });
  assert.equal(of("unnumbered")[0].data.error, "handler_error");
  assert.equal(c.counters.duplicates, 1);
  assert.deepEqual(ws.after(), [], "no ack before the interval");
  t.mock.timers.tick(50);
  assert.deepEqual(ws.after(), [{ type: "ack", seq: 2 }]);
  for (const seq of [3, 4, 5]) ws.receive({ type: "msg", seq, data: seq });
  assert.deepEqual(ws.after().at(-1), { type: "ack", seq: 5 }, "ackEvery messages acknowledge at once");
  t.mock.timers.tick(100);
  assert.equal(ws.after().length, 2, "nothing new to acknowledge");
  const binary = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 6, 42]).buffer;
  ws.receive(binary);
  assert.deepEqual([...of("message").at(-1).binary], [42]);
  assert.equal(decodeBinary(new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 1]).buffer), null, "numbered 0");
});

test("a skipped seq ends the connection; the client resumes from the last one in order", (t) => {
  const { c, of } = client(t);
  const ws = attach();
  ws.receive({ type: "msg", seq: 1, data: 1 });
  ws.receive({ type: "msg", seq: 3, data: 3 });
  assert.equal(of("message").length, 1);
  assert.equal(c.state, "waiting");
  t.mock.timers.tick(250);
  latest().accept();
  assert.deepEqual(latest().frames(), [{ type: "resume", session: TOKEN, last: 1 }]);
});

test("after a drop: resume with the token and last seq, resend only what the server did not process", (t) => {
  const { c, of } = client(t);
  const ws = attach();
  ws.receive({ type: "msg", seq: 1, data: "one" });
  ws.receive({ type: "msg", seq: 2, data: "two" });
  for (const text of ["a", "b", "c"]) c.send(text);
  ws.receive({ type: "ack", id: 1 });
  ws.drop(1006);
  const waiting = of("state").at(-1);
  assert.equal(waiting.state, "waiting");
  assert.equal(waiting.delayMs, 250);
  assert.equal(c.send("d"), true, "sending while away is held");
  t.mock.timers.tick(249);
  assert.equal(FakeSocket.all.length, 1);
  t.mock.timers.tick(1);
  const again = latest();
  again.accept();
  assert.deepEqual(again.frames(), [{ type: "resume", session: TOKEN, last: 2 }]);
  again.receive({ type: "session", session: TOKEN, resumed: true, last: 2 });
  assert.deepEqual(again.after(), [
    { type: "msg", id: 3, data: "c" },
    { type: "msg", id: 4, data: "d" },
  ]);
  again.receive({ type: "msg", seq: 2, data: "two" });
  again.receive({ type: "msg", seq: 3, data: "three" });
  assert.deepEqual(of("message").map((m) => m.data), ["one", "two", "three"]);
  assert.equal(of("session").at(-1).status, "resumed");
  assert.equal(c.counters.resumed, 1);
  assert.equal(c.counters.resent, 2);
  assert.equal(c.counters.replayed, 1);
  t.mock.timers.tick(50);
  assert.deepEqual(again.after().at(-1), { type: "ack", seq: 3 }, "the resume acknowledged up to 2");
});

test("a resume refused with gap: lost is told, messages sent from the listener go first", (t) => {
  const { c, of } = client(t);
  const ws = attach();
  ws.receive({ type: "msg", seq: 1, data: "one" });
  for (const text of ["a", "b", "c"]) c.send(text);
  ws.drop();
  c.on("session", (e) => {
    if (!e.resumed) c.send({ type: "join" });
  });
  t.mock.timers.tick(250);
  const again = latest();
  again.accept();
  again.receive({ type: "session", session: OTHER, resumed: false, last: 1, reason: "gap", lost: 4 });
  const refused = of("session").at(-1);
  assert.deepEqual([refused.status, refused.reason, refused.lost], ["refused", "gap", 4]);
  assert.deepEqual(again.after(), [
    { type: "msg", id: 1, data: { type: "join" } },
    { type: "msg", id: 2, data: "b" },
    { type: "msg", id: 3, data: "c" },
  ]);
  assert.equal(c.session, OTHER);
  assert.equal(c.counters.lost, 4);
  assert.equal(c.counters.refusedBy.gap, 1);
  again.receive({ type: "msg", seq: 1, data: "new session" });
  assert.equal(of("message").at(-1).data, "new session", "the new session starts at seq 1");
});

test("a resume refused as unknown hands back what may not have been processed, unless told to resend", (t) => {
  for (const resendUnconfirmed of [false, true]) {
    const { c, of } = client(t, { resendUnconfirmed });
    const ws = attach();
    c.send("x");
    ws.drop();
    t.mock.timers.tick(250);
    const again = latest();
    again.accept();
    again.receive({ type: "session", session: OTHER, resumed: false, last: 0, reason: "unknown" });
    const refused = of("session").at(-1);
    assert.equal(refused.reason, "unknown");
    if (resendUnconfirmed) {
      assert.deepEqual(refused.unconfirmed, []);
      assert.deepEqual(again.after(), [{ type: "msg", id: 1, data: "x" }]);
    } else {
      assert.deepEqual(refused.unconfirmed, ["x"]);
      assert.deepEqual(again.after(), []);
    }
    t.mock.timers.reset();
  }
});

test("unavailable is retried with the same first frame after a growing backoff", (t) => {
  const { c } = client(t);
  const ws = attach();
  ws.receive({ type: "msg", seq: 1, data: 1 });
  ws.drop();
  t.mock.timers.tick(250);
  for (const wait of [500, 1000]) {
    const busy = latest();
    busy.accept();
    busy.receive({ type: "session", resumed: false, last: 0, reason: "unavailable" });
    busy.drop(1013, "no session available, try again later");
    const count = FakeSocket.all.length;
    t.mock.timers.tick(wait - 1);
    assert.equal(FakeSocket.all.length, count, `no attempt before ${wait} ms`);
    t.mock.timers.tick(1);
  }
  latest().accept();
  assert.deepEqual(latest().frames(), [{ type: "resume", session: TOKEN, last: 1 }]);
  assert.equal(c.counters.refusedBy.unavailable, 2);
});

test("a draining server's 1001 hint sets the delay; superseded and 1000 stop; maxAttempts gives up", (t) => {
  {
    const { c, of } = client(t);
    attach().drop(1001, "server going away; reconnect in 1234 ms");
    assert.equal(of("state").at(-1).delayMs, 1234);
    latest().drop(1008, "superseded");
    assert.equal(FakeSocket.all.length, 1, "no attempt yet, and the close was of the old socket");
    t.mock.timers.tick(1234);
    attach({ session: TOKEN, resumed: true, last: 0 }).drop(1008, "superseded");
    assert.equal(c.state, "closed");
    assert.equal(of("stop")[0].reason, "superseded");
    t.mock.timers.tick(60_000);
    assert.equal(FakeSocket.all.length, 2, "never reconnects after superseded");
    assert.throws(() => c.send("late"));
    t.mock.timers.reset();
  }
  {
    const { of } = client(t);
    attach().drop(1000, "");
    assert.equal(of("stop")[0].reason, "server");
    t.mock.timers.reset();
  }
  {
    const { of } = client(t, { maxAttempts: 3 });
    latest().drop();
    t.mock.timers.tick(500);
    latest().drop();
    t.mock.timers.tick(1000);
    assert.equal(FakeSocket.all.length, 3);
    latest().drop();
    assert.equal(of("stop")[0].reason, "gave_up");
  }
});

test("the unacknowledged buffer is bounded: send says no when full, writable waits for an ack", async (t) => {
  const { c } = client(t, { maxUnacknowledged: 2 });
  const ws = attach();
  assert.equal(c.send("a"), true);
  assert.equal(c.send("b"), true);
  assert.equal(c.send("c"), false);
  assert.equal(ws.after().length, 2, "nothing queued when full");
  let room = false;
  const writable = c.writable().then(() => (room = true));
  await Promise.resolve();
  assert.equal(room, false);
  ws.receive({ type: "ack", id: 1 });
  await writable;
  assert.equal(c.send("c"), true);
  assert.deepEqual(ws.after().at(-1), { type: "msg", id: 3, data: "c" });

  // A resume's `last` frees room too.
  ws.drop();
  let resumedRoom = false;
  const waiting = c.writable().then(() => (resumedRoom = true));
  t.mock.timers.tick(250);
  attach({ session: TOKEN, resumed: true, last: 3 });
  await waiting;
  assert.equal(resumedRoom, true);
  assert.equal(c.unacknowledged, 0);
});

test("close waits for acknowledgements, acknowledges what arrived and closes with 1000", async (t) => {
  const { c, of } = client(t);
  const ws = attach();
  ws.receive({ type: "msg", seq: 1, data: 1 });
  c.send("last words");
  const closing = c.close();
  ws.receive({ type: "ack", id: 1 });
  const { unconfirmed } = await closing;
  assert.deepEqual(unconfirmed, []);
  assert.deepEqual(ws.after().at(-1), { type: "ack", seq: 1 });
  assert.equal(ws.closedWith, 1000);
  assert.equal(of("stop")[0].reason, "closed");
});

test("a server without wsguard.v1 stops the client, or is spoken to as plain WebSocket", (t) => {
  {
    const { c, of } = client(t);
    latest().accept("");
    assert.equal(of("stop")[0].reason, "unsupported");
    assert.equal(c.state, "closed");
    t.mock.timers.reset();
  }
  const { c, of } = client(t, { plainFallback: true });
  c.send({ type: "join" });
  const ws = latest();
  ws.accept("");
  assert.equal(of("session")[0].status, "plain");
  assert.deepEqual(ws.frames(), [{ type: "join" }]);
  ws.receive('{"type":"joined"}');
  assert.deepEqual(of("message")[0].data, { type: "joined" });
  ws.drop();
  t.mock.timers.tick(250);
  latest().accept("");
  assert.equal(of("session").length, 2, "every connection is a new start");
  t.mock.timers.reset();

  // A browser fails the handshake instead: the next attempt offers no subprotocol.
  const browserLike = client(t, { plainFallback: true });
  latest().drop();
  t.mock.timers.tick(500);
  assert.equal(latest().protocols, undefined);
  latest().accept("");
  assert.equal(browserLike.of("session")[0].status, "plain");
  t.mock.timers.reset();
  // While no session ever opened and attempts fail, offers alternate.
  const down = client(t, { plainFallback: true });
  const offers = [];
  for (const wait of [500, 1000, 2000]) {
    offers.push(latest().protocols);
    latest().drop();
    t.mock.timers.tick(wait);
  }
  assert.deepEqual(offers, [["wsguard.v1"], undefined, ["wsguard.v1"]]);
  assert.equal(down.c.state, "connecting");
});

test("the session is saved for a reload and taken back once by a client of the same URL", (t) => {
  const store = new Map();
  const storage = {
    getItem: (k) => store.get(k) ?? null,
    setItem: (k, v) => store.set(k, v),
    removeItem: (k) => store.delete(k),
  };
  const { c } = client(t, { storageKey: "chat" });
  c.options.storage = storage;
  c._storage = storage;
  const ws = attach();
  ws.receive({ type: "msg", seq: 1, data: 1 });
  ws.receive({ type: "msg", seq: 2, data: 2 });
  c.send("unacknowledged");
  c.save();
  const next = new WsguardClient("ws://test/ws", { WebSocket: FakeSocket, storage, storageKey: "chat" });
  assert.equal(next.restored, true);
  assert.equal(store.size, 0, "used once");
  const again = latest();
  again.accept();
  assert.deepEqual(again.frames(), [{ type: "resume", session: TOKEN, last: 2 }]);
  again.receive({ type: "session", session: TOKEN, resumed: true, last: 0 });
  assert.deepEqual(again.after(), [{ type: "msg", id: 1, data: "unacknowledged" }]);
  next.send("new");
  assert.deepEqual(again.after().at(-1), { type: "msg", id: 2, data: "new" });
  const elsewhere = new WsguardClient("ws://test/ws?client=other", { WebSocket: FakeSocket, storage, storageKey: "chat" });
  assert.equal(elsewhere.restored, false);
});
