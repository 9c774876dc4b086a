// Browser test of the chat example: two pages in headless Chromium join a room, one sends, the
// other shows the message; "Resend last" raises the duplicates figure on the live panel.
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

async function join(name) {
  const page = await browser.newPage();
  await page.goto(base);
  await page.fill("#name", name);
  await page.fill("#room", "browser-test");
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
