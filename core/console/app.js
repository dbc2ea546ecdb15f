// keygate web console: one page over the admin API (docs/openapi.yaml). No dependencies, no
// build step; served by keygate's admin listener under a Content-Security-Policy that allows
// only same-origin scripts, styles and fetches.
//
// The admin key lives only in `adminKey` below: never in storage, cookies or a URL. It goes out
// as the X-ApiKey header of same-origin fetch calls and is dropped by "Forget key" or a reload.
// Everything shown is built with DOM calls and text nodes, never parsed as HTML: descriptions,
// user names and logged paths are written by other people.

// Every route of the admin API this console calls, spelled as in docs/openapi.yaml. Requests
// go only through api() with a name from this table; tests/integration/openapi_test.cc checks
// each path and each api() call's method against the document, and that no admin path is
// spelled anywhere else in this file.
const ROUTES = Object.freeze({
  keys: '/admin/keys',
  key: '/admin/keys/{id}',
  rotate: '/admin/keys/{id}/rotate',
  users: '/admin/users',
  user: '/admin/users/{name}',
  apis: '/admin/apis',
  logs: '/admin/logs',
  backups: '/admin/backups',
  stats: '/admin/stats',
});

let adminKey = null;      // the operator's admin key; null when none is held
let configuredApis = [];  // API names from the configuration, for the key and grant forms
let userNames = [];       // every user's name, for the key forms (refreshed by the keys view)

const $ = (id) => document.getElementById(id);

// Builds an element. `attrs` become attributes, except on* (event listeners) and value/checked
// (properties); null, undefined and false are left out. Children are nodes or strings, and
// strings become text nodes: nothing here is ever parsed as markup.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), v);
    else if (name === 'value' || name === 'checked') el[name] = v;
    else el.setAttribute(name, v === true ? '' : String(v));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

// An error answer of the admin API: {"error","field","message"} (or the HTTP layer's shorter
// {"error","message"}), shown with its status.
class ApiError extends Error {
  constructor(status, body) {
    const code = body && typeof body.error === 'string' ? body.error : 'unexpected_response';
    const field = body && typeof body.field === 'string' ? ` (${body.field})` : '';
    const text = body && typeof body.message === 'string' ? body.message : 'the answer is not JSON';
    super(`${status} ${code}${field}: ${text}`);
    this.status = status;
    this.code = code;
  }
}

// One admin API call. `route` names a ROUTES entry, `params` fill its {placeholders}
// (percent-encoded), `query` becomes the query string (empty values left out), `body` is sent
// as JSON. Resolves to the parsed answer (null for 204); rejects with an ApiError.
async function api(method, route, { params = {}, query = {}, body } = {}) {
  if (adminKey === null) throw new Error('no admin key: enter one first');
  let url = ROUTES[route].replace(/\{(\w+)\}/g, (_, name) => encodeURIComponent(params[name]));
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== '' && value !== null && value !== undefined) search.set(name, value);
  }
  if (search.toString() !== '') url += `?${search}`;
  const headers = { 'X-ApiKey': adminKey };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
    redirect: 'error',
    referrerPolicy: 'no-referrer',
  });
  if (response.status === 204) return null;
  let json = null;
  try {
    json = JSON.parse(await response.text());
  } catch {
    // Not JSON: reported as an unexpected answer below.
  }
  if (!response.ok || json === null) throw new ApiError(response.status, json);
  return json;
}

// Every user, in name order: the admin API hands them out a page at a time, and every page is
// followed (as large as the API allows, so an instance with many users costs few calls).
async function allUsers() {
  const users = [];
  let cursor = '';
  do {
    const page = await api('GET', 'users', { query: { cursor, limit: 1000 } });
    users.push(...page.users);
    const next = page.next_cursor ?? '';  // null: that was the last page
    if (next !== '' && next === cursor) throw new Error('the user listing did not advance');
    cursor = next;
  } while (cursor !== '');
  return users;
}

// --- Messages and actions -------------------------------------------------------------------

function clearMessages() {
  $('error').hidden = true;
  $('notice').hidden = true;
}

function showError(err) {
  $('error').textContent = err instanceof ApiError ? `Error ${err.message}` : `Error: ${err.message}`;
  $('error').hidden = false;
}

