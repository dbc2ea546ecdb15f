// The web console's script (core/console/app.js) run under node against a small stand-in for the
// browser's DOM and a scripted admin API: what an operator's clicks do, for the behaviour the
// text checks of console_assets_test.cc cannot see. No dependencies (the suite fetches nothing):
// the stand-in implements only what app.js calls, and fails loudly on anything else.
//
//   node console_app_test.mjs <dir holding index.html and app.js>
//
// Exit status 0 when every scenario passes, 1 otherwise.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';

// --- A minimal DOM ------------------------------------------------------------------------------

class Node {
  constructor() {
    this.parentNode = null;
  }
  remove() {
    if (this.parentNode) this.parentNode._removeChild(this);
  }
  replaceWith(...nodes) {
    const parent = this.parentNode;
    if (!parent) return;
    const at = parent.childNodes.indexOf(this);
    const adopted = nodes.map((n) => parent._adopt(n));
    this.parentNode = null;
    parent.childNodes.splice(at, 1, ...adopted);
  }
}

class Text extends Node {
  constructor(data) {
    super();
    this.data = data;
  }
  get textContent() {
    return this.data;
  }
}

class Element extends Node {
  constructor(document, tag) {
    super();
    this.ownerDocument = document;
    this.tagName = tag.toUpperCase();
    this.childNodes = [];
    this.attributes = new Map();
    this.listeners = new Map();
    this.hidden = false;
    this.value = '';
    this.checked = false;
    this.disabled = false;
    this.dataset = {};
  }
  get children() {
    return this.childNodes.filter((n) => n instanceof Element);
  }
  get isConnected() {
    let n = this;
    while (n.parentNode) n = n.parentNode;
    return n === this.ownerDocument.root;
  }
  get textContent() {
    return this.childNodes.map((n) => n.textContent).join('');
  }
  set textContent(text) {
    this.replaceChildren(String(text));
  }
  setAttribute(name, value) {
    this.attributes.set(name, String(value));
    if (name === 'hidden') this.hidden = true;
    if (name.startsWith('data-')) this.dataset[name.slice(5)] = String(value);
  }
  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }
  addEventListener(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(listener);
  }
  dispatchEvent(event) {
    event.target ??= this;
    for (let n = this; n; n = n.parentNode) {
      for (const listener of n.listeners?.get(event.type) ?? []) listener(event);
    }
    return !event.defaultPrevented;
  }
  click() {
    this.dispatchEvent(new Event('click'));
  }
  _adopt(child) {
    // As the DOM's append(): anything but a node becomes a text node of its string.
    const node = child instanceof Node ? child : new Text(String(child));
    node.remove();
    node.parentNode = this;
    return node;
  }
  _removeChild(child) {
    this.childNodes.splice(this.childNodes.indexOf(child), 1);
    child.parentNode = null;
  }
  append(...children) {
    for (const c of children) this.childNodes.push(this._adopt(c));
  }
  prepend(...children) {
    this.childNodes.unshift(...children.map((c) => this._adopt(c)));
  }
  replaceChildren(...children) {
    for (const c of [...this.childNodes]) this._removeChild(c);
    this.append(...children);
  }
  closest(selector) {
    for (let n = this; n instanceof Element; n = n.parentNode) {
      if (n.matches(selector)) return n;
    }
    return null;
  }
  // Only the selectors app.js uses: "tag" and "tag[data-name]".
  matches(selector) {
    const bracket = selector.indexOf('[');
    const tag = bracket < 0 ? selector : selector.slice(0, bracket);
    if (tag !== '' && this.tagName !== tag.toUpperCase()) return false;
    if (bracket < 0) return true;
    const attr = selector.slice(bracket + 1, selector.indexOf(']'));
    return this.attributes.has(attr);
  }
  querySelectorAll(selector) {
    const out = [];
    const walk = (n) => {
      for (const c of n.children) {
        if (c.matches(selector)) out.push(c);
        walk(c);
      }
    };
    walk(this);
    return out;
  }
  focus() {}
  select() {}
  scrollIntoView() {}
}

