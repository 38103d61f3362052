// One entry per page: { title, render(ctx) }. ctx: root, every(ms, fn), act(fn, msg), onLeave(fn).
import { ApiError, api, enc, get } from './api.js';
import { alarms } from './alarms.js';
import { apps } from './apps.js';
import { LineChart } from './charts.js';
import { MqttWsClient } from './mqtt.js';
import { badge, card, counts, fmt, h, maxOf, table, time, uptime, username } from './ui.js';
import { workerColumns, workerRows } from './workers.js';

const REFRESH = 5000;
const CHART_REFRESH = 2000;
const PAGE_SIZE = 20;

const sum = (rows, key) => rows.reduce((n, r) => n + (Number(r[key]) || 0), 0);

// -- a searchable, paginated list over a paginated /api/v3 endpoint ---------------------------

function pagedList(ctx, { path, columns, searchKeys, placeholder, extra, keep }) {
  const state = { page: 1, query: '' };
  const search = h('input', { type: 'search', placeholder, 'data-testid': 'search' });
  const info = h('span', { class: 'muted' });
  const prev = h('button', { class: 'secondary small', onclick: () => { state.page--; load(); } },
    'Previous');
  const next = h('button', { class: 'secondary small', onclick: () => { state.page++; load(); } },
    'Next');
  const holder = h('div');
  let timer;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.query = search.value.trim().toLowerCase(); state.page = 1; load(); }, 250);
  });
  ctx.root.append(
    h('div', { class: 'toolbar' }, searchKeys ? search : null, extra || null),
    holder,
    h('div', { class: 'pager' }, prev, info, next),
  );

  async function load() {
    let items, count;
    if (state.query || (keep && !keep.all())) {
      // The API has no search parameter: fetch every row (up to max_row_limit) and filter.
      const all = (await get(path)).items.filter((row) => (!keep || keep.all() || keep.row(row))
        && (!state.query || searchKeys.some((k) => fmt(row[k]).toLowerCase().includes(state.query))));
      count = all.length;
      items = all.slice((state.page - 1) * PAGE_SIZE, state.page * PAGE_SIZE);
    } else {
      const data = await get(`${path}?_page=${state.page}&_limit=${PAGE_SIZE}`);
      items = data.items;
      count = data.meta.count;
    }
    const pages = Math.max(1, Math.ceil(count / PAGE_SIZE));
    if (state.page > pages) { state.page = pages; return load(); }
    holder.replaceChildren(table(workerColumns(columns, items), items));
    info.textContent = `page ${state.page} of ${pages} · ${count} rows`;
    prev.disabled = state.page <= 1;
    next.disabled = state.page >= pages;
  }
  ctx.every(REFRESH, load);
  return load;
}

function kv(object) {
  // EMQX writes an unset optional string as "undefined" (mountpoint...): show that it is unset
  return table([['field', 'k'], ['value', 'v']],
    Object.entries(object).map(([k, v]) => ({ k, v: v === 'undefined' ? 'none' : v })));
}

// -- overview ----------------------------------------------------------------------------------