function notify(text) {
  $('notice').textContent = text;
  $('notice').hidden = false;
}

// Runs an async action of the operator's: clears old messages, shows a failure. With `pane`,
// the action builds that view: a failure once the view is off the page (the operator moved on)
// is not shown, as it would read as one of the view now shown.
async function run(action, pane = null) {
  clearMessages();
  try {
    await action();
  } catch (err) {
    if (pane === null || pane.isConnected) showError(err);
  }
}

// A form whose submission never navigates (the CSP's form-action 'none' would refuse it).
function form(attrs, onSubmit, ...children) {
  const onsubmit = (event) => {
    event.preventDefault();
    run(onSubmit);
  };
  return h('form', { ...attrs, onsubmit }, ...children);
}

const button = (label, onclick, attrs = {}) => h('button', { type: 'button', onclick, ...attrs }, label);
const field = (label, input) => h('label', { class: 'field' }, h('span', {}, label), input);
const check = (label, input) => h('label', { class: 'check' }, input, ' ', label);
const text = (v) => (v === null || v === undefined ? '' : String(v));
const table = (headings, body) =>
  h('table', {}, h('thead', {}, h('tr', {}, headings.map((t) => h('th', {}, t)))), body);
const emptyRow = (columns, message) => h('tr', {}, h('td', { colspan: columns, class: 'empty' }, message));

// --- Key and session ------------------------------------------------------------------------

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('admin-key');
  const value = input.value.trim();
  input.value = '';
  if (value === '') return;
  adminKey = value;
  run(async () => {
    try {
      configuredApis = (await api('GET', 'apis')).apis.map((a) => a.name);
    } catch (err) {
      forget();
      throw err;
    }
    $('login').hidden = true;
    $('session').hidden = false;
    $('tabs').hidden = false;
    show('keys');
  });
});

function forget() {
  adminKey = null;
  configuredApis = [];
  userNames = [];
  $('login').hidden = false;
  $('session').hidden = true;
  $('tabs').hidden = true;
  $('view').replaceChildren(h('p', {}, 'No admin key is held. Enter one to continue.'));
  clearMessages();
  $('admin-key').focus();
}
$('forget').addEventListener('click', forget);

const VIEWS = { keys: keysView, users: usersView, apis: apisView, logs: logsView, backups: backupsView, stats: statsView };

function show(name) {
  for (const tab of $('tabs').querySelectorAll('button')) {
    tab.setAttribute('aria-pressed', String(tab.dataset.view === name));
  }
  // Each view builds into a pane of its own: an answer that arrives after the operator moved on
  // (another view, "Forget key") lands in a pane no longer on the page, not beside what is shown.
  const pane = h('div');
  $('view').replaceChildren(pane);
  run(() => VIEWS[name](pane), pane);
}
$('tabs').addEventListener('click', (event) => {
  const tab = event.target.closest('button[data-view]');
  if (tab) show(tab.dataset.view);
});

// --- Keys -----------------------------------------------------------------------------------

// Shows a key's plaintext the one time the API returns it (create, rotate), above the view on
// the page (the one the operator may have moved on to meanwhile: the value comes only now).
// Dismissing the box, switching views or forgetting the admin key removes it from the page.
function showSecret(record, verb) {
  const value = h('input', { type: 'text', readonly: true, value: record.key, spellcheck: 'false', autocomplete: 'off', 'aria-label': 'key value' });
  const copy = button('Copy', async () => {
    try {
      await navigator.clipboard.writeText(value.value);
    } catch {
      value.select();  // no clipboard API (a page served over plain HTTP to another host)
      document.execCommand('copy');
    }
    copy.textContent = 'Copied';
  });
  const box = h('section', { class: 'secret', role: 'alert' },
    h('h2', {}, `Key ${record.id} ${verb}`),
    h('p', { class: 'warning' }, 'This is the only time keygate shows this value: it keeps only ' +
      'a digest. Copy it now and store it safely. If it is lost, rotate the key.'),
    h('div', { class: 'row' }, value, copy, button('Done', () => box.remove())));
  $('view').prepend(box);
  value.select();
}

const sameValue = (a, b) =>
  JSON.stringify(Array.isArray(a) ? [...a].sort() : a) === JSON.stringify(Array.isArray(b) ? [...b].sort() : b);

