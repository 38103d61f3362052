// The public management API (/api/v3) with HTTP Basic credentials kept in sessionStorage.
const KEY = 'minibroker.credentials';

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export function credentials() {
  const raw = sessionStorage.getItem(KEY);
  return raw ? JSON.parse(raw) : null;
}

export function setCredentials(app, secret) {
  if (app === null) sessionStorage.removeItem(KEY);
  else sessionStorage.setItem(KEY, JSON.stringify({ app, secret }));
}

function authHeader(creds) {
  const bytes = new TextEncoder().encode(`${creds.app}:${creds.secret}`);
  return 'Basic ' + btoa(String.fromCharCode(...bytes));
}

export async function api(method, path, body, creds = credentials()) {
  const headers = { Accept: 'application/json' };
  if (creds) headers.Authorization = authHeader(creds);
  // credentials: 'omit' = no cookies and, above all, no browser sign-in prompt on a 401 (the API
  // answers WWW-Authenticate: Basic); the Authorization header set here is still sent.
  const init = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch('../api/v3' + path, init);
  let data = null;
  try { data = await response.json(); } catch { /* empty body */ }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.message) || response.statusText);
  }
  return unwrap(data);
}

// A node with api_format = "emqx" answers {code: 0, data[, meta]} and reports errors as HTTP 200
// {code: N, message}. Give the pages the seed shapes whichever format the node serves: pages
// back to {items, meta}, errors thrown. (The seed's own {code: 0} unwraps to itself.)
export function unwrap(body) {
  if (!isEnvelope(body)) return body;
  if (body.code !== 0) throw new ApiError(200, body.message || `error code ${body.code}`);
  if ('meta' in body) return { items: body.data || [], meta: body.meta };
  return 'data' in body ? body.data : body;
}

function isEnvelope(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return false;
  if (!Number.isInteger(body.code)) return false;
  return Object.keys(body).every((k) => ['code', 'data', 'meta', 'message'].includes(k));
}

export const get = (path) => api('GET', path);
export const enc = encodeURIComponent;
