// The dashboard in a real browser: headless Chromium driven by playwright-core.
// Usage: node .ci/dashboard-check.mjs <delivery-app> <demo log> <output folder>
// The demo (`delivery-app demo --dashboard`) is already running and writes <demo log>.
// Checks that the page shows the split's children in the lineage and data in the
// heatmap while the demo runs, and, once the run is over, that its top-10 table equals
// `delivery-app stats --json`; saves a screenshot in the output folder.
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [exe, demoLog, out] = process.argv.slice(2);
const fail = (msg) => { console.error(`dashboard-check: FAIL: ${msg}`); process.exit(1); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitForLog(pattern, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const match = readFileSync(demoLog, "utf8").match(pattern);
    if (match) return match;
    if (Date.now() > deadline) fail(`the demo never printed ${pattern}\n${readFileSync(demoLog, "utf8")}`);
    await sleep(200);
  }
}

const [, url] = await waitForLog(/dashboard at (http:\/\/\S+\/)/, 120);
const [, kinesis, dynamodb] = await waitForLog(/local AWS started in-process: Kinesis (\S+) DynamoDB (\S+)/, 10);
const profile = mkdtempSync(join(tmpdir(), "dashboard-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"],
});
try {
  const page = context.pages()[0] || await context.newPage();
  await page.goto(url);
  // While the demo runs: a split's two children in the lineage, pickups in the heatmap.
  await page.waitForFunction(() => {
    const children = [...document.querySelectorAll("#lineage .shard")]
      .filter((s) => s.dataset.parents && s.dataset.parents.split(" ").length === 1);
    return children.length >= 2 && Number(document.getElementById("heatmap").dataset.cells) > 0;
  }, null, { timeout: 180_000, polling: 250 });
  console.log("dashboard-check: lineage shows the split's children; the heatmap has data");
  await waitForLog(/the run is over/, 300);
  const stats = JSON.parse(execFileSync(exe, ["stats", "--json",
    "--kinesis-endpoint", kinesis, "--dynamodb-endpoint", dynamodb], { encoding: "utf8" }));
  const expected = stats.summary.top_regions.map((r) => [r.region.x, r.region.y, r.orders]);
  if (expected.length === 0) fail("stats --json has no top regions");
  const shown = async () => page.$$eval("#top10 tbody tr", (rows) =>
    rows.map((r) => [Number(r.dataset.x), Number(r.dataset.y), Number(r.dataset.orders)]));
  // The page reads the state every second: give it a few to catch up with the end.
  let rows = [];
  for (let i = 0; i < 40; i++) {
    rows = await shown();
    if (JSON.stringify(rows) === JSON.stringify(expected)) break;
    await sleep(250);
  }
  if (JSON.stringify(rows) !== JSON.stringify(expected)) {
    fail(`top 10 on the page ${JSON.stringify(rows)} != stats --json ${JSON.stringify(expected)}`);
  }
  console.log(`dashboard-check: the top-10 table equals stats --json (${expected.length} regions)`);
  const shot = join(out, "dashboard.png");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`dashboard-check: PASS; screenshot ${shot}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