function overview(ctx) {
  const tiles = h('div', { class: 'tiles' });
  const nodes = h('div');
  // `start --workers N`: one row per worker process (the card shows only when there are any)
  const workers = h('div', { 'data-testid': 'workers' });
  const workersCard = card('Workers', workers);
  workersCard.hidden = true;
  const rateCanvas = h('canvas', { 'data-testid': 'rate-chart' });
  const connCanvas = h('canvas', { 'data-testid': 'conn-chart' });
  const rate = new LineChart(rateCanvas, ['messages received/s', 'messages sent/s']);
  const conns = new LineChart(connCanvas, ['connections', 'subscriptions']);
  ctx.root.append(
    tiles,
    h('div', { class: 'grid' },
      card('Message rate', rate.legend(h), rateCanvas),
      card('Connections', conns.legend(h), connCanvas)),
    card('Nodes', nodes),
    workersCard,
  );
  let last = null;

  ctx.every(CHART_REFRESH, async () => {
    const [brokers, nodeList, stats, metrics] = await Promise.all([
      get('/brokers/'), get('/nodes/'), get('/stats/'), get('/metrics/')]);
    const now = performance.now();
    const received = metrics.reduce((n, m) => n + m.metrics['messages/received'], 0);
    // every node holds a replica of each retained message: count them once, not once per node
    const retainedCount = maxOf(stats, 'retained/count');
    const sent = metrics.reduce((n, m) => n + m.metrics['messages/sent'], 0);
    if (last) {
      const dt = (now - last.t) / 1000;
      rate.push([Math.max(0, (received - last.received) / dt), Math.max(0, (sent - last.sent) / dt)]);
    }
    last = { t: now, received, sent };
    conns.push([sum(stats, 'connections/count'), sum(stats, 'subscriptions/count')]);

    const tile = (k, v) => h('div', { class: 'tile' }, h('div', { class: 'v' }, fmt(v)),
      h('div', { class: 'k' }, k));
    tiles.replaceChildren(
      tile('nodes', nodeList.filter((n) => n.node_status === 'Running').length),
      tile('connections', sum(stats, 'connections/count')),
      tile('sessions', sum(stats, 'sessions/count')),
      tile('subscriptions', sum(stats, 'subscriptions/count')),
      tile('topics', sum(stats, 'topics/count')),
      tile('retained', retainedCount),
      tile('messages received', received),
      tile('messages sent', sent),
    );
    const byNode = Object.fromEntries(brokers.map((b) => [b.node, b]));
    nodes.replaceChildren(table([
      ['node', 'node'],
      ['status', 'node_status'],
      ['version', 'version'],
      ['runtime', (n) => byNode[n.node]?.otp_release],
      ['uptime', (n) => uptime(n.uptime)],
      ['connections', 'connections'],
      // a Stopped node (dead or departed) has only its name and status
      ['memory', (n) => (n.memory_used === undefined ? '' : `${n.memory_used} / ${n.memory_total}`)],
      ['load 1/5/15', (n) => (n.load1 === undefined ? '' : `${n.load1} ${n.load5} ${n.load15}`)],
      // `start --workers N`: one node of N processes (their rows in the Workers card)
      ['workers', (n) => (n.workers ? n.workers.length : 1)],
    ], nodeList.map((n) => ({ ...n, __key: n.node }))));
    const perWorker = workerRows(nodeList);
    workersCard.hidden = perWorker.length === 0;
    workers.replaceChildren(table([
      ['node', 'node'], ['worker', 'worker'], ['pid', 'pid'], ['status', 'node_status'],
      ['connections', 'connections'], ['memory', 'memory_used'],
    ], perWorker));
  });
}

// -- clients -----------------------------------------------------------------------------------

