// Browser test of the chat example: two pages in headless Chromium join a room, one sends, the
// other shows the message; "Resend last" raises the duplicates figure on the live panel. A page
// whose connection the server cuts resumes its wsguard.v1 session by itself and shows what was
// said while it was away, once each and in order. Two chat nodes over one Redis (`--redis`, with a
// redis-server the test starts) share their rooms: pages on different nodes talk to each other.
//
// Run by scripts/test.sh with CHAT_BIN pointing at the built example and CHROMIUM at the browser.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import net from "node:net";
import path from "node:path";
import { chromium } from "playwright-core";

const CHAT_BIN = process.env.CHAT_BIN;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
let server;
let browser;
let base;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitHealthy(url, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`chat server not healthy at ${url} within ${ms} ms`);
}

before(async () => {
  assert.ok(CHAT_BIN, "set CHAT_BIN to the chat example binary (scripts/test.sh does)");
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(CHAT_BIN, ["--addr", `127.0.0.1:${port}`], { stdio: ["ignore", "inherit", "inherit"] });
  await waitHealthy(`${base}/health`, 30_000);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

// Processes a test started, killed after the suite (nodes before their Redis).
const started = [];

after(async () => {
  await browser?.close();
  server?.kill();
  for (const child of started.reverse()) child.kill();
});

// Uncaught errors of every page, checked by the tests that care.
const pageErrors = [];

async function join(name, { room = "browser-test", query = "", at = base } = {}) {
  const page = await browser.newPage();
  page.on("pageerror", (error) => pageErrors.push(`${name}: ${error.message}`));
  await page.goto(`${at}/${query}`);
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#join button[type=submit]");
  await page.waitForSelector("#status[data-state=connected]", { timeout: 10_000 });
  return page;
}

test("a message sent on one page shows on the other; resend last is dropped as a duplicate", async () => {
  const alice = await join("alice");
  const bob = await join("bob");

  await alice.fill("#text", "hello from alice");
  await alice.click("#send");
  await bob.waitForSelector("#messages li:has-text('hello from alice')", { timeout: 10_000 });
  const shown = await bob.textContent("#messages");
  assert.match(shown, /alice\s*hello from alice/);

  const figure = async () => Number(await alice.textContent("#duplicates"));
  await alice.waitForFunction(() => document.querySelector("#duplicates").textContent !== "-");
  const before = await figure();
  await alice.click("#resend");
  await alice.waitForFunction(
    (n) => Number(document.querySelector("#duplicates").textContent) > n,
    before,
    { timeout: 10_000 },
  );
  assert.equal(await figure(), before + 1);

  // The duplicate never reached the room: bob saw the message once.
  const count = await bob.locator("#messages li:has-text('hello from alice')").count();
  assert.equal(count, 1);
});

test("Flood sends 200 at once: the rate limit passes the burst, refuses the rest on one line, and the panel counts them", async () => {
  const erin = await join("erin", { room: "flood-test" });
  const frank = await join("frank", { room: "flood-test" });
  await erin.waitForFunction(() => document.querySelector("#rate-limited").textContent !== "-");
  const before = Number(await erin.textContent("#rate-limited"));

  await erin.click("#flood");
  // Every one of the 200 comes back: in the room, or counted on the page's one refusal line.
  const settled = await erin.waitForFunction(() => {
    const lines = [...document.querySelectorAll("#messages li")].map((li) => li.textContent);
    const passed = lines.filter((l) => /flood \d+\/200$/.test(l)).length;
    const refused = Number(document.querySelector("#limited-line")?.textContent.match(/^\d+/)?.[0] ?? 0);
    return passed + refused === 200 ? { passed, refused } : null;
  }, null, { timeout: 20_000 });
  const { passed, refused } = await settled.jsonValue();
  // A burst of 50 less the join, and what refilled (10 a second) while the flood went through.
  assert.ok(passed >= 49 && passed < 100, `${passed} passed`);
  const refusalLines = await erin.locator("#messages li.error:has-text('refused by the rate limit')").count();
  assert.equal(refusalLines, 1);

  // The panel counts every refusal.
  await erin.waitForFunction(
    (n) => Number(document.querySelector("#rate-limited").textContent) === n,
    before + refused,
    { timeout: 10_000 },
  );

  // Frank has his own limit: he is heard at once, and saw what passed, once each.
  await say(frank, "frank after the flood");
  await erin.waitForSelector("#messages li:has-text('frank after the flood')", { timeout: 10_000 });
  const seen = await frank.$$eval("#messages li", (lis) =>
    lis.map((li) => li.textContent).filter((l) => /flood \d+\/200$/.test(l)));
  assert.equal(seen.length, passed);
  assert.equal(new Set(seen).size, passed);
});

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

/** The lines of the page's message list that carry one of `texts`, in the order shown. */
async function linesWith(page, texts) {
  const lines = await page.$$eval("#messages li", (lis) => lis.map((li) => li.textContent));
  return lines.filter((line) => texts.some((t) => line.endsWith(t)));
}

test("a page whose connection drops resumes and shows what was said meanwhile, once each, in order", async () => {
  // Carol's first reconnection waits 1.5 to 4.5 s (`?backoff`, with jitter), long enough for Dave
  // to talk meanwhile.
  const carol = await join("carol", { room: "resume-test", query: "?backoff=3000" });
  const dave = await join("dave", { room: "resume-test" });
  await say(carol, "before the drop");
  await dave.waitForSelector("#messages li:has-text('before the drop')", { timeout: 10_000 });
  await carol.waitForSelector("#messages li:has-text('before the drop')", { timeout: 10_000 });
  await carol.evaluate(() => { window.notReloaded = true; });

  await carol.click("#drop");
  await carol.waitForSelector("#status[data-state=reconnecting]", { timeout: 10_000 });
  const away = ["away 1", "away 2", "away 3"];
  for (const text of away) await say(dave, text);
  await dave.waitForSelector("#messages li:has-text('away 3')", { timeout: 10_000 });
  // The server handled all three while Carol had no connection.
  assert.notEqual(await carol.getAttribute("#status", "data-state"), "connected",
    "carol reconnected before dave finished talking: the test proves nothing");

  await carol.waitForSelector("#status[data-state=connected]", { timeout: 15_000 });
  await carol.waitForSelector("#messages li:has-text('away 3')", { timeout: 10_000 });
  // A fence: anything replayed twice would have arrived before what is said now.
  await say(dave, "after the resume");
  await carol.waitForSelector("#messages li:has-text('after the resume')", { timeout: 10_000 });

  const said = ["before the drop", ...away, "after the resume"];
  assert.deepEqual(await linesWith(carol, said), [
    "carolbefore the drop",
    "daveaway 1",
    "daveaway 2",
    "daveaway 3",
    "daveafter the resume",
  ]);
  assert.equal(await carol.evaluate(() => window.notReloaded), true, "the page was reloaded");
  assert.equal(await carol.locator("#messages li:has-text('could not be resumed')").count(), 0);
  // Joining again after the resume is silent: carol's page, in the room since before Dave,
  // shows her joining once, and Dave's none of it.
  assert.equal(await carol.locator("#messages li:has-text('carol joined')").count(), 1);
  assert.equal(await dave.locator("#messages li:has-text('carol joined')").count(), 0);

  await carol.waitForFunction(() => Number(document.querySelector("#resumed").textContent) >= 1,
    null, { timeout: 10_000 });
  assert.match(await carol.textContent("#page-counters"), /^1 \/ \d+ \/ 0$/);
  assert.deepEqual(pageErrors, []);
  await carol.close();
  await dave.close();
});

/** `redis-server` from PATH (scripts/test.sh installs it). */
function redisServerPath() {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    const candidate = path.join(dir, "redis-server");
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {}
  }
  throw new Error("redis-server not found on PATH (scripts/test.sh installs it)");
}

/** Resolves once a Redis on `port` answers PING. */
async function waitRedis(port, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const answered = await new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("error", () => resolve(false));
      socket.once("data", (data) => {
        socket.destroy();
        resolve(data.toString().startsWith("+PONG"));
      });
      socket.once("connect", () => socket.write("PING\r\n"));
    });
    if (answered) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`redis-server not answering on port ${port} within ${ms} ms`);
}