// The form fields of a key: empty for a new key, else `key`'s values. read() gives the body to
// send: every member for a new key, only the changed ones for an edit (a PATCH changes what it
// names, and an unchanged API that is no longer configured must not be sent again).
function keyFields(key) {
  const apiNames = [...new Set(['admin', ...configuredApis, ...(key ? key.apis : [])])];
  const apiBoxes = apiNames.map((name) => h('input', { type: 'checkbox', value: name, checked: key ? key.apis.includes(name) : false }));
  const apiNote = (name) => {
    if (name === 'admin') return ' (the admin API: full control of keygate)';
    return configuredApis.includes(name) ? '' : ' (not configured)';
  };
  const users = [...new Set([...userNames, ...(key && key.user ? [key.user] : [])])];
  const user = h('select', {}, h('option', { value: '' }, '(none)'),
    users.map((name) => h('option', { value: name }, name, userNames.includes(name) ? '' : ' (deleted)')));
  user.value = key && key.user ? key.user : '';
  const description = h('input', { type: 'text', maxlength: 1024, value: key ? key.description : '' });
  const logRequest = h('input', { type: 'checkbox', checked: key ? key.log_request : false });
  const logResponse = h('input', { type: 'checkbox', checked: key ? key.log_response : false });
  const enabled = h('input', { type: 'checkbox', checked: key ? key.enabled : true });
  const expires = h('input', { type: 'text', value: key ? text(key.expires_at) : '', placeholder: 'never, or 2026-11-26T10:00:00Z', spellcheck: 'false' });
  const element = h('div', {},
    field('Description', description),
    h('fieldset', {}, h('legend', {}, 'APIs it may call'),
      apiNames.map((name, i) => check(name + apiNote(name), apiBoxes[i]))),
    field('User (its grants narrow what the key may call)', user),
    h('fieldset', {}, h('legend', {}, 'Access log'),
      check('log requests (heads and bodies)', logRequest), check('log responses', logResponse)),
    check('enabled', enabled),
    field('Expires at (RFC 3339; empty: never)', expires));
  const read = () => {
    const expiry = expires.value.trim();
    const values = {
      description: description.value,
      apis: apiBoxes.filter((b) => b.checked).map((b) => b.value),
      user: user.value === '' ? null : user.value,
      log_request: logRequest.checked,
      log_response: logResponse.checked,
      enabled: enabled.checked,
      expires_at: expiry === '' ? null : expiry,
    };
    if (!key) return values;
    return Object.fromEntries(Object.entries(values).filter(([name, v]) => !sameValue(v, key[name])));
  };
  return { element, read };
}