function clients(ctx) {
  const details = h('div');
  let reload;
  async function show(clientId) {
    const [conns, sessions, subs] = await Promise.all([
      get(`/connections/${enc(clientId)}`), get(`/sessions/${enc(clientId)}`),
      get(`/subscriptions/${enc(clientId)}`)]);
    details.replaceChildren(card(`Client ${clientId}`,
      h('button', { class: 'secondary small', onclick: () => details.replaceChildren() }, 'Close'),
      actAs(clientId),
      h('div', { class: 'grid' },
        h('div', {}, h('h3', {}, 'Connection'),
          conns.length ? kv({ ...conns[0], username: username(conns[0].username) }) : 'not connected'),
        h('div', {}, h('h3', {}, 'Session'),
          sessions.length ? kv({ ...sessions[0], username: username(sessions[0].username) }) : 'no session'),
        h('div', {}, h('h3', {}, 'Subscriptions'),
          table([['topic', 'topic'], ['qos', 'qos'],
            ['', (s) => h('button', { class: 'small danger', 'data-action': 'unsubscribe',
              'data-topic': s.topic, onclick: () => unsubscribe(clientId, s.topic) }, 'Unsubscribe')]],
          subs)))));
  }
  // EMQX's dashboard: subscribe a client to a topic, publish as a client (REST /mqtt/*).
  function actAs(clientId) {
    const qosSelect = (testid) => h('select', { 'data-testid': testid },
      [0, 1, 2].map((q) => h('option', { value: String(q) }, `QoS ${q}`)));
    const subTopic = h('input', { placeholder: 'topic filter', 'data-testid': 'client-sub-topic' });
    const subQos = qosSelect('client-sub-qos');
    const pubTopic = h('input', { placeholder: 'topic', 'data-testid': 'client-pub-topic' });
    const pubPayload = h('input', { placeholder: 'payload', 'data-testid': 'client-pub-payload' });
    const pubQos = qosSelect('client-pub-qos');
    const pubRetain = h('input', { type: 'checkbox', 'data-testid': 'client-pub-retain' });
    return h('div', { class: 'grid' },
      card('Subscribe this client', h('form', { class: 'toolbar', onsubmit: (ev) => {
        ev.preventDefault();
        const body = { topic: subTopic.value.trim(), qos: Number(subQos.value), client_id: clientId };
        ctx.act(async () => {
          await api('POST', '/mqtt/subscribe', body);
          await show(clientId);
        }, `subscribed ${clientId} to ${body.topic}`);
      } }, h('label', {}, 'Topic filter', subTopic), h('label', {}, 'QoS', subQos),
      h('button', { type: 'submit', 'data-action': 'client-subscribe' }, 'Subscribe'))),
      card('Publish as this client', h('form', { class: 'toolbar', onsubmit: (ev) => {
        ev.preventDefault();
        const body = { topic: pubTopic.value.trim(), payload: pubPayload.value,
          qos: Number(pubQos.value), retain: pubRetain.checked, client_id: clientId };
        ctx.act(() => api('POST', '/mqtt/publish', body), `published to ${body.topic}`);
      } }, h('label', {}, 'Topic', pubTopic), h('label', {}, 'Payload', pubPayload),
      h('label', {}, 'QoS', pubQos), h('label', {}, 'Retain', pubRetain),
      h('button', { type: 'submit', 'data-action': 'client-publish' }, 'Publish'))));
  }
  const unsubscribe = (clientId, topic) => ctx.act(async () => {
    await api('POST', '/mqtt/unsubscribe', { topic, client_id: clientId });
    await show(clientId);
  }, `unsubscribed ${clientId} from ${topic}`);
  const kick = (clientId) => ctx.act(async () => {
    if (!window.confirm(`Kick client ${clientId}?`)) return;
    await api('DELETE', `/connections/${enc(clientId)}`);
    await reload();
  }, `kicked ${clientId}`);
  reload = pagedList(ctx, {
    path: '/connections/',
    placeholder: 'Search client id, username, IP',
    searchKeys: ['client_id', 'username', 'ipaddress'],
    columns: [
      ['client id', 'client_id'], ['username', (c) => username(c.username)],
      ['address', (c) => `${c.ipaddress}:${c.port}`], ['node', 'node'],
      ['protocol', (c) => `${c.proto_name} v${c.proto_ver}`], ['transport', 'conn_mod'],
      ['keepalive', 'keepalive'], ['connected at', (c) => time(c.connected_at)],
      ['', (c) => h('span', {},
        h('button', { class: 'small secondary', 'data-action': 'details',
          'data-client': c.client_id,
          onclick: () => show(c.client_id).catch(ctx.fail) }, 'Details'), ' ',
        h('button', { class: 'small danger', 'data-action': 'kick', 'data-client': c.client_id,
          onclick: () => kick(c.client_id) }, 'Kick'))],
    ],
  });
  ctx.root.append(details);
}

function sessions(ctx) {
  pagedList(ctx, {
    path: '/sessions/',
    placeholder: 'Search client id',
    searchKeys: ['client_id', 'username'],
    columns: [
      ['client id', 'client_id'], ['node', 'node'], ['clean start', 'clean_start'],
      ['expiry (s)', 'expiry_interval'], ['subscriptions', 'subscriptions_count'],
      ['inflight', (s) => `${s.inflight_len}/${s.max_inflight}`],
      ['queue', (s) => `${s.mqueue_len}/${s.max_mqueue}`], ['dropped', 'mqueue_dropped'],
      ['created at', (s) => time(s.created_at)],
    ],
  });
}