/** A chat node on a free port with `args`; its base URL once healthy. */
async function startNode(args) {
  const port = await freePort();
  const child = spawn(CHAT_BIN, ["--addr", `127.0.0.1:${port}`, ...args], { stdio: ["ignore", "inherit", "inherit"] });
  started.push(child);
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(`${url}/health`, 30_000);
  return url;
}

test("a chat node refuses to start when its --redis does not answer", async () => {
  const closed = await freePort();
  const child = spawn(CHAT_BIN, ["--addr", "127.0.0.1:0", "--redis", `redis://127.0.0.1:${closed}`], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  started.push(child);
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const code = await new Promise((resolve) => child.once("exit", resolve));
  assert.equal(code, 1, stderr);
  assert.match(stderr, /cannot use Redis at redis:\/\/127\.0\.0\.1:\d+ \(--redis\)/);
});

test("pages on two chat nodes over one Redis talk to each other, each line once", async () => {
  const redisPort = await freePort();
  const redis = spawn(redisServerPath(),
    ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: ["ignore", "ignore", "inherit"] });
  started.push(redis);
  await waitRedis(redisPort, 10_000);
  const url = `redis://127.0.0.1:${redisPort}`;
  const [nodeA, nodeB] = await Promise.all([startNode(["--redis", url]), startNode(["--redis", url])]);

  const erin = await join("erin", { room: "nodes-test", at: nodeA });
  const frank = await join("frank", { room: "nodes-test", at: nodeB });
  // Frank's join, on node B, shows on Erin's page, served by node A.
  await erin.waitForSelector("#messages li:has-text('frank joined nodes-test')", { timeout: 10_000 });

  await say(erin, "hello from node A");
  await frank.waitForSelector("#messages li:has-text('hello from node A')", { timeout: 10_000 });
  await say(frank, "hello back from node B");
  await erin.waitForSelector("#messages li:has-text('hello back from node B')", { timeout: 10_000 });
  // A fence said after both: anything delivered twice would have arrived before it.
  await say(erin, "fence");
  for (const page of [erin, frank]) {
    await page.waitForSelector("#messages li:has-text('fence')", { timeout: 10_000 });
    assert.deepEqual(await linesWith(page, ["hello from node A", "hello back from node B", "fence"]), [
      "erinhello from node A",
      "frankhello back from node B",
      "erinfence",
    ]);
  }

  // The panels name two different nodes, both with their rooms in Redis.
  const node = (page) => page.waitForFunction(
    () => document.querySelector("#node").textContent.includes("rooms: redis"), null, { timeout: 10_000 },
  ).then(() => page.textContent("#node"));
  const [onA, onB] = await Promise.all([node(erin), node(frank)]);
  assert.notEqual(onA, onB);
  assert.deepEqual(pageErrors, []);
  await erin.close();
  await frank.close();
});
