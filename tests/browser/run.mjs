// Drives the dashboard in Debian's headless Chromium with playwright-core (no browser download).
// Run by tests/integration/test_dashboard_browser.py:
//   node run.mjs '<json config>'
// config: { url, app, secret, node, clientId, victimId, subTopic, plugin, wsTopic, wsPayload,
//           fromBrowserTopic, retainedTopic, retainedPayload, uiTopic, uiPublishTopic, uiPayload,
//           screenshots, chromium, overviewSeconds, alarmId, givenSecret }
// Prints one JSON object per line on stdout: {"event": ...}. The Python side reacts to
// {"event": "ws-subscribed"} by publishing `wsPayload` to `wsTopic`, and answers the events sent
// by emitAndWait (alarms raised/cleared, apps checked over REST) on stdin. Exit code 0 = every check
// passed; otherwise the last line is {"event": "failed", "error": ...}.
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const TIMEOUT = 10000;
const emit = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));
const problems = [];

const browser = await chromium.launch({
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function shot(page, name) {
  await page.screenshot({ path: `${cfg.screenshots}/${name}.png`, fullPage: false });
  emit('screenshot', { name });
}

async function open(page, name) {
  await page.click(`nav a[data-page="${name}"]`);
  await page.waitForSelector(`#page [data-page="${name}"]`, { timeout: TIMEOUT });
  await page.waitForSelector('#status:text-matches("updated|error|ready")', { timeout: TIMEOUT });
}

async function expectText(page, selector, text) {
  await page.locator(selector).filter({ hasText: text }).first()
    .waitFor({ state: 'visible', timeout: TIMEOUT });
}

async function step(name, fn) {
  await fn();
  emit('ok', { step: name });
}

// Events the Python side must act on (and check) before the browser goes on: it answers each
// with a line {"ack": <event>} on our stdin.
const acks = [];
let waiting = null;
let stdinBuffer = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  stdinBuffer += chunk;
  let nl;
  while ((nl = stdinBuffer.indexOf('\n')) >= 0) {
    acks.push(JSON.parse(stdinBuffer.slice(0, nl)).ack);
    stdinBuffer = stdinBuffer.slice(nl + 1);
    if (waiting) waiting();
  }
});