class Event {
  constructor(type, init = {}) {
    this.type = type;
    this.cancelable = init.cancelable ?? false;
    this.defaultPrevented = false;
    this.target = null;
  }
  preventDefault() {
    this.defaultPrevented = true;
  }
}

// The elements of index.html app.js looks up by id, and the tab buttons, built from the page's
// own text so a renamed id or view fails here.
function makeDocument(page) {
  const document = {
    root: null,
    createElement: (tag) => new Element(document, tag),
    getElementById: (id) => document.byId.get(id) ?? null,
    byId: new Map(),
    execCommand: () => false,
  };
  document.root = new Element(document, 'html');
  const body = new Element(document, 'body');
  document.root.append(body);
  const tagOfId = new Map();
  for (let at = page.indexOf(' id="'); at >= 0; at = page.indexOf(' id="', at + 1)) {
    const id = page.slice(at + 5, page.indexOf('"', at + 5));
    const tag = page.slice(page.lastIndexOf('<', at) + 1, at).split(' ')[0];
    tagOfId.set(id, tag);
  }
  for (const [id, tag] of tagOfId) {
    const el = document.createElement(tag);
    el.setAttribute('id', id);
    document.byId.set(id, el);
    body.append(el);
  }
  for (let at = page.indexOf('data-view="'); at >= 0; at = page.indexOf('data-view="', at + 1)) {
    const button = document.createElement('button');
    button.setAttribute('data-view', page.slice(at + 11, page.indexOf('"', at + 11)));
    document.byId.get('tabs').append(button);
  }
  return document;
}

// --- A scripted admin API ----------------------------------------------------------------------

const json = (status, body) => ({
  status,
  ok: status >= 200 && status < 300,
  text: async () => JSON.stringify(body),
});

const keyRecord = (id, extra = {}) => ({
  id, hint: 'kg_abc...', description: '', apis: ['orders'], user: null, log_request: false,
  log_response: false, enabled: true, created_at: '2026-11-28T12:00:00Z',
  updated_at: '2026-11-28T12:00:00Z', expires_at: null, last_used_at: null, ...extra,
});

// Answers each call with the first handler whose "METHOD /path" prefix matches; records calls.
// A handler may return a promise that the test settles later (a slow answer).
function scriptedApi(routes) {
  const calls = [];
  const fetch = async (url, options) => {
    const call = `${options.method} ${url}`;
    calls.push({ call, headers: options.headers, body: options.body });
    for (const [prefix, answer] of routes) {
      if (call.startsWith(prefix)) return answer(call, options);
    }
    return json(404, { error: 'not_found', field: null, message: 'no such admin route' });
  };
  return { fetch, calls };
}

const defaultRoutes = () => [
  ['GET /admin/apis', () => json(200, { apis: [{ name: 'orders', routes: ['/orders'] }] })],
  ['GET /admin/users', () => json(200, { users: [], next_cursor: null })],
  ['GET /admin/keys', () => json(200, { keys: [keyRecord('kAAAAAAAAAAAA')], next_cursor: null })],
];

// Loads the page's script into a fresh document with `routes` as the admin API.
function loadConsole(dir, routes) {
  const page = fs.readFileSync(path.join(dir, 'index.html'), 'utf8');
  const script = fs.readFileSync(path.join(dir, 'app.js'), 'utf8');
  const document = makeDocument(page);
  const api = scriptedApi(routes);
  const window = {
    confirm: () => true,
  };
  const context = vm.createContext({
    document, window, fetch: api.fetch, navigator: { clipboard: { writeText: async () => {} } },
    URLSearchParams, setTimeout, clearTimeout, console,
  });
  vm.runInContext(script, context, { filename: 'app.js' });
  const $ = (id) => document.getElementById(id);
  return { document, $, api };
}

// Lets every pending promise chain (fetches, awaits) run to its end.
const settle = async () => {
  for (let i = 0; i < 50; ++i) await new Promise((resolve) => setImmediate(resolve));
};

const buttonsNamed = (root, label) => root.querySelectorAll('button').filter((b) => b.textContent === label);
const inputs = (root) => root.querySelectorAll('input');

