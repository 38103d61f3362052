// Tiny DOM helpers: every text goes through textContent, never innerHTML.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function fmt(v) {
  if (v === undefined || v === null) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

// columns: [[header, key or (row) => value|Node]]
export function table(columns, rows, attrs = {}) {
  const head = h('tr', {}, columns.map(([name]) => h('th', {}, name)));
  const body = rows.length
    ? rows.map((row) => h('tr', { 'data-row': row.__key ?? '' }, columns.map(([, key]) => {
      const v = typeof key === 'function' ? key(row) : row[key];
      return h('td', {}, v instanceof Node ? v : fmt(v));
    })))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, 'No rows'))];
  return h('table', attrs, h('thead', {}, head), h('tbody', {}, body));
}

export function card(title, ...children) {
  return h('div', { class: 'card' }, title ? h('h3', {}, title) : null, ...children);
}

export function badge(on, yes = 'active', no = 'inactive') {
  return h('span', { class: on ? 'badge on' : 'badge' }, on ? yes : no);
}

export function time(seconds) {
  if (!seconds) return '';
  const d = typeof seconds === 'number' ? new Date(seconds * 1000) : new Date(seconds);
  return isNaN(d) ? String(seconds) : d.toLocaleString();
}

// The API shows an unset username as EMQX does ("undefined"); people read "anonymous".
export function username(v) {
  return v === undefined || v === null || v === '' || v === 'undefined' ? 'anonymous' : String(v);
}

// EMQX's uptime text says "1 minutes"; show it in English ("1 minute").
export function uptime(text) {
  return String(text ?? '').replace(/\b1 (second|minute|hour|day)s\b/g, '1 $1')
    .replace(/,(\S)/g, ', $1');
}

// {reason: count} as "reason 3, other 1" (a listener's closed connections by reason).
export function counts(object) {
  const entries = Object.entries(object || {}).sort((a, b) => b[1] - a[1]);
  return entries.map(([k, v]) => `${k} ${v}`).join(', ');
}

// The largest value of `key` over the rows: for what every node holds a replica of (retained
// messages), the cluster's count is one node's, not the sum over the nodes.
export function maxOf(rows, key) {
  return rows.reduce((m, r) => Math.max(m, Number(r[key]) || 0), 0);
}
