// The alarms page: what is raised now on each node, and the history of cleared alarms
// (GET /alarms/history, EMQX 3.2's), newest first, so an alarm that came and went is still seen.
import { get } from './api.js';
import { card, h, table, time } from './ui.js';

const REFRESH = 5000;

// [{node, alarms: [...]}] as one list of rows, each with its node.
const rowsOf = (perNode) => perNode.flatMap(({ node, alarms }) => alarms.map((a) => ({
  ...a, node, __key: `${node}/${a.id}` })));

export function alarms(ctx) {
  const present = h('div');
  const history = h('div');
  const count = h('span', { class: 'muted', 'data-testid': 'history-count' });
  ctx.root.append(
    present,
    card('History: cleared alarms, newest first', count, history),
  );
  ctx.every(REFRESH, async () => {
    const [now, past] = await Promise.all([get('/alarms/'), get('/alarms/history')]);
    present.replaceChildren(...now.map(({ node, alarms: list }) => card(`Raised now on ${node}`,
      table([
        ['id', 'id'], ['severity', 'severity'], ['title', 'title'],
        ['summary', 'summary'], ['since', (a) => time(a.timestamp)],
      ], list.map((a) => ({ ...a, __key: a.id })), { 'data-testid': 'alarms-present' }))));
    // the node keeps the last 1000 per node, oldest first: show the newest at the top
    const cleared = rowsOf(past).sort((a, b) => String(b.clear_at).localeCompare(String(a.clear_at)));
    count.textContent = cleared.length === 1 ? '1 alarm' : `${cleared.length} alarms`;
    history.replaceChildren(table([
      ['node', 'node'], ['id', 'id'], ['severity', 'severity'], ['title', 'title'],
      ['summary', 'summary'], ['raised at', (a) => time(a.timestamp)],
      ['cleared at', (a) => time(a.clear_at)],
    ], cleared, { 'data-testid': 'alarms-history' }));
  });
}