function subscriptions(ctx) {
  pagedList(ctx, {
    path: '/subscriptions/',
    placeholder: 'Search client id or topic',
    searchKeys: ['client_id', 'topic'],
    columns: [['client id', 'client_id'], ['topic', 'topic'], ['qos', 'qos'], ['node', 'node']],
  });
}

function routes(ctx) {
  pagedList(ctx, {
    path: '/routes/',
    placeholder: 'Search topic',
    searchKeys: ['topic'],
    columns: [['topic', 'topic'], ['node', 'node']],
  });
}

function retained(ctx) {
  // $SYS topics are the broker's own: hidden unless asked for, so the page opens on yours.
  const showSys = h('input', { type: 'checkbox', 'data-testid': 'show-sys',
    onchange: () => reload() });
  const remove = (m) => ctx.act(async () => {
    if (!window.confirm(`Delete the retained message of ${m.topic}?`)) return;
    await api('DELETE', `/retained/${enc(m.topic)}`);
    await reload();
  }, `deleted the retained message of ${m.topic}`);
  const reload = pagedList(ctx, {
    path: '/retained/',
    placeholder: 'Search topic or payload',
    searchKeys: ['topic', 'payload'],
    extra: h('label', { class: 'inline' }, showSys, 'show $SYS topics'),
    keep: { all: () => showSys.checked, row: (m) => !m.topic.startsWith('$SYS/') },
    columns: [
      ['topic', 'topic'], ['qos', 'qos'],
      ['payload', (m) => h('span', {}, m.encoding === 'base64' ? h('span', { class: 'badge' }, 'base64') : null,
        ' ', m.payload.length > 120 ? `${m.payload.slice(0, 120)}…` : m.payload)],
      ['from client', 'client_id'], ['published at', (m) => time(m.published_at)], ['node', 'node'],
      ['', (m) => h('button', { class: 'small danger', 'data-action': 'delete-retained',
        'data-topic': m.topic, onclick: () => remove(m) }, 'Delete')],
    ],
  });
}

// -- per-node pages ----------------------------------------------------------------------------

function plugins(ctx) {
  const holder = h('div');
  ctx.root.append(holder);
  const action = (node, name, verb) => ctx.act(async () => {
    try {
      await api('PUT', `/nodes/${enc(node)}/plugins/${enc(name)}/${verb}`);
    } catch (err) {
      // the node's answer is the reason the plugin refused ("no password file: ...")
      if (err instanceof ApiError && err.status !== 401) {
        err.message = `cannot ${verb} ${name} on ${node}: ${err.message}`;
      }
      throw err;
    } finally {
      await load();
    }
  }, `${verb}ed ${name} on ${node}`);
  async function load() {
    const all = await get('/plugins/');
    holder.replaceChildren(...all.map(({ node, plugins: list }) => card(node, table([
      ['name', 'name'], ['version', 'version'], ['description', 'description'],
      ['status', (p) => badge(p.active)],
      ['', (p) => h('button', {
        class: p.active ? 'small danger' : 'small',
        'data-action': p.active ? 'unload' : 'load', 'data-plugin': p.name,
        onclick: () => action(node, p.name, p.active ? 'unload' : 'load'),
      }, p.active ? 'Unload' : 'Load')],
    ], list.map((p) => ({ ...p, __key: p.name }))))));
  }
  ctx.every(REFRESH, load);
}

function listeners(ctx) {
  const holder = h('div');
  ctx.root.append(holder);
  ctx.every(REFRESH, async () => {
    const all = await get('/listeners/');
    holder.replaceChildren(...all.map(({ node, listeners: list }) => card(node, table([
      ['protocol', 'protocol'], ['listen on', 'listen_on'], ['acceptors', 'acceptors'],
      ['max conns', 'max_conns'], ['current conns', 'current_conns'],
      ['closed connections by reason', (l) => counts(l.shutdown_count)],
    ], list))));
  });
}