async function logIn(ui) {
  ui.$('admin-key').value = 'admin-key-for-the-test';
  ui.$('login').dispatchEvent(new Event('submit', { cancelable: true }));
  await settle();
  assert.equal(ui.$('session').hidden, false, `not logged in: ${ui.$('error').textContent}`);
}

function submit(form) {
  assert.ok(form, 'no form');
  form.dispatchEvent(new Event('submit', { cancelable: true }));
}

// --- Scenarios ---------------------------------------------------------------------------------

const scenarios = [];
const scenario = (name, body) => scenarios.push({ name, body });

scenario('the admin key goes out as X-ApiKey only, never in a URL', async (dir) => {
  const ui = loadConsole(dir, defaultRoutes());
  await logIn(ui);
  assert.ok(ui.api.calls.length >= 3);
  for (const call of ui.api.calls) {
    assert.equal(call.headers['X-ApiKey'], 'admin-key-for-the-test');
    assert.ok(!call.call.includes('admin-key-for-the-test'), call.call);
  }
  assert.equal(ui.$('admin-key').value, '');
});

// The plaintext of a created key is shown once: if the list that follows the creation cannot
// be read (a restart, a store error, the admin key just revoked), the value must still be shown.
scenario('a created key is shown even when reloading the list fails', async (dir) => {
  let keysListed = 0;
  const routes = defaultRoutes();
  routes.unshift(['POST /admin/keys', () => json(201, { ...keyRecord('kBBBBBBBBBBBB'), key: 'kg_the-new-secret' })]);
  routes.unshift(['GET /admin/keys', () => (++keysListed === 1
    ? json(200, { keys: [], next_cursor: null })
    : json(503, { error: 'store_unavailable', field: null, message: 'the key store cannot answer' }))]);
  const ui = loadConsole(dir, routes);
  await logIn(ui);
  buttonsNamed(ui.$('view'), 'New key')[0].click();
  const create = buttonsNamed(ui.$('view'), 'Create')[0];
  submit(create.closest('form'));
  await settle();
  assert.ok(ui.api.calls.some((c) => c.call === 'POST /admin/keys'));
  assert.equal(keysListed, 2, 'the list is read again after the creation');
  const shown = inputs(ui.$('view')).filter((i) => i.value === 'kg_the-new-secret');
  assert.equal(shown.length, 1, 'the new key value is not shown');
  assert.equal(ui.$('error').hidden, false, 'the failed reload is reported');
});

scenario('a created key is shown once and "Done" removes it from the page', async (dir) => {
  const routes = defaultRoutes();
  routes.unshift(['POST /admin/keys', () => json(201, { ...keyRecord('kBBBBBBBBBBBB'), key: 'kg_the-new-secret' })]);
  const ui = loadConsole(dir, routes);
  await logIn(ui);
  buttonsNamed(ui.$('view'), 'New key')[0].click();
  submit(buttonsNamed(ui.$('view'), 'Create')[0].closest('form'));
  await settle();
  const shown = inputs(ui.$('view')).filter((i) => i.value === 'kg_the-new-secret');
  assert.equal(shown.length, 1, `the new key value is not shown: ${ui.$('error').textContent}`);
  buttonsNamed(ui.$('view'), 'Done')[0].click();
  assert.equal(inputs(ui.$('view')).filter((i) => i.value === 'kg_the-new-secret').length, 0);
  assert.ok(!ui.$('view').textContent.includes('kg_the-new-secret'));
});

// A gate for a slow answer: the route waits on open() before it answers.
function gate() {
  let open;
  const opened = new Promise((resolve) => { open = resolve; });
  return { opened, open };
}

const statsAnswer = () => json(200, { workers: { requests_total: 424242 } });

