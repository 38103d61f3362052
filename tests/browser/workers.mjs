// The dashboard of a node of workers (`minibroker start --workers N`) in headless Chromium.
// Run by tests/integration/test_dashboard_workers.py:  node workers.mjs '<json config>'
// config: { url, app, secret, chromium, workers, pages: { <page>: <rows expected> } }
// Signs in, waits until the overview's Workers card lists `workers` rows, then opens each page
// of `pages` until its list shows the rows expected, and prints what the tables show as one
// JSON line {"event": "read", "overview": [table], "<page>": [table]...} (a table: {headers,
// rows}); the Python side checks it against the REST API. Exit code 0 unless a wait failed.
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const TIMEOUT = 20000;
const emit = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));

const browser = await chromium.launch({
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// Every table of the page shown now: its header cells and its body rows' cells, as text.
const tables = (page) => page.evaluate(() => [...document.querySelectorAll('#page table')]
  .map((t) => ({
    headers: [...t.querySelectorAll('thead th')].map((th) => th.textContent),
    rows: [...t.querySelectorAll('tbody tr')].map((tr) => [...tr.querySelectorAll('td')]
      .map((td) => td.textContent)),
  })));

let exitCode = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(TIMEOUT);
  await page.goto(cfg.url);
  await page.fill('#login-app', cfg.app);
  await page.fill('#login-secret', cfg.secret);
  await page.click('#login-submit');
  await page.waitForSelector('#shell:not([hidden])');
  const out = {};
  await page.waitForSelector('#page [data-page="overview"]');
  // the workers find each other in a moment: wait until every one is Running
  await page.waitForFunction((count) => {
    const rows = [...document.querySelectorAll('[data-testid="workers"] tbody tr')];
    return rows.length === count && rows.every((tr) => tr.textContent.includes('Running'));
  }, cfg.workers, { timeout: TIMEOUT, polling: 250 });
  out.overview = await tables(page);
  for (const [name, count] of Object.entries(cfg.pages)) {
    await page.click(`nav a[data-page="${name}"]`);
    await page.waitForSelector(`#page [data-page="${name}"]`);
    await page.waitForFunction((want) => [...document.querySelectorAll('#page table')].some(
      (t) => t.querySelectorAll('tbody tr td:not(.muted)').length > 0
        && t.querySelectorAll('tbody tr').length >= want,
    ), count, { timeout: TIMEOUT, polling: 250 });
    out[name] = await tables(page);
  }
  emit('read', out);
} catch (err) {
  emit('failed', { error: String(err && err.stack ? err.stack : err) });
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