function banned(ctx) {
  const who = h('input', { placeholder: 'client id, username or IP', 'data-testid': 'ban-who' });
  const as = h('select', { 'data-testid': 'ban-as' },
    ['client_id', 'username', 'ip_address'].map((v) => h('option', { value: v }, v)));
  const reason = h('input', { placeholder: 'reason', 'data-testid': 'ban-reason' });
  const minutes = h('input', { type: 'number', min: '1', placeholder: 'forever',
    'data-testid': 'ban-minutes' });
  let reload;
  const add = h('form', { class: 'toolbar', onsubmit: (ev) => {
    ev.preventDefault();
    const body = { who: who.value.trim(), as: as.value, reason: reason.value };
    if (minutes.value) body.until = Math.floor(Date.now() / 1000) + 60 * Number(minutes.value);
    ctx.act(async () => {
      await api('POST', '/banned/', body);
      who.value = ''; reason.value = ''; minutes.value = '';
      await reload();
    }, `banned ${body.who}`);
  } },
  h('label', {}, 'Who', who), h('label', {}, 'As', as), h('label', {}, 'Reason', reason),
  h('label', {}, 'Minutes', minutes), h('button', { type: 'submit', 'data-action': 'ban' }, 'Ban'));
  const remove = (b) => ctx.act(async () => {
    await api('DELETE', `/banned/${enc(b.who)}?as=${enc(b.as)}`);
    await reload();
  }, `lifted the ban on ${b.who}`);
  reload = pagedList(ctx, {
    path: '/banned/',
    extra: add,
    columns: [
      ['who', 'who'], ['as', 'as'], ['reason', 'reason'], ['by', 'by'],
      ['until', (b) => (b.until ? time(b.until) : 'forever')],
      ['', (b) => h('button', { class: 'small danger', 'data-action': 'unban',
        'data-who': b.who, onclick: () => remove(b) }, 'Remove')],
    ],
  });
}

// -- WebSocket client --------------------------------------------------------------------------

async function wsPort() {
  // The node serving this page: /status says "Node <name> is started".
  let local = null;
  try {
    const text = await (await fetch('../status')).text();
    local = (text.match(/^Node (\S+) is started/) || [])[1] || null;
  } catch { /* fall back to any node */ }
  const all = await get('/listeners/');
  const mine = all.find((n) => n.node === local) || all[0];
  const ws = mine && mine.listeners.find((l) => l.protocol === 'mqtt:ws');
  return ws ? ws.listen_on.split(':').pop() : '8083';
}

