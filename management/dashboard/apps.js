// The apps page: the management API's own apps (AppID/AppSecret; /apps, EMQX 3.x's
// emqx_mgmt_api_apps). The node stores only a hash of a secret, so a secret is shown once, in
// the answer to its creation; the page keeps it on screen until it is dismissed.
import { api, credentials, enc, get } from './api.js';
import { badge, card, h, table, time } from './ui.js';

const REFRESH = 5000;

// <input type="datetime-local"> speaks local "YYYY-MM-DDTHH:MM"; the API Unix seconds (null: never).
function toSeconds(local) {
  return local ? Math.floor(new Date(local).getTime() / 1000) : null;
}

function toLocal(seconds) {
  if (!seconds) return '';
  const d = new Date(seconds * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

const isExpired = (app) => Boolean(app.expired) && app.expired * 1000 <= Date.now();

function expiry(app) {
  if (!app.expired) return 'never';
  return isExpired(app) ? h('span', { class: 'error' }, `expired ${time(app.expired)}`)
    : time(app.expired);
}

// What signing-in with this app would do now.
function state(app) {
  if (!app.status) return badge(false, '', 'disabled');
  if (isExpired(app)) return badge(false, '', 'expired');
  return badge(true, 'enabled');
}

export function apps(ctx) {
  const secretHolder = h('div');
  const editHolder = h('div');
  const list = h('div');
  const field = (attrs) => h('input', attrs);
  const appId = field({ placeholder: 'ops', required: true, 'data-testid': 'app-id' });
  const name = field({ placeholder: 'optional', 'data-testid': 'app-name' });
  const desc = field({ placeholder: 'optional', 'data-testid': 'app-desc' });
  const secret = field({ type: 'password', placeholder: 'generated', autocomplete: 'new-password',
    'data-testid': 'app-secret' });
  const expires = field({ type: 'datetime-local', 'data-testid': 'app-expired' });
  const enabled = field({ type: 'checkbox', checked: true, 'data-testid': 'app-status' });
  enabled.checked = true;

  function showSecret(id, value, given) {
    const code = h('code', { class: 'secret', 'data-testid': 'new-secret', 'data-app': id }, value);
    secretHolder.replaceChildren(card(`Secret of ${id}`,
      h('p', {}, given ? 'The secret you gave: ' : 'The secret the node generated: ', code),
      h('p', { class: 'muted' }, 'It is shown only now: the node keeps a hash of it. Copy it before '
        + 'you close this box.'),
      h('button', { class: 'secondary small', 'data-action': 'dismiss-secret',
        onclick: () => secretHolder.replaceChildren() }, 'I have copied it')));
  }

  const create = h('form', { class: 'toolbar', onsubmit: (ev) => {
    ev.preventDefault();
    const id = appId.value.trim();
    const body = { app_id: id, name: name.value, desc: desc.value, status: enabled.checked,
      expired: toSeconds(expires.value) };
    if (secret.value) body.secret = secret.value;
    ctx.act(async () => {
      const answer = await api('POST', '/apps/', body);
      showSecret(id, answer.secret, Boolean(body.secret));
      for (const input of [appId, name, desc, secret, expires]) input.value = '';
      enabled.checked = true;
      await load();
    }, `created app ${id}`);
  } },
  h('label', {}, 'App ID', appId), h('label', {}, 'Name', name),
  h('label', {}, 'Description', desc), h('label', {}, 'Secret', secret),
  h('label', {}, 'Expires', expires), h('label', { class: 'inline' }, enabled, 'enabled'),
  h('button', { type: 'submit', 'data-action': 'create-app' }, 'Create'));

  // Signing out follows if the change refuses the app this tab signed in with.
  const mine = (app) => credentials() && credentials().app === app.app_id;
  const warn = (app, what) => (mine(app)
    ? `${what} ${app.app_id}? This tab is signed in with it: you will be signed out.`
    : `${what} ${app.app_id}?`);

  const update = (app, body, done) => ctx.act(async () => {
    await api('PUT', `/apps/${enc(app.app_id)}`, body);
    await load();
  }, done);

  const toggle = (app) => {
    if (app.status && !window.confirm(warn(app, 'Disable'))) return;
    update(app, { status: !app.status }, `${app.status ? 'disabled' : 'enabled'} app ${app.app_id}`);
  };

  const remove = (app) => ctx.act(async () => {
    if (!window.confirm(warn(app, 'Delete app'))) return;
    await api('DELETE', `/apps/${enc(app.app_id)}`);
    editHolder.replaceChildren();
    await load();
  }, `deleted app ${app.app_id}`);

  function edit(app) {
    const eName = field({ value: app.name, 'data-testid': 'edit-name' });
    const eDesc = field({ value: app.desc, 'data-testid': 'edit-desc' });
    const eExpires = field({ type: 'datetime-local', value: toLocal(app.expired),
      'data-testid': 'edit-expired' });
    const eStatus = field({ type: 'checkbox', 'data-testid': 'edit-status' });
    eStatus.checked = Boolean(app.status);
    editHolder.replaceChildren(card(`Edit app ${app.app_id}`, h('form', { class: 'toolbar',
      onsubmit: (ev) => {
        ev.preventDefault();
        if (mine(app) && (!eStatus.checked || eExpires.value)
          && !window.confirm(warn(app, 'Change'))) return;
        update(app, { name: eName.value, desc: eDesc.value, status: eStatus.checked,
          expired: toSeconds(eExpires.value) }, `saved app ${app.app_id}`);
        editHolder.replaceChildren();
      } },
    h('label', {}, 'Name', eName), h('label', {}, 'Description', eDesc),
    h('label', {}, 'Expires (empty: never)', eExpires),
    h('label', { class: 'inline' }, eStatus, 'enabled'),
    h('button', { type: 'submit', 'data-action': 'save-app' }, 'Save'),
    h('button', { type: 'button', class: 'secondary', onclick: () => editHolder.replaceChildren() },
      'Cancel'))));
  }

  async function load() {
    const rows = await get('/apps/');
    list.replaceChildren(table([
      ['app id', 'app_id'], ['name', 'name'], ['description', 'desc'],
      ['status', state], ['expires', expiry],
      ['', (app) => h('span', {},
        h('button', { class: 'small secondary', 'data-action': 'edit-app', 'data-app': app.app_id,
          onclick: () => edit(app) }, 'Edit'), ' ',
        h('button', { class: 'small secondary', 'data-action': app.status ? 'disable-app' : 'enable-app',
          'data-app': app.app_id, onclick: () => toggle(app) }, app.status ? 'Disable' : 'Enable'), ' ',
        h('button', { class: 'small danger', 'data-action': 'delete-app', 'data-app': app.app_id,
          onclick: () => remove(app) }, 'Delete'))],
    ], rows.map((app) => ({ ...app, __key: app.app_id })), { 'data-testid': 'apps' }));
  }

  ctx.root.append(
    card('Create an app', create,
      h('p', { class: 'muted' }, 'Clients of the REST API sign in with HTTP Basic: the app id '
        + 'and its secret. Leave the secret empty for a generated one.')),
    secretHolder, editHolder, card('Apps', list));
  ctx.every(REFRESH, load);
}
