// The dashboard: sign-in, hash routing, and the pages. Reads only the public /api/v3.
import { api, ApiError, credentials, setCredentials } from './api.js';
import { h } from './ui.js';
import { PAGES } from './pages.js';

const $ = (id) => document.getElementById(id);
let current = null; // { timers: [], alive: bool }

function showLogin(message = '') {
  stopPage();
  $('shell').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('login-app').focus();
  // /status needs no credentials: say which node this is before signing in.
  fetch('../status', { cache: 'no-store' }).then((r) => r.text()).then((text) => {
    const node = (text.match(/^Node (\S+) is started/) || [])[1];
    $('login-node').textContent = node ? `Node ${node}` : '';
  }).catch(() => { /* the form works without it */ });
}

async function signIn(event) {
  event.preventDefault();
  const app = $('login-app').value.trim();
  const secret = $('login-secret').value;
  $('login-error').textContent = '';
  try {
    await api('GET', '/brokers/', undefined, { app, secret });
  } catch (err) {
    $('login-error').textContent = err instanceof ApiError && err.status === 401
      ? 'Wrong app id or secret.' : `Sign-in failed: ${err.message}`;
    return;
  }
  setCredentials(app, secret);
  $('login-secret').value = '';
  showShell();
}

function showShell() {
  $('login').hidden = true;
  $('shell').hidden = false;
  $('who').textContent = credentials().app;
  if (!location.hash || !PAGES[pageName()]) location.hash = '#/overview';
  else route();
}

function pageName() {
  return location.hash.replace(/^#\/?/, '').split('/')[0] || 'overview';
}

function stopPage() {
  if (!current) return;
  current.alive = false;
  current.timers.forEach(clearInterval);
  current.cleanups.forEach((fn) => fn());
  current = null;
}

function setStatus(text, isError = false) {
  const el = $('status');
  el.textContent = text;
  el.className = isError ? 'error' : 'muted';
}

// What a page gets: its root element, a poller and error reporting.
function context(root) {
  const ctx = {
    root, timers: [], cleanups: [], alive: true,
    // Run fn now and every `ms` while the page is shown; errors go to the status line.
    every(ms, fn) {
      const tick = async () => {
        if (!ctx.alive) return;
        try {
          await fn();
          if (ctx.alive) setStatus(`updated ${new Date().toLocaleTimeString()}`);
        } catch (err) { ctx.fail(err); }
      };
      tick();
      ctx.timers.push(setInterval(tick, ms));
    },
    onLeave(fn) { ctx.cleanups.push(fn); },
    fail(err) {
      if (err instanceof ApiError && err.status === 401) {
        setCredentials(null);
        showLogin('Your credentials were refused; sign in again.');
      } else {
        setStatus(`error: ${err.message}`, true);
      }
    },
    // Run an action (button) and report its result.
    async act(fn, done) {
      try {
        await fn();
        setStatus(done);
      } catch (err) { ctx.fail(err); }
    },
  };
  return ctx;
}

function route() {
  if (!credentials()) { showLogin(); return; }
  const name = pageName();
  const page = PAGES[name];
  if (!page) { location.hash = '#/overview'; return; }
  stopPage();
  document.querySelectorAll('#nav a').forEach((a) => {
    a.classList.toggle('active', a.dataset.page === name);
  });
  $('title').textContent = page.title;
  setStatus('loading...');
  const root = h('div', { 'data-page': name });
  $('page').replaceChildren(root);
  current = context(root);
  page.render(current);
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', signIn);
  $('logout').addEventListener('click', () => { setCredentials(null); showLogin(); });
  if (credentials()) showShell(); else showLogin();
});