function websocket(ctx) {
  const input = (attrs) => h('input', attrs);
  const host = input({ value: location.hostname, 'data-testid': 'ws-host' });
  const port = input({ value: '', 'data-testid': 'ws-port', size: 6 });
  const path = input({ value: '/mqtt', 'data-testid': 'ws-path', size: 8 });
  const clientId = input({ value: `dashboard-${Math.random().toString(16).slice(2, 10)}`,
    'data-testid': 'ws-client-id' });
  const username = input({ placeholder: 'optional', 'data-testid': 'ws-username' });
  const password = input({ type: 'password', placeholder: 'optional' });
  const state = h('span', { class: 'badge', 'data-testid': 'ws-state' }, 'disconnected');
  const connectBtn = h('button', { type: 'submit', 'data-action': 'ws-connect' }, 'Connect');
  const disconnectBtn = h('button', { type: 'button', class: 'secondary', disabled: true,
    'data-action': 'ws-disconnect' }, 'Disconnect');
  const subTopic = input({ value: 'test/#', 'data-testid': 'ws-sub-topic' });
  const pubTopic = input({ value: 'test/dashboard', 'data-testid': 'ws-pub-topic' });
  const pubPayload = input({ value: 'hello from the browser', 'data-testid': 'ws-pub-payload' });
  const pubRetain = input({ type: 'checkbox' });
  const log = h('div', { class: 'log', 'data-testid': 'ws-log' });
  const subs = h('ul', { 'data-testid': 'ws-subs' });
  let client = null;

  const line = (text, cls) => {
    log.prepend(h('div', { class: cls }, `${new Date().toLocaleTimeString()}  ${text}`));
  };
  const setState = (text, on) => { state.textContent = text; state.className = on ? 'badge on' : 'badge'; };

  function connect(ev) {
    ev.preventDefault();
    if (client) client.close();
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${host.value}:${port.value}${path.value}`;
    client = new MqttWsClient(url, { clientId: clientId.value, username: username.value,
      password: password.value, keepalive: 60 });
    setState('connecting', false);
    client.addEventListener('connect', () => {
      setState('connected', true);
      disconnectBtn.disabled = false;
      line(`connected to ${url} as ${clientId.value}`);
    });
    client.addEventListener('suback', (e) => line(`suback ${e.detail.packetId}: ${e.detail.codes}`));
    client.addEventListener('message', (e) => {
      const m = e.detail;
      log.prepend(h('div', { class: 'msg', 'data-topic': m.topic },
        `${new Date().toLocaleTimeString()}  ${m.topic}${m.retain ? ' (retained)' : ''}: `,
        h('b', {}, m.text)));
    });
    client.addEventListener('error', (e) => line(`error: ${e.detail}`, 'error'));
    client.addEventListener('close', () => {
      setState('disconnected', false);
      disconnectBtn.disabled = true;
      line('connection closed');
    });
    client.connect();
  }

  ctx.root.append(
    card('Connection', h('form', { class: 'toolbar', onsubmit: connect },
      h('label', {}, 'Host', host), h('label', {}, 'Port', port), h('label', {}, 'Path', path),
      h('label', {}, 'Client id', clientId), h('label', {}, 'Username', username),
      h('label', {}, 'Password', password), connectBtn, disconnectBtn, state)),
    h('div', { class: 'grid' },
      card('Subscribe (QoS 0)', h('form', { class: 'toolbar', onsubmit: (ev) => {
        ev.preventDefault();
        if (!client) return;
        client.subscribe(subTopic.value, 0);
        subs.append(h('li', {}, subTopic.value));
        line(`subscribe ${subTopic.value}`);
      } }, h('label', {}, 'Topic filter', subTopic),
      h('button', { type: 'submit', 'data-action': 'ws-subscribe' }, 'Subscribe')), subs),
      card('Publish (QoS 0)', h('form', { class: 'toolbar', onsubmit: (ev) => {
        ev.preventDefault();
        if (!client) return;
        client.publish(pubTopic.value, pubPayload.value, { retain: pubRetain.checked });
        line(`published to ${pubTopic.value}`);
      } }, h('label', {}, 'Topic', pubTopic), h('label', {}, 'Payload', pubPayload),
      h('label', {}, 'Retain', pubRetain),
      h('button', { type: 'submit', 'data-action': 'ws-publish' }, 'Publish')))),
    card('Messages', log),
  );
  disconnectBtn.addEventListener('click', () => { if (client) client.close(); });
  ctx.onLeave(() => { if (client) client.close(); });
  ctx.act(async () => {
    const p = await wsPort();
    if (!port.value) port.value = p;
  }, 'ready: the node\'s MQTT-over-WebSocket port is filled in');
}

export const PAGES = {
  overview: { title: 'Overview', render: overview },
  clients: { title: 'Clients', render: clients },
  sessions: { title: 'Sessions', render: sessions },
  subscriptions: { title: 'Subscriptions', render: subscriptions },
  routes: { title: 'Routes', render: routes },
  retained: { title: 'Retained messages', render: retained },
  plugins: { title: 'Plugins', render: plugins },
  alarms: { title: 'Alarms', render: alarms },
  banned: { title: 'Banned', render: banned },
  apps: { title: 'Apps', render: apps },
  listeners: { title: 'Listeners', render: listeners },
  websocket: { title: 'WebSocket client', render: websocket },
};
