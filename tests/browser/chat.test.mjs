// Browser test of the chat example: two pages in headless Chromium join a room, one sends, the
// other shows the message; "Resend last" raises the duplicates figure on the live panel. A page
// whose connection the server cuts resumes its wsguard.v1 session by itself and shows what was
// said while it was away, once each and in order.
//
// Run by scripts/test.sh with CHAT_BIN pointing at the built example and CHROMIUM at the browser.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
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

after(async () => {
  await browser?.close();
  server?.kill();
});

// Uncaught errors of every page, checked by the tests that care.
const pageErrors = [];

async function join(name, { room = "browser-test", query = "" } = {}) {
  const page = await browser.newPage();
  page.on("pageerror", (error) => pageErrors.push(`${name}: ${error.message}`));
  await page.goto(`${base}/${query}`);
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