async function emitAndWait(event, extra = {}) {
  emit(event, extra);
  const deadline = Date.now() + TIMEOUT;
  while (!acks.length) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no ack for ${event}`);
    await new Promise((resolve) => { waiting = resolve; setTimeout(resolve, left); });
    waiting = null;
  }
  const got = acks.shift();
  if (got !== event) throw new Error(`ack for ${got}, expected ${event}`);
}

let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => { if (msg.type() === 'error') problems.push(`console: ${msg.text()}`); });
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (!['127.0.0.1', 'localhost'].includes(url.hostname)) problems.push(`external request ${req.url()}`);
  });
  page.on('dialog', (dialog) => dialog.accept());

  await step('login-page', async () => {
    await page.goto(cfg.url);
    await expectText(page, '#login-node', `Node ${cfg.node}`);
    await shot(page, 'login');
  });

  await step('wrong-secret', async () => {
    await page.fill('#login-app', cfg.app);
    await page.fill('#login-secret', 'not-the-secret');
    await page.click('#login-submit');
    await expectText(page, '#login-error', 'Wrong app id or secret');
    problems.length = 0; // the refused sign-in logs a 401 in the console: expected
  });

  await step('sign-in', async () => {
    await page.fill('#login-secret', cfg.secret);
    await page.click('#login-submit');
    await page.waitForSelector('#shell:not([hidden])');
    await expectText(page, '#who', cfg.app);
  });

  await step('helpers', async () => {
    // The dashboard's own text helpers, in the page (the module the pages import).
    const got = await page.evaluate(async () => {
      const ui = await import('./ui.js');
      return [ui.uptime('1 minutes, 1 seconds'), ui.uptime('1 days,2 hours, 1 minutes, 5 seconds'),
        ui.username(undefined), ui.username('undefined'), ui.username('bob'),
        ui.counts({ kicked: 1, normal: 3 }), ui.counts({}),
        // three nodes, each with the same 54 replicated retained messages: 54, not 162
        ui.maxOf([{ 'retained/count': 54 }, { 'retained/count': 54 }, { 'retained/count': 53 }],
          'retained/count')];
    });
    const want = ['1 minute, 1 second', '1 day, 2 hours, 1 minute, 5 seconds', 'anonymous',
      'anonymous', 'bob', 'normal 3, kicked 1', '', 54];
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      throw new Error(`ui helpers: ${JSON.stringify(got)} != ${JSON.stringify(want)}`);
    }
  });

  await step('overview', async () => {
    await page.waitForSelector('#page [data-page="overview"]');
    await expectText(page, '#page table td', cfg.node);
    await expectText(page, '.tile', 'connections');
    // The charts poll every 2 s: wait until both have drawn a line (two samples for the rate).
    await page.waitForFunction(() => [...document.querySelectorAll('canvas')].every((c) => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 150 && d[i] < 80) return true;
      return false; // no blue-ish pixel of a series line yet
    }), null, { timeout: 15000, polling: 500 });
  });

  await step('clients', async () => {
    await open(page, 'clients');
    await expectText(page, '#page td', cfg.clientId);
    await expectText(page, '#page td', cfg.victimId);
    await page.fill('[data-testid="search"]', cfg.clientId);
    await page.waitForFunction((victim) => !document.querySelector(
      `#page button[data-action="kick"][data-client="${victim}"]`), cfg.victimId);
    await page.click(`button[data-action="details"][data-client="${cfg.clientId}"]`);
    await expectText(page, '#page h3', `Client ${cfg.clientId}`);
    await expectText(page, '#page td', cfg.subTopic);
    // sensor-1 connected without a username: shown as "anonymous", not "undefined"
    await expectText(page, '#page td', 'anonymous');
    const undef = await page.evaluate(() => [...document.querySelectorAll('#page tr')]
      .filter((tr) => [...tr.children].some((td) => td.textContent === 'undefined'))
      .map((tr) => tr.textContent));
    if (undef.length) throw new Error(`table cells say "undefined": ${undef.join(' | ')}`);
    await shot(page, 'clients');
  });

  await step('client-actions', async () => {
    // EMQX's dashboard: subscribe the client to a topic and publish as the client, from the UI.
    await page.fill('[data-testid="client-sub-topic"]', cfg.uiTopic);
    await page.selectOption('[data-testid="client-sub-qos"]', '1');
    await page.click('button[data-action="client-subscribe"]');
    await expectText(page, '#status', `subscribed ${cfg.clientId} to ${cfg.uiTopic}`);
    await page.waitForSelector(`button[data-action="unsubscribe"][data-topic="${cfg.uiTopic}"]`);
    await page.fill('[data-testid="client-pub-topic"]', cfg.uiPublishTopic);
    await page.fill('[data-testid="client-pub-payload"]', cfg.uiPayload);
    await page.click('button[data-action="client-publish"]');
    await expectText(page, '#status', `published to ${cfg.uiPublishTopic}`);
    emit('client-published', { topic: cfg.uiPublishTopic });
    await shot(page, 'client-actions');
    await page.click(`button[data-action="unsubscribe"][data-topic="${cfg.uiTopic}"]`);
    await page.waitForSelector(`button[data-action="unsubscribe"][data-topic="${cfg.uiTopic}"]`,
      { state: 'detached' });
    await page.fill('[data-testid="search"]', '');
  });

  await step('kick', async () => {
    const kick = `button[data-action="kick"][data-client="${cfg.victimId}"]`;
    await page.click(kick);
    await expectText(page, '#status', `kicked ${cfg.victimId}`);
    await page.waitForSelector(kick, { state: 'detached' });
    emit('kicked', { client: cfg.victimId });
  });

  await step('sessions', async () => {
    await open(page, 'sessions');
    await expectText(page, '#page td', cfg.clientId);
  });

  await step('subscriptions', async () => {
    await open(page, 'subscriptions');
    await expectText(page, '#page td', cfg.subTopic);
  });

  await step('routes', async () => {
    await open(page, 'routes');
    await expectText(page, '#page td', cfg.subTopic);
  });

  await step('retained', async () => {
    await open(page, 'retained');
    await expectText(page, '#page td', cfg.retainedTopic);
    await expectText(page, '#page td', cfg.retainedPayload);
    // the node publishes retained $SYS topics: hidden until asked for
    if (await page.locator('#page td', { hasText: '$SYS/' }).count()) {
      throw new Error('$SYS topics shown by default');
    }
    await page.check('[data-testid="show-sys"]');
    await expectText(page, '#page td', '$SYS/broker');
    await page.uncheck('[data-testid="show-sys"]');
    await page.waitForFunction(() => ![...document.querySelectorAll('#page td')]
      .some((td) => td.textContent.startsWith('$SYS/')));
    await shot(page, 'retained');
  });

  await step('retained-delete', async () => {
    const del = `button[data-action="delete-retained"][data-topic="${cfg.retainedTopic}"]`;
    await page.click(del);
    await expectText(page, '#status', `deleted the retained message of ${cfg.retainedTopic}`);
    await page.waitForSelector(del, { state: 'detached' });
    emit('retained-deleted', { topic: cfg.retainedTopic });
  });

  await step('plugins', async () => {
    await open(page, 'plugins');
    await page.click(`button[data-action="load"][data-plugin="${cfg.plugin}"]`);
    await page.waitForSelector(`button[data-action="unload"][data-plugin="${cfg.plugin}"]`);
    await expectText(page, '#page tr', 'active');
    await shot(page, 'plugins');
    emit('plugin-loaded', { plugin: cfg.plugin });
  });

  await step('alarms', async () => {
    await open(page, 'alarms');
    await expectText(page, '#page h3', cfg.node);
    await emitAndWait('alarms-open'); // the node raises cfg.alarmId (a real monitor's check)
    await expectText(page, '[data-testid="alarms-present"] td', cfg.alarmId);
    await emitAndWait('alarm-seen'); // the node clears it: it moves to the history
    await expectText(page, '[data-testid="alarms-history"] td', cfg.alarmId);
    await page.waitForFunction((id) => ![...document.querySelectorAll(
      '[data-testid="alarms-present"] td')].some((td) => td.textContent === id), cfg.alarmId);
    await expectText(page, '[data-testid="history-count"]', '1 alarm');
    const row = await page.evaluate(() => [...document.querySelectorAll(
      '[data-testid="alarms-history"] tbody tr td')].map((td) => td.textContent));
    // id, severity, title, summary, raised at, cleared at (under the node's heading)
    await expectText(page, '#page h3', `Cleared on ${cfg.node}`);
    if (row.length !== 6 || row[0] !== cfg.alarmId || !row[4] || !row[5]) {
      throw new Error(`history row: ${JSON.stringify(row)}`);
    }
    await emitAndWait('alarm-again'); // raised again: present above, the cleared one below
    await expectText(page, '[data-testid="alarms-present"] td', cfg.alarmId);
    await expectText(page, '[data-testid="history-count"]', '1 alarm');
    await shot(page, 'alarms');
  });

  await step('banned', async () => {
    await open(page, 'banned');
    await page.fill('[data-testid="ban-who"]', 'evil-client');
    await page.fill('[data-testid="ban-reason"]', 'testing');
    await page.click('button[data-action="ban"]');
    await page.waitForSelector('button[data-action="unban"][data-who="evil-client"]');
    emit('banned', { who: 'evil-client' });
    await page.click('button[data-action="unban"][data-who="evil-client"]');
    await page.waitForSelector('button[data-action="unban"][data-who="evil-client"]',
      { state: 'detached' });
  });

  await step('apps-create', async () => {
    await open(page, 'apps');
    await expectText(page, '[data-testid="apps"] td', cfg.app);
    // a generated secret, shown once
    await page.fill('[data-testid="app-id"]', 'ci-generated');
    await page.fill('[data-testid="app-name"]', 'CI pipeline');
    await page.fill('[data-testid="app-desc"]', 'deploys the site');
    await page.click('button[data-action="create-app"]');
    await expectText(page, '#status', 'created app ci-generated');
    const generated = await page.textContent('[data-testid="new-secret"][data-app="ci-generated"]');
    if (!generated || generated.length < 20) throw new Error(`generated secret: ${generated}`);
    await emitAndWait('app-created', { appId: 'ci-generated', secret: generated });
    await page.click('button[data-action="dismiss-secret"]');
    await page.waitForSelector('[data-testid="new-secret"]', { state: 'detached' });
    // a given secret and an expiry date
    await page.fill('[data-testid="app-id"]', 'ci-given');
    await page.fill('[data-testid="app-name"]', 'Monitoring');
    await page.fill('[data-testid="app-secret"]', cfg.givenSecret);
    await page.fill('[data-testid="app-expired"]', '2099-01-01T00:00');
    await page.click('button[data-action="create-app"]');
    await expectText(page, '#status', 'created app ci-given');
    const given = await page.textContent('[data-testid="new-secret"][data-app="ci-given"]');
    if (given !== cfg.givenSecret) throw new Error(`given secret shown as ${given}`);
    await emitAndWait('app-created', { appId: 'ci-given', secret: cfg.givenSecret });
    await expectText(page, '[data-testid="apps"] td', 'CI pipeline');
  });

  await step('apps-edit', async () => {
    // edit name and description, and disable: the app is refused
    await page.click('button[data-action="edit-app"][data-app="ci-generated"]');
    await expectText(page, '#page h3', 'Edit app ci-generated');
    await page.fill('[data-testid="edit-name"]', 'CI pipeline (paused)');
    await page.fill('[data-testid="edit-desc"]', 'paused for the migration');
    await page.uncheck('[data-testid="edit-status"]');
    await page.click('button[data-action="save-app"]');
    await expectText(page, '#status', 'saved app ci-generated');
    await emitAndWait('app-disabled', { appId: 'ci-generated' });
    await page.waitForSelector('button[data-action="enable-app"][data-app="ci-generated"]');
    // an expiry in the past: refused as well
    await page.click('button[data-action="edit-app"][data-app="ci-given"]');
    await page.fill('[data-testid="edit-expired"]', '2020-01-01T00:00');
    await page.click('button[data-action="save-app"]');
    await expectText(page, '#status', 'saved app ci-given');
    await emitAndWait('app-expired', { appId: 'ci-given' });
    await expectText(page, '[data-testid="apps"] td', 'expired');
    await shot(page, 'apps');
    // enabled again from the list's button: accepted again
    await page.click('button[data-action="enable-app"][data-app="ci-generated"]');
    await expectText(page, '#status', 'enabled app ci-generated');
    await emitAndWait('app-enabled', { appId: 'ci-generated' });
  });

  await step('apps-delete', async () => {
    await page.click('button[data-action="delete-app"][data-app="ci-generated"]');
    await expectText(page, '#status', 'deleted app ci-generated');
    await page.waitForSelector('button[data-action="delete-app"][data-app="ci-generated"]',
      { state: 'detached' });
    await emitAndWait('app-deleted', { appId: 'ci-generated' });
  });

  await step('listeners', async () => {
    await open(page, 'listeners');
    await expectText(page, '#page td', 'mqtt:ws');
    await expectText(page, '#page td', 'http:management');
    await expectText(page, '#page th', 'closed connections by reason');
    await expectText(page, '#page td', 'kicked 1'); // the client kicked above, not raw JSON
    if (await page.locator('#page td', { hasText: '{' }).count()) {
      throw new Error('a listener cell shows raw JSON');
    }
    await shot(page, 'listeners');
  });

  await step('websocket', async () => {
    await open(page, 'websocket');
    await page.waitForFunction(() => document.querySelector('[data-testid="ws-port"]').value !== '');
    await page.fill('[data-testid="ws-client-id"]', 'browser-ws');
    await page.click('button[data-action="ws-connect"]');
    await expectText(page, '[data-testid="ws-state"]', 'connected');
    await page.fill('[data-testid="ws-sub-topic"]', cfg.wsTopic);
    await page.click('button[data-action="ws-subscribe"]');
    await expectText(page, '[data-testid="ws-log"]', 'suback');
    emit('ws-subscribed', { topic: cfg.wsTopic });
    await expectText(page, '[data-testid="ws-log"] .msg', cfg.wsPayload);
    await page.fill('[data-testid="ws-pub-topic"]', cfg.fromBrowserTopic);
    await page.fill('[data-testid="ws-pub-payload"]', 'hello from chromium');
    await page.click('button[data-action="ws-publish"]');
    await shot(page, 'websocket');
  });

  await step('overview-live', async () => {
    // Back to the overview for the README screenshot: ~20 s of samples under a varying load.
    await open(page, 'overview');
    await page.waitForTimeout(cfg.overviewSeconds * 1000);
    await shot(page, 'overview');
  });

  if (problems.length) throw new Error(problems.join('; '));
  emit('done');
} catch (err) {
  emit('failed', { error: String(err && err.stack ? err.stack : err), problems });
  exitCode = 1;
} finally {
  await browser.close();
  process.stdin.destroy();
}
process.exit(exitCode);
