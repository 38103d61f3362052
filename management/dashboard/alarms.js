// The alarms page: what is raised now on each node, and the history of cleared alarms
// (GET /alarms/history, EMQX 3.2's), newest first, so an alarm that came and went is still seen.
import { get } from './api.js';
import { card, h, table, time } from './ui.js';

const REFRESH = 5000;

export function alarms(ctx) {
  const present = h('div');
  const history = h('div');
  const count = h('p', { class: 'muted', 'data-testid': 'history-count' });
  ctx.root.append(present, h('h3', {}, 'History: cleared alarms, newest first'), count, history);
  ctx.every(REFRESH, async () => {
    const [now, past] = await Promise.all([get('/alarms/'), get('/alarms/history')]);
    present.replaceChildren(...now.map(({ node, alarms: list }) => card(`Raised now on ${node}`,
      table([
        ['id', 'id'], ['severity', 'severity'], ['title', 'title'],
        ['summary', (a) => h('span', { class: 'wrap' }, a.summary)],
        ['since', (a) => time(a.timestamp)],
      ], list.map((a) => ({ ...a, __key: a.id })), { 'data-testid': 'alarms-present' }))));
    // each node answers its last 1000 in the order they cleared: the newest goes on top
    const newestFirst = (list) => [...list].reverse();
    const total = past.reduce((n, p) => n + p.alarms.length, 0);
    count.textContent = total === 1 ? '1 alarm' : `${total} alarms`;
    history.replaceChildren(...past.map(({ node, alarms: list }) => card(`Cleared on ${node}`,
      table([
        ['id', 'id'], ['severity', 'severity'], ['title', 'title'],
        ['summary', (a) => h('span', { class: 'wrap' }, a.summary)],
        ['raised at', (a) => time(a.timestamp)], ['cleared at', (a) => time(a.clear_at)],
      ], newestFirst(list), { 'data-testid': 'alarms-history' }))));
  });
}