async function keysView(view) {
  userNames = (await allUsers()).map((u) => u.name);
  const filter = { api: '', user: '' };
  let cursor = null;
  const rows = h('tbody');
  const more = button('More', () => run(() => load(false)), { hidden: true });
  const panel = h('section', { class: 'panel', hidden: true });

  const openPanel = (title, ...content) => {
    panel.replaceChildren(h('h2', {}, title), ...content);
    panel.hidden = false;
    panel.scrollIntoView({ block: 'nearest' });
  };
  const closePanel = () => {
    panel.replaceChildren();
    panel.hidden = true;
  };

  async function load(reset) {
    if (reset) cursor = null;
    const page = await api('GET', 'keys', { query: { ...filter, cursor: cursor ?? '', limit: 100 } });
    if (reset) rows.replaceChildren();
    for (const key of page.keys) rows.append(keyRow(key));
    cursor = page.next_cursor;
    more.hidden = cursor === null;
    if (rows.children.length === 0 && cursor === null) rows.append(emptyRow(10, 'No keys.'));
  }

  function keyRow(key) {
    const logging = [key.log_request && 'requests', key.log_response && 'responses'].filter(Boolean);
    const expired = key.expires_at !== null && Date.parse(key.expires_at) <= Date.now();
    const row = h('tr', { class: key.enabled && !expired ? null : 'inactive' },
      h('td', { class: 'mono' }, key.id),
      h('td', { class: 'mono' }, key.hint),
      h('td', {}, key.description),
      h('td', {}, key.apis.join(', ')),
      h('td', {}, text(key.user)),
      h('td', {}, logging.join(', ') || 'no'),
      h('td', {}, key.enabled ? 'yes' : 'no'),
      h('td', {}, key.expires_at === null ? 'never' : key.expires_at + (expired ? ' (expired)' : '')),
      h('td', {}, key.last_used_at === null ? 'never' : key.last_used_at),
      h('td', { class: 'actions' },
        button('Edit', () => editKey(key, row)),
        button('Rotate', () => rotateKey(key, row)),
        button('Delete', () => run(() => deleteKey(key, row)))));
    return row;
  }

  function editKey(key, row) {
    const fields = keyFields(key);
    openPanel(`Edit key ${key.id}`,
      h('p', { class: 'muted' }, `Created ${key.created_at}, updated ${key.updated_at}. Its value cannot be changed here: rotate it.`),
      form({}, async () => {
        const changes = fields.read();
        if (Object.keys(changes).length === 0) return notify('Nothing changed.');
        const updated = await api('PATCH', 'key', { params: { id: key.id }, body: changes });
        row.replaceWith(keyRow(updated));
        closePanel();
        notify(`Key ${key.id} updated.`);
      }, fields.element, h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Save'), button('Cancel', closePanel))));
  }

  function rotateKey(key, row) {
    const grace = h('input', { type: 'number', min: 0, max: 2592000, step: 1, value: '0', required: true });
    openPanel(`Rotate key ${key.id}`,
      h('p', {}, 'The key gets a new generated value; its id and settings stay. The current value ' +
        'keeps working for the grace period (0: it stops at once).'),
      form({}, async () => {
        const rotated = await api('POST', 'rotate', { params: { id: key.id }, body: { grace_seconds: Number(grace.value) } });
        row.replaceWith(keyRow(rotated));
        closePanel();
        showSecret(rotated, 'rotated');
      }, field('Grace period in seconds (at most 2592000, 30 days)', grace),
      h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Rotate'), button('Cancel', closePanel))));
  }

  async function deleteKey(key, row) {
    const what = key.description ? `${key.id} (${key.description})` : key.id;
    if (!window.confirm(`Delete key ${what}? Its value stops working at once; this cannot be undone.`)) return;
    await api('DELETE', 'key', { params: { id: key.id } });
    row.remove();
    closePanel();
    notify(`Key ${key.id} deleted.`);
  }

  function createKey() {
    const fields = keyFields(null);
    const value = h('input', { type: 'password', maxlength: 256, autocomplete: 'off', spellcheck: 'false' });
    openPanel('New key',
      form({}, async () => {
        const body = fields.read();
        if (value.value !== '') body.key = value.value;
        const created = await api('POST', 'keys', { body });
        value.value = '';
        closePanel();
        // Shown before the list is read again: the value comes only in this answer, and must
        // not be lost when that read fails.
        showSecret(created, 'created');
        await load(true);
      }, field('Value (empty: keygate generates one, the safe choice)', value), fields.element,
      h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Create'), button('Cancel', closePanel))));
  }

  const apiFilter = h('select', {}, h('option', { value: '' }, 'any API'),
    ['admin', ...configuredApis].map((name) => h('option', { value: name }, name)));
  const userFilter = h('select', {}, h('option', { value: '' }, 'any user'),
    userNames.map((name) => h('option', { value: name }, name)));
  view.append(
    h('div', { class: 'toolbar' },
      button('New key', createKey),
      form({ class: 'row' }, async () => {
        filter.api = apiFilter.value;
        filter.user = userFilter.value;
        await load(true);
      }, apiFilter, userFilter, h('button', { type: 'submit' }, 'Filter'))),
    panel,
    table(['ID', 'Hint', 'Description', 'APIs', 'User', 'Logged', 'Enabled', 'Expires', 'Last used', ''], rows),
    more);
  await load(true);
}

// --- Users ----------------------------------------------------------------------------------

// An editable list of grants; read() gives them as the API takes them.
function grantsEditor(grants) {
  const entries = new Set();
  const list = h('div', { class: 'grants' });
  const add = (grant) => {
    const names = [...new Set([...configuredApis, grant.api])].filter((name) => name !== '');
    const apiSelect = h('select', { 'aria-label': 'API' }, names.map((name) => h('option', { value: name }, name)));
    apiSelect.value = grant.api;
    const methods = h('input', { type: 'text', value: grant.methods.join(' '), placeholder: 'every method', 'aria-label': 'methods', spellcheck: 'false' });
    const prefix = h('input', { type: 'text', value: grant.path_prefix, placeholder: 'every path', 'aria-label': 'path prefix', spellcheck: 'false' });
    const entry = {
      read: () => ({
        api: apiSelect.value,
        methods: methods.value.split(/[\s,]+/).filter((m) => m !== ''),
        path_prefix: prefix.value,
      }),
    };
    const row = h('div', { class: 'row' }, apiSelect, methods, prefix,
      button('Remove', () => { entries.delete(entry); row.remove(); }));
    entries.add(entry);
    list.append(row);
  };
  grants.forEach(add);
  const element = h('fieldset', {},
    h('legend', {}, 'Grants: API, methods (e.g. GET POST; empty: every method), path prefix (e.g. /orders/reports; empty: every path)'),
    list,
    button('Add grant', () => add({ api: configuredApis[0] ?? '', methods: [], path_prefix: '' })));
  return { element, read: () => [...entries].map((e) => e.read()) };
}

const grantText = (g) => `${g.api} ${g.methods.length ? g.methods.join(' ') : 'any method'} ${g.path_prefix || 'any path'}`;

async function usersView(view) {
  let cursor = null;
  const rows = h('tbody');
  const more = button('More', () => run(() => load(false)), { hidden: true });
  const panel = h('section', { class: 'panel', hidden: true });
  const closePanel = () => {
    panel.replaceChildren();
    panel.hidden = true;
  };
  const openPanel = (title, onSubmit, label, ...content) => {
    panel.replaceChildren(h('h2', {}, title), form({}, onSubmit, ...content,
      h('div', { class: 'row' }, h('button', { type: 'submit' }, label), button('Cancel', closePanel))));
    panel.hidden = false;
  };

  // A page of users at a time, like the keys view: `reset` starts again from the first.
  async function load(reset) {
    if (reset) cursor = null;
    const page = await api('GET', 'users', { query: { cursor: cursor ?? '', limit: 100 } });
    if (reset) rows.replaceChildren();
    for (const user of page.users) rows.append(userRow(user));
    cursor = page.next_cursor ?? null;
    more.hidden = cursor === null;
    if (rows.children.length === 0) rows.append(emptyRow(3, 'No users.'));
  }

  function userRow(user) {
    const row = h('tr', {},
      h('td', {}, user.name),
      h('td', {}, user.grants.length ? user.grants.map((g) => h('div', { class: 'mono' }, grantText(g))) : 'none: its keys may call nothing'),
      h('td', { class: 'actions' },
        button('Edit grants', () => editUser(user, row)),
        button('Delete', () => run(() => deleteUser(user, row)))));
    return row;
  }

  function editUser(user, row) {
    const grants = grantsEditor(user.grants);
    openPanel(`Grants of ${user.name}`, async () => {
      const updated = await api('PATCH', 'user', { params: { name: user.name }, body: { grants: grants.read() } });
      row.replaceWith(userRow(updated));
      closePanel();
      notify(`User ${user.name} updated.`);
    }, 'Save', grants.element);
  }

  async function deleteUser(user, row) {
    if (!window.confirm(`Delete user ${user.name}? Keys that name this user stay, but the data plane refuses them until their user is changed.`)) return;
    await api('DELETE', 'user', { params: { name: user.name } });
    row.remove();
    closePanel();
    notify(`User ${user.name} deleted.`);
  }

  function createUser() {
    const name = h('input', { type: 'text', maxlength: 256, required: true, spellcheck: 'false' });
    const grants = grantsEditor([]);
    openPanel('New user', async () => {
      await api('POST', 'users', { body: { name: name.value, grants: grants.read() } });
      closePanel();
      await load(true);
      notify(`User ${name.value} created.`);
    }, 'Create', field('Name (printable ASCII, no spaces at either end; sent upstream as X-Keygate-User)', name), grants.element);
  }

  view.append(h('div', { class: 'toolbar' }, button('New user', createUser)), panel,
    table(['Name', 'Grants', ''], rows), more);
  await load(true);
}

// --- APIs, logs, stats ----------------------------------------------------------------------

async function apisView(view) {
  const { apis } = await api('GET', 'apis');
  configuredApis = apis.map((a) => a.name);
  const rows = h('tbody', {}, apis.map((a) => h('tr', {}, h('td', {}, a.name), h('td', { class: 'mono' }, a.routes.join(' ')))));
  if (apis.length === 0) rows.append(emptyRow(2, 'No APIs are configured.'));
  view.append(h('p', { class: 'muted' }, 'The [[apis]] of the configuration file; change them there.'),
    table(['Name', 'Routes'], rows));
}

const LOG_COLUMNS = ['seq', 'time', 'listener', 'client', 'key_id', 'user', 'api', 'method', 'path', 'status', 'duration_us', 'reason'];
const LOG_CLASSES = { time: 'nowrap', client: 'nowrap', key_id: 'mono nowrap', api: 'nowrap', path: 'mono' };

function logRow(record) {
  if (record.type === 'dropped') {
    return h('tr', { class: 'inactive' }, h('td', {}, text(record.seq)),
      h('td', { colspan: LOG_COLUMNS.length - 1 },
        `${text(record.count)} records lost to a full buffer (seq ${text(record.dropped_from_seq)} to ${text(record.dropped_to_seq)})`));
  }
  const time = typeof record.time_us === 'number' ? new Date(Math.floor(record.time_us / 1000)).toISOString() : '';
  return h('tr', {}, LOG_COLUMNS.map((name) =>
    h('td', { class: LOG_CLASSES[name] }, name === 'time' ? time : text(record[name]))));
}

async function logsView(view) {
  const inputs = {
    key_id: h('input', { type: 'text', pattern: 'k[0-9A-Za-z]{12}', placeholder: 'k...', spellcheck: 'false', size: 14 }),
    status: h('input', { type: 'number', min: 100, max: 599 }),
    since: h('input', { type: 'text', placeholder: '2026-11-26T12:00:00Z', spellcheck: 'false' }),
    until: h('input', { type: 'text', placeholder: '2026-11-26T13:00:00Z', spellcheck: 'false' }),
    limit: h('input', { type: 'number', min: 1, max: 1000, value: '100' }),
  };
  let query = {};
  let cursor = null;
  const rows = h('tbody');
  const older = button('Older', () => run(() => load(false)), { hidden: true });

  async function load(reset) {
    if (reset) {
      query = Object.fromEntries(Object.entries(inputs).map(([name, input]) => [name, input.value.trim()]));
      cursor = null;
    }
    const page = await api('GET', 'logs', { query: { ...query, cursor: cursor ?? '' } });
    if (reset) rows.replaceChildren();
    rows.append(...page.records.map(logRow));
    cursor = page.next_cursor;
    older.hidden = cursor === null;
    if (rows.children.length === 0) {
      rows.append(emptyRow(LOG_COLUMNS.length, cursor === null ? 'No records.' : 'None in this part of the log: look further with Older.'));
    }
  }

  view.append(
    form({ class: 'toolbar' }, () => load(true),
      field('Key id', inputs.key_id), field('Status', inputs.status), field('Since (RFC 3339)', inputs.since),
      field('Until', inputs.until), field('Per page', inputs.limit), h('button', { type: 'submit' }, 'Search')),
    h('p', { class: 'muted' }, 'Newest first. Times are UTC.'),
    table(LOG_COLUMNS, rows),
    older);
  await load(true);
}

// --- Backups --------------------------------------------------------------------------------

// A size as people read it (binary units); the exact count goes in the cell's title.
function byteSize(bytes) {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

// How often the backups view lists again while a backup is in progress (a listing is one
// directory read on a thread of keygate's own: it never waits for the backup).
const BACKUP_POLL_MS = 2000;

async function backupsView(view) {
  const rows = h('tbody');
  const backUp = button('Back up now', () => run(backUpNow));
  let creating = false;  // this page's backup request is out (it answers when the backup is made)
  let poll = null;       // the timer of the next listing, while a backup is in progress
  let loads = 0;         // listings asked for: only the latest one's answer is shown

  // 409 backups_disabled: not a failure of the operator's, a setting; say which and how.
  const showDisabled = () => {
    clearTimeout(poll);
    view.replaceChildren(h('section', { class: 'panel' },
      h('h2', {}, 'Backups are disabled'),
      h('p', {}, 'This keygate has no backup directory, so it can neither make nor list backups. ' +
        'To turn them on, set dir in the [backup] table of the config file (a directory outside ' +
        'data_dir, ideally on another disk) and restart keygate. See "Backups" in the README.')));
  };

  function backupRow(b) {
    const count = (n) => (n === null || n === undefined ? 'unknown' : String(n));
    return h('tr', {},
      h('td', { class: 'mono nowrap' }, b.name),
      h('td', { class: 'nowrap' }, b.created_at),
      h('td', { class: 'number', title: `${b.bytes} bytes` }, byteSize(b.bytes)),
      h('td', { class: 'number' }, count(b.keys)),
      h('td', { class: 'number' }, count(b.users)),
      h('td', { class: 'mono' }, b.path));
  }

  // Lists the backups; while one is in progress (or this page's is still out) lists again
  // every BACKUP_POLL_MS, until the view is left.
  async function load() {
    clearTimeout(poll);
    poll = null;
    const mine = ++loads;
    let listing;
    try {
      listing = await api('GET', 'backups');
    } catch (err) {
      if (err instanceof ApiError && err.code === 'backups_disabled') return showDisabled();
      throw err;
    }
    // The operator moved on to another view, or a later listing (a click, the end of a backup)
    // was asked for meanwhile: that one shows, and polls.
    if (!rows.isConnected || mine !== loads) return;
    rows.replaceChildren();
    const progress = listing.in_progress;
    if (progress !== null) {
      rows.append(h('tr', { class: 'inactive' }, h('td', { colspan: 6 },
        `A backup started at ${text(progress.started_at)} is in progress: it is listed here once it is complete.`)));
    } else if (creating) {
      rows.append(h('tr', { class: 'inactive' }, h('td', { colspan: 6 }, 'The backup asked for is about to start.')));
    }
    rows.append(...listing.backups.map(backupRow));
    if (rows.children.length === 0) rows.append(emptyRow(6, 'No backups yet.'));
    if (progress !== null || creating) {
      poll = setTimeout(() => {
        if (rows.isConnected) load().catch(showError);
      }, BACKUP_POLL_MS);
    }
  }

  async function backUpNow() {
    creating = true;
    backUp.disabled = true;
    backUp.textContent = 'Backing up...';
    notify('Backup started. On the same disk as the store it takes a moment; copied to another ' +
      'disk, about as long as copying the store. Key changes go on meanwhile.');
    load().catch(showError);
    let made;
    try {
      made = await api('POST', 'backups');
    } catch (err) {
      clearMessages();
      if (err instanceof ApiError && err.code === 'backups_disabled') return showDisabled();
      throw err;  // shown by run(): 500 backup_failed says why (a full disk, permissions)
    } finally {
      creating = false;
      backUp.disabled = false;
      backUp.textContent = 'Back up now';
    }
    const many = (n, noun) => `${n} ${noun}${n === 1 ? '' : 's'}`;
    notify(`Backup ${made.name} made: ${many(made.keys, 'key')}, ${many(made.users, 'user')}, ${byteSize(made.bytes)}.`);
    if (rows.isConnected) await load();
  }

  view.append(
    h('div', { class: 'toolbar' }, backUp, button('Refresh', () => run(load))),
    h('p', { class: 'muted' }, 'Complete backups, newest first; times are UTC. Each is a data ' +
      'directory keygate can start on; to restore one, see "Backups" in the README. Sizes count ' +
      'files hard-linked with the live store in full.'),
    table(['Name', 'Created', 'Size', 'Keys', 'Users', 'Path'], rows));
  await load();
}

async function statsView(view) {
  const stats = await api('GET', 'stats');
  view.append(h('div', { class: 'toolbar' }, button('Refresh', () => show('stats'))));
  for (const [group, values] of Object.entries(stats)) {
    view.append(h('h2', {}, group));
    if (values === null) {
      view.append(h('p', { class: 'muted' }, 'disabled'));
      continue;
    }
    view.append(table(['Counter', 'Value'], h('tbody', {},
      Object.entries(values).map(([name, value]) => h('tr', {}, h('td', {}, name), h('td', { class: 'number' }, text(value)))))));
  }
}