// A view's answer that arrives after the operator moved on must not show: neither beside the
// view now shown, nor after "Forget key", which promises an empty page.
scenario('an answer that arrives after "Forget key" does not show', async (dir) => {
  const slow = gate();
  const routes = defaultRoutes();
  routes.unshift(['GET /admin/stats', async () => { await slow.opened; return statsAnswer(); }]);
  const ui = loadConsole(dir, routes);
  await logIn(ui);
  ui.$('tabs').querySelectorAll('button[data-view]').find((b) => b.dataset.view === 'stats').click();
  await settle();
  ui.$('forget').click();
  slow.open();
  await settle();
  assert.equal(ui.$('login').hidden, false);
  assert.ok(!ui.$('view').textContent.includes('424242'), ui.$('view').textContent);
  assert.ok(ui.$('view').textContent.includes('No admin key is held'));
});

// Opens the Stats view, switches to the APIs view before Stats' answer (held by `slow`) came,
// then lets that answer come: the APIs view must be what shows.
async function leaveStatsForApis(ui, slow) {
  const tab = (name) => ui.$('tabs').querySelectorAll('button[data-view]').find((b) => b.dataset.view === name);
  tab('stats').click();
  await settle();
  tab('apis').click();
  await settle();
  slow.open();
  await settle();
  assert.ok(ui.$('view').textContent.includes('/orders'), 'the APIs view shows');
}

scenario('an answer that arrives after switching views does not show in the new view', async (dir) => {
  const slow = gate();
  const routes = defaultRoutes();
  routes.unshift(['GET /admin/stats', async () => { await slow.opened; return statsAnswer(); }]);
  const ui = loadConsole(dir, routes);
  await logIn(ui);
  await leaveStatsForApis(ui, slow);
  assert.ok(!ui.$('view').textContent.includes('424242'), ui.$('view').textContent);
});

// Nor does its failure: an error of a view the operator left would read as one of the view now
// shown (or, after "Forget key", as one of the empty page).
scenario('a failure that arrives after switching views is not reported in the new view', async (dir) => {
  const slow = gate();
  const routes = defaultRoutes();
  routes.unshift(['GET /admin/stats', async () => {
    await slow.opened;
    return json(503, { error: 'store_unavailable', field: null, message: 'the key store cannot answer' });
  }]);
  const ui = loadConsole(dir, routes);
  await logIn(ui);
  await leaveStatsForApis(ui, slow);
  assert.equal(ui.$('error').hidden, true, ui.$('error').textContent);
});

// The plaintext of a rotated key comes only in the rotation's answer: when that answer arrives
// after the operator switched views, it is shown above the view now shown, not lost.
scenario('a rotated key is shown even when the operator switched views meanwhile', async (dir) => {
  const slow = gate();
  const routes = defaultRoutes();
  routes.unshift(['POST /admin/keys/kAAAAAAAAAAAA/rotate', async () => {
    await slow.opened;
    return json(200, { ...keyRecord('kAAAAAAAAAAAA'), key: 'kg_the-rotated-secret' });
  }]);
  const ui = loadConsole(dir, routes);
  await logIn(ui);
  buttonsNamed(ui.$('view'), 'Rotate')[0].click();
  submit(buttonsNamed(ui.$('view'), 'Rotate').map((b) => b.closest('form')).find(Boolean));
  await settle();
  ui.$('tabs').querySelectorAll('button[data-view]').find((b) => b.dataset.view === 'apis').click();
  await settle();
  slow.open();
  await settle();
  assert.ok(ui.$('view').textContent.includes('/orders'), 'the APIs view shows');
  const shown = inputs(ui.$('view')).filter((i) => i.value === 'kg_the-rotated-secret');
  assert.equal(shown.length, 1, 'the rotated key value is not shown');
});

// --- Runner ------------------------------------------------------------------------------------

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node console_app_test.mjs <dir holding index.html and app.js>');
  process.exit(2);
}
let failed = 0;
for (const { name, body } of scenarios) {
  try {
    await body(dir);
    console.log(`ok      ${name}`);
  } catch (err) {
    failed += 1;
    console.log(`FAILED  ${name}\n        ${String(err.stack ?? err).split('\n').join('\n        ')}`);
  }
}
console.log(`${scenarios.length - failed} of ${scenarios.length} scenarios passed`);
process.exit(failed === 0 ? 0 : 1);
