// The web UI of the storage migration service: one page, plain DOM, no build step.
//
// It calls the REST API under /api with "Authorization: Bearer <token>". The token is
// asked for once and kept in this tab's sessionStorage: never in a URL, a cookie or
// localStorage. Server data is only ever put on the page with textContent (never as
// HTML). Live counters come from polling the API while something runs.
'use strict';

const TOKEN_KEY = 'sms.apiToken';
const POLL_MS = 1500;
const ERROR_ROWS = 200;
const TABS = [['inventory', 'Inventory'], ['transfer', 'Transfer'], ['cutover', 'Cutover']];
const RUNNING = new Set(['pending', 'running']);

let timers = [];
let generation = 0;  // bumped on every page change: late answers of an old page are dropped
let refreshHead = async () => {};  // the job page's state badge and events, after actions and while polling

// --- small helpers ----------------------------------------------------------------------

/** An element: h('td', {class: 'num', dataset: {field: 'x'}}, 'text', child, [more]). */
function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

const numberFormat = new Intl.NumberFormat('en-US');
function num(value) { return value === null || value === undefined ? '—' : numberFormat.format(value); }

function bytes(value) {
  if (value === null || value === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let size = Number(value);
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
  return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
}

function when(value) {
  if (!value) return '—';
  return String(value).replace('T', ' ').replace(/\.\d+/, '').replace(/(\+00:00|Z)$/, ' UTC');
}

function yesNo(value) { return value === null || value === undefined ? '—' : (value ? 'yes' : 'no'); }

function badge(state) { return h('span', {class: `badge state-${state}`}, String(state).replace(/_/g, ' ')); }

function progressBar(fraction, label) {
  const percent = Math.max(0, Math.min(100, Math.round((fraction || 0) * 1000) / 10));
  const bar = h('div', {class: 'bar'});
  bar.style.width = `${percent}%`;  // through CSSOM: the CSP allows no inline style attribute
  return h('div', {class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100',
                   'aria-valuenow': String(percent), title: label || `${percent}%`},
           bar, h('span', {}, label || `${percent}%`));
}

/** A table: columns are [header, cell(row), {class, field}] triples. */
function table(columns, rows, {empty = 'Nothing yet.', rowKey} = {}) {
  if (!rows.length) return h('p', {class: 'empty'}, empty);
  return h('table', {},
    h('thead', {}, h('tr', {}, columns.map(([title, , opts]) => h('th', {class: opts && opts.class}, title)))),
    h('tbody', {}, rows.map((row) => h('tr', {dataset: rowKey ? {key: rowKey(row)} : undefined},
      columns.map(([, cell, opts]) => h('td', {class: opts && opts.class,
                                               dataset: opts && opts.field ? {field: opts.field} : undefined},
                                        cell(row)))))));
}

function section(title, ...children) { return h('section', {}, h('h2', {}, title), children); }

function definitions(pairs) {
  return h('dl', {class: 'facts'}, pairs.filter(([, value]) => value !== undefined)
    .map(([term, value]) => [h('dt', {}, term), h('dd', {}, value === null || value === '' ? '—' : value)]));
}

function notice(message, kind = 'error') {
  const box = document.getElementById('notice');
  box.className = kind;
  box.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  fill(box, message, ' ', h('button', {type: 'button', class: 'link', onclick: () => { box.hidden = true; }}, 'dismiss'));
  box.hidden = false;
}

function clearNotice() { document.getElementById('notice').hidden = true; }

/** Call action every ms milliseconds for as long as it answers true and the page stays. */
function every(ms, action) {
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    let again = true;
    try { again = await action(); } catch (error) { if (!(error instanceof Unauthorized)) notice(error.message); }
    if (again && mine === generation) timers.push(setTimeout(tick, ms));
  };
  timers.push(setTimeout(tick, ms));
}

function stopTimers() { timers.forEach(clearTimeout); timers = []; }

// --- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
class Unauthorized extends ApiError {}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

async function request(method, path, body) {
  const headers = {Authorization: `Bearer ${token()}`, Accept: 'application/json'};
  const init = {method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer'};
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const answer = await fetch(`/api${path}`, init);
  if (answer.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('The API refused the token: enter it again.');
    throw new Unauthorized(401, 'unauthorized');
  }
  return answer;
}

async function api(method, path, body) {
  const answer = await request(method, path, body);
  const type = answer.headers.get('content-type') || '';
  const data = type.includes('json') ? await answer.json() : await answer.text();
  if (!answer.ok) {
    const detail = data && data.detail ? data.detail : `${answer.status} ${answer.statusText}`;
    throw new ApiError(answer.status, typeof detail === 'string' ? detail : JSON.stringify(detail));
  }
  return data;
}

const get = (path) => api('GET', path);
const post = (path, body) => api('POST', path, body === undefined ? {} : body);
const jobPath = (job) => `/jobs/${encodeURIComponent(job)}`;

/** Download a CSV log through fetch (the token goes in a header, so no plain link can do it). */
async function download(path, filename) {
  const answer = await request('GET', path);
  if (!answer.ok) throw new ApiError(answer.status, `download failed: ${answer.status}`);
  const url = URL.createObjectURL(await answer.blob());
  const link = h('a', {href: url, download: filename, hidden: true});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Run an action from a button or form: disable it meanwhile, show the API's message on error. */
async function act(control, action) {
  clearNotice();
  if (control) control.disabled = true;
  try {
    return await action();
  } catch (error) {
    if (!(error instanceof Unauthorized)) notice(error.message);
    return undefined;
  } finally {
    if (control) control.disabled = false;
  }
}

function formValues(form) {
  const values = {};
  for (const element of form.elements) {
    if (!element.name) continue;
    if (element.type === 'checkbox') values[element.name] = element.checked;
    else if (element.type === 'number') values[element.name] = element.value === '' ? null : Number(element.value);
    else values[element.name] = element.value.trim();
  }
  return values;
}

function field(label, input, hint) {
  return h('label', {class: 'field'}, h('span', {}, label), input, hint ? h('small', {}, hint) : null);
}

function select(name, options, value) {
  return h('select', {name}, options.map(([key, text]) => h('option', {value: key, selected: key === value}, text)));
}

// --- sign in ------------------------------------------------------------------------------

function showLogin(message) {
  generation += 1;
  stopTimers();
  document.getElementById('sign-out').hidden = true;
  fill(document.getElementById('crumbs'));
  const input = h('input', {type: 'password', name: 'token', id: 'token', autocomplete: 'off', required: true,
                            minlength: '16', spellcheck: 'false'});
  const form = h('form', {class: 'card login', onsubmit: async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    const ok = await act(form.querySelector('button'), () => get('/jobs'));
    if (ok !== undefined) route();
  }},
  h('h1', {}, 'Sign in'),
  h('p', {}, 'Enter the API token: SMS_API_TOKEN, or the contents of STATE_DIR/api.token on the orchestrator. ',
    'It stays in this browser tab only.'),
  field('API token', input),
  h('button', {type: 'submit'}, 'Sign in'));
  fill(document.getElementById('main'), form);
  if (message) notice(message); else clearNotice();
  input.focus();
}

// --- the jobs list ------------------------------------------------------------------------

async function jobsPage(main) {
  const jobs = await get('/jobs');
  fill(document.getElementById('crumbs'), h('span', {}, 'Jobs'));
  const form = h('form', {class: 'inline', id: 'create-job', onsubmit: (event) => {
    event.preventDefault();
    act(form.querySelector('button'), async () => {
      const values = formValues(form);
      const job = await post('/jobs', values);
      location.hash = `#/jobs/${encodeURIComponent(job.name)}/inventory`;
    });
  }},
  field('Name', h('input', {name: 'name', required: true, maxlength: '200'})),
  field('Description', h('input', {name: 'description', maxlength: '10000'})),
  h('button', {type: 'submit'}, 'Create job'));
  const count = (job, role) => job.servers.filter((s) => s.role === role).length;
  fill(main,
    section('Jobs', table([
      ['Name', (job) => h('a', {href: `#/jobs/${encodeURIComponent(job.name)}/inventory`}, job.name)],
      ['State', (job) => badge(job.state)],
      ['Sources', (job) => num(count(job, 'source')), {class: 'num'}],
      ['Destinations', (job) => num(count(job, 'destination')), {class: 'num'}],
      ['Created', (job) => when(job.created_at)],
      ['Description', (job) => job.description],
    ], jobs, {empty: 'No job yet: create one below.', rowKey: (job) => job.name})),
    section('New job', form));
}

// --- a job --------------------------------------------------------------------------------

async function jobPage(main, name, tab, runId) {
  const job = await get(`${jobPath(name)}?events=30`);
  fill(document.getElementById('crumbs'), h('a', {href: '#/'}, 'Jobs'), ' / ', h('span', {}, job.name));
  const body = h('div', {id: 'tab'});
  const events = h('div', {id: 'events'});
  const state = h('span', {id: 'job-state'}, badge(job.state));
  refreshHead = async () => {
    const fresh = await get(`${jobPath(job.name)}?events=30`);
    fill(state, badge(fresh.state));
    renderEvents(events, fresh.events);
  };
  fill(main,
    h('div', {class: 'job-head'}, h('h1', {}, job.name), state,
      job.description ? h('p', {class: 'muted'}, job.description) : null),
    h('nav', {class: 'tabs'}, TABS.map(([key, title]) =>
      h('a', {href: `#/jobs/${encodeURIComponent(job.name)}/${key}`, class: key === tab ? 'active' : '',
              'aria-current': key === tab ? 'page' : false}, title))),
    body, events);
  renderEvents(events, job.events);
  if (tab === 'transfer') await transferTab(body, job, runId);
  else if (tab === 'cutover') await cutoverTab(body, job);
  else await inventoryTab(body, job);
}

function renderEvents(node, events) {
  fill(node, section('Latest events', table([
    ['When', (e) => when(e.at)],
    ['Level', (e) => h('span', {class: `level-${e.level}`}, e.level)],
    ['Event', (e) => e.kind],
    ['Message', (e) => e.message],
  ], events.slice().reverse(), {empty: 'No events.'})));
}

// --- inventory ----------------------------------------------------------------------------

function managementSummary(server) {
  const m = server.management || {};
  if (server.kind === 'samba') return `SSH ${m.ssh_user || '?'}@${m.ssh_host || server.address}:${m.ssh_port || 22}`;
  if (server.kind === 'windows') {
    return `WinRM ${m.winrm_transport || 'ntlm'} over ${m.winrm_https === false ? 'HTTP (encrypted message)' : 'HTTPS'}`;
  }
  return 'SMB only';
}

function serverForm(job, onAdded) {
  const samba = h('fieldset', {class: 'kind-samba', hidden: true}, h('legend', {}, 'Samba over SSH'),
    field('SSH user', h('input', {name: 'ssh_user'})),
    field('known_hosts file', h('input', {name: 'known_hosts'}), 'on the orchestrator; host keys are never learnt'),
    field('SSH host', h('input', {name: 'ssh_host', placeholder: 'default: the address'})),
    field('SSH port', h('input', {name: 'ssh_port', type: 'number', min: '1', max: '65535', value: '22'})),
    field('Private key file', h('input', {name: 'key_file'})),
    field('SSH password', h('input', {name: 'ssh_password', type: 'password', autocomplete: 'new-password'})));
  const windows = h('fieldset', {class: 'kind-windows', hidden: true}, h('legend', {}, 'Windows over WinRM'),
    field('Transport', select('transport', [['ntlm', 'NTLM'], ['kerberos', 'Kerberos'], ['credssp', 'CredSSP']], 'ntlm')),
    field('HTTPS', h('input', {name: 'use_https', type: 'checkbox', checked: true})),
    field('Verify certificate', h('input', {name: 'verify_certificate', type: 'checkbox', checked: true})));
  const kind = select('kind', [['smb-only', 'SMB only'], ['samba', 'Samba (SSH)'], ['windows', 'Windows (WinRM)']], 'smb-only');
  kind.addEventListener('change', () => {
    samba.hidden = kind.value !== 'samba';
    windows.hidden = kind.value !== 'windows';
  });
  const form = h('form', {id: 'add-server', class: 'grid', onsubmit: (event) => {
    event.preventDefault();
    act(form.querySelector('button[type=submit]'), async () => {
      const v = formValues(form);
      const body = {name: v.name, role: v.role, kind: v.kind, address: v.address, port: v.port || 445,
                    username: v.username};
      if (v.password) body.password = v.password;
      if (v.kind === 'samba') {
        body.samba = {ssh_user: v.ssh_user, known_hosts: v.known_hosts, ssh_port: v.ssh_port || 22};
        if (v.ssh_host) body.samba.ssh_host = v.ssh_host;
        if (v.key_file) body.samba.key_file = v.key_file;
        if (v.ssh_password) body.samba.ssh_password = v.ssh_password;
      } else if (v.kind === 'windows') {
        body.windows = {transport: v.transport, use_https: v.use_https, verify_certificate: v.verify_certificate};
      }
      await post(`${jobPath(job.name)}/servers`, body);
      await refreshHead();
      form.reset();
      samba.hidden = true;
      windows.hidden = true;
      notice(`Server ${body.name} added.`, 'ok');
      await onAdded();
    });
  }},
  field('Name', h('input', {name: 'name', required: true})),
  field('Role', select('role', [['source', 'source'], ['destination', 'destination']], 'source')),
  field('Kind', kind),
  field('Address', h('input', {name: 'address', required: true, placeholder: 'name or IP'})),
  field('SMB port', h('input', {name: 'port', type: 'number', min: '1', max: '65535', value: '445'})),
  field('Account', h('input', {name: 'username', required: true, placeholder: 'DOMAIN\\user'})),
  field('Password', h('input', {name: 'password', type: 'password', autocomplete: 'new-password'}),
        'stored encrypted, never shown again'),
  samba, windows,
  h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Add server')));
  return form;
}

function serversTable(servers) {
  return table([
    ['Name', (s) => s.name],
    ['Role', (s) => s.role],
    ['Kind', (s) => s.kind],
    ['Address', (s) => `${s.address}:${s.port}`],
    ['Account', (s) => s.username],
    ['Password', (s) => (s.password_stored ? 'stored (encrypted)' : 'none')],
    ['Management', managementSummary],
  ], servers, {empty: 'No server yet: add the source and destination servers.', rowKey: (s) => s.name});
}

function sharePermissions(share) {
  const access = (share.properties && share.properties.access) || [];
  if (access.length) return access.map((a) => `${a.trustee}: ${a.access_type} ${a.right}`).join('; ');
  if (share.security_descriptor) return `descriptor, ${share.security_descriptor.length / 2} bytes`;
  return '—';
}

function userLimit(share) {
  const limit = share.max_uses;
  if (limit === null || limit === undefined) return '—';
  return limit <= 0 || limit === 4294967295 ? 'unlimited' : num(limit);  // 0 and -1 mean no limit
}

function shareType(share) {
  const reported = share.properties && share.properties.share_type;
  const special = share.properties && share.properties.special ? ' (special)' : '';
  return `${reported || share.share_type}${special}`;
}

function serverInventory(server) {
  const facts = server.facts;
  const adapters = (facts && facts.network_adapters) || [];
  return h('article', {class: 'server', dataset: {server: server.name}},
    h('h3', {}, `${server.name} `, h('span', {class: 'muted'}, `${server.kind} · ${server.address}`)),
    facts ? definitions([
      ['Computer name', facts.hostname], ['Domain', facts.domain], ['Operating system', facts.os_name],
      ['Version', facts.os_version], ['Machine SID', facts.machine_sid], ['Collected', when(facts.collected_at)],
    ]) : h('p', {class: 'empty'}, 'Not inventoried yet.'),
    adapters.length ? [h('h4', {}, 'Network adapters'), table([
      ['Adapter', (a) => a.name],
      ['Addresses', (a) => (a.addresses || []).map((ip) => `${ip.address}/${ip.prefix_length}`).join(', ')],
      ['Gateways', (a) => (a.gateways || []).join(', ')],
      ['DNS', (a) => (a.dns_servers || []).join(', ')],
      ['DHCP', (a) => yesNo(a.dhcp)],
    ], adapters.filter((a) => !a.loopback), {empty: 'Only loopback adapters.'})] : null,
    h('h4', {}, 'Volumes'), table([
      ['Mount point', (v) => v.mount_point],
      ['File system', (v) => v.filesystem],
      ['Size', (v) => bytes(v.size_bytes), {class: 'num'}],
      ['Free', (v) => bytes(v.free_bytes), {class: 'num'}],
    ], server.volumes || [], {empty: 'No volume information (SMB-only servers do not report volumes).'}),
    h('h4', {}, 'Shares'), table([
      ['Share', (s) => s.name, {field: 'name'}],
      ['Path', (s) => s.path],
      ['Description', (s) => s.remark],
      ['Type', shareType],
      ['Access-based enum.', (s) => yesNo(s.access_based_enumeration)],
      ['Caching', (s) => s.caching_mode || '—'],
      ['Encrypt', (s) => yesNo(s.encrypt_data)],
      ['Cont. available', (s) => yesNo(s.continuously_available)],
      ['User limit', userLimit],
      ['Permissions', sharePermissions],
      ['Scan', (s) => badge(s.scan.state.replace(/ /g, '_')), {field: 'scan'}],
      ['Files', (s) => num(s.scan.files), {class: 'num', field: 'files'}],
      ['Folders', (s) => num(s.scan.directories), {class: 'num', field: 'directories'}],
      ['Size', (s) => bytes(s.scan.bytes), {class: 'num', field: 'bytes'}],
      ['Errors', (s) => num(s.scan.errors), {class: 'num', field: 'errors'}],
    ], server.shares, {empty: 'No share found yet.', rowKey: (s) => s.name}),
    h('h4', {}, `Local users (${server.users.length})`), table([
      ['Name', (u) => u.name], ['SID', (u) => u.sid], ['Enabled', (u) => yesNo(u.enabled)],
      ['Description', (u) => u.description],
    ], server.users, {empty: 'None reported.'}),
    h('h4', {}, `Local groups (${server.groups.length})`), table([
      ['Name', (g) => g.name], ['SID', (g) => g.sid], ['Members', (g) => (g.members || []).join(', ')],
      ['Description', (g) => g.description],
    ], server.groups, {empty: 'None reported.'}),
    server.errors.length ? [h('h4', {}, 'Errors'), table([
      ['When', (e) => when(e.at)], ['What', (e) => e.kind], ['Message', (e) => e.message],
    ], server.errors)] : null);
}

function countCards(counts) {
  const cards = [['servers', 'Source servers', num], ['shares', 'Shares', num], ['volumes', 'Volumes', num],
    ['users', 'Users', num], ['groups', 'Groups', num], ['files', 'Files', num],
    ['directories', 'Folders', num], ['bytes', 'Size', bytes], ['scan_errors', 'Scan errors', num],
    ['server_errors', 'Server errors', num]];
  return h('div', {class: 'cards', id: 'inventory-counts'}, cards.map(([key, title, format]) =>
    h('div', {class: 'card', dataset: {count: key}}, h('div', {class: 'value'}, format(counts[key])),
      h('div', {class: 'label'}, title))));
}

async function inventoryTab(node, job) {
  const servers = h('div', {id: 'servers'});
  const results = h('div', {id: 'inventory'});
  const refreshServers = async () => fill(servers, serversTable(await get(`${jobPath(job.name)}/servers`)));
  const refreshInventory = async () => {
    const inventory = await get(`${jobPath(job.name)}/inventory`);
    fill(results, countCards(inventory.counts), inventory.servers.map(serverInventory));
    await refreshHead();
    return inventory.servers.some((s) => s.shares.some((share) => share.scan.state === 'running'));
  };
  const poll = () => every(POLL_MS * 2, refreshInventory);
  const options = h('form', {class: 'inline', id: 'run-inventory', onsubmit: (event) => {
    event.preventDefault();
    act(options.querySelector('button'), async () => {
      const v = formValues(options);
      const report = await post(`${jobPath(job.name)}/inventory`, v);
      const failed = report.servers.filter((s) => Object.keys(s.errors).length);
      notice(failed.length
        ? `Inventory finished with ${report.error_count} error(s): ${failed.map((s) => `${s.name}: ${Object.values(s.errors).join('; ')}`).join(' | ')}`
        : `Inventory read ${report.servers.length} server(s); ${report.scans_queued} share scan(s) queued.`,
      failed.length ? 'error' : 'ok');
      stopTimers();
      if (await refreshInventory()) poll();
    });
  }},
  field('Include administrative shares', h('input', {type: 'checkbox', name: 'include_admin_shares'})),
  field('Scan files', h('input', {type: 'checkbox', name: 'scan_files', checked: true})),
  h('button', {type: 'submit'}, 'Run inventory'));
  fill(node,
    section('Servers', servers, h('details', {class: 'add', open: job.servers.length < 2},
      h('summary', {}, 'Add a server'), serverForm(job, refreshServers))),
    section('Inventory', h('p', {class: 'muted'},
      'Reads each source server\'s identity, addresses, volumes, shares with their properties and permissions, ' +
      'local users and groups; the file scan of each share runs on orchestrator workers.'), options, results));
  await refreshServers();
  if (await refreshInventory()) poll();
}

// --- transfer -----------------------------------------------------------------------------

function pairingForm(job, sources, destinations, onPaired) {
  const shares = h('div', {class: 'checks', id: 'pair-shares'});
  const source = select('source', sources.map((s) => [s.name, s.name]), sources[0] && sources[0].name);
  const showShares = async () => {
    const inventory = await get(`${jobPath(job.name)}/inventory`);
    const server = inventory.servers.find((s) => s.name === source.value);
    const names = server ? server.shares.map((s) => s.name) : [];
    fill(shares, names.length ? names.map((name) => h('label', {class: 'check'},
      h('input', {type: 'checkbox', name: `share:${name}`, value: name, checked: true}), name))
      : h('span', {class: 'muted'}, 'No inventoried share: run the inventory first (or the pairing takes all).'));
  };
  source.addEventListener('change', () => act(null, showShares));
  const form = h('form', {id: 'pair', class: 'grid', onsubmit: (event) => {
    event.preventDefault();
    act(form.querySelector('button'), async () => {
      const chosen = [...shares.querySelectorAll('input:checked')].map((input) => input.value);
      await post(`${jobPath(job.name)}/pairings`, {source: source.value, destination: form.elements.destination.value,
                                                    shares: chosen});
      notice(`Paired ${source.value} with ${form.elements.destination.value}.`, 'ok');
      await onPaired();
    });
  }},
  field('Source', source),
  field('Destination', select('destination', destinations.map((s) => [s.name, s.name]),
                              destinations[0] && destinations[0].name)),
  h('div', {class: 'wide'}, h('span', {class: 'label'}, 'Shares'), shares),
  h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Pair')));
  act(null, showShares);
  return form;
}

function startForm(job, pairings, onStarted) {
  const form = h('form', {id: 'start-transfer', class: 'inline', onsubmit: (event) => {
    event.preventDefault();
    act(form.querySelector('button'), async () => {
      const v = formValues(form);
      const body = {checksum: v.checksum, retries: v.retries ?? 3, copy_sacl: v.copy_sacl,
                    migrate_principals: v.migrate_principals, max_duration: v.max_duration ?? 0};
      if (v.pairing) body.pairing_ids = [Number(v.pairing)];
      const started = await post(`${jobPath(job.name)}/transfers`, body);
      notice(`Transfer run(s) ${started.run_ids.join(', ')} started.`, 'ok');
      await onStarted(started.run_ids[0]);
    });
  }},
  field('Pairing', select('pairing', [['', 'all pairings'],
    ...pairings.map((p) => [String(p.id), `${p.source} → ${p.destination}`])], '')),
  field('Validation', select('checksum', [['none', 'none (hash while copying)'], ['fast', 'fast hash, re-read'],
                                          ['sha256', 'SHA-256, re-read']], 'fast')),
  field('Retries', h('input', {type: 'number', name: 'retries', min: '0', max: '100', value: '3'})),
  field('Local users and groups', select('migrate_principals', [['rename', 'migrate, rename conflicts'],
    ['merge', 'migrate, merge with existing'], ['skip', 'do not migrate']], 'rename')),
  field('Max duration (s)', h('input', {type: 'number', name: 'max_duration', min: '0', value: '0'}), '0: no limit'),
  field('Copy SACL', h('input', {type: 'checkbox', name: 'copy_sacl'})),
  h('button', {type: 'submit', disabled: !pairings.length}, 'Start transfer'));
  return form;
}

async function transferTab(node, job, selected) {
  const pairingsNode = h('div', {id: 'pairings'});
  const runsNode = h('div', {id: 'runs'});
  const runNode = h('div', {id: 'run'});
  const sources = job.servers.filter((s) => s.role === 'source');
  const destinations = job.servers.filter((s) => s.role === 'destination');
  let current = selected ? Number(selected) : null;

  const refreshRuns = async () => {
    const runs = await get(`${jobPath(job.name)}/transfers`);
    await refreshHead();
    fill(runsNode, table([
      ['Run', (r) => h('a', {href: `#/jobs/${encodeURIComponent(job.name)}/transfer/${r.id}`}, `#${r.id}`)],
      ['Pairing', (r) => r.pairing_id, {class: 'num'}],
      ['State', (r) => badge(r.state)],
      ['Files', (r) => `${num(r.files_copied + r.files_skipped)} / ${num(r.files_total)}`, {class: 'num'}],
      ['Failed', (r) => num(r.files_failed), {class: 'num'}],
      ['Copied', (r) => `${bytes(r.bytes_copied)} / ${bytes(r.bytes_total)}`, {class: 'num'}],
      ['Validation', (r) => (r.options && r.options.checksum) || '—'],
      ['Started', (r) => when(r.started_at)],
      ['Ended', (r) => when(r.ended_at)],
    ], runs, {empty: 'No transfer run yet.', rowKey: (r) => String(r.id)}));
    return runs;
  };
  const refreshPairings = async () => {
    const pairings = await get(`${jobPath(job.name)}/pairings`);
    fill(pairingsNode, table([
      ['Pairing', (p) => `#${p.id}`],
      ['Source', (p) => p.source],
      ['Destination', (p) => p.destination],
      ['Shares', (p) => (p.shares.length ? p.shares.join(', ') : 'all inventoried')],
      ['Path mapping', (p) => Object.entries(p.path_mapping).map(([a, b]) => `${a} → ${b}`).join('; ') || '—'],
    ], pairings, {empty: 'No pairing yet: pair a source with a destination.'}),
    startForm(job, pairings, async (runId) => { location.hash = `#/jobs/${encodeURIComponent(job.name)}/transfer/${runId}`; }));
  };
  const watch = () => every(POLL_MS, async () => {
    const running = await showRun(runNode, job, current);
    if (!running) await refreshRuns();
    return running;
  });

  fill(node,
    section('Pairings', pairingsNode, sources.length && destinations.length
      ? h('details', {class: 'add'}, h('summary', {}, 'Pair a source with a destination'),
        pairingForm(job, sources, destinations, refreshPairings))
      : h('p', {class: 'empty'}, 'Add at least one source and one destination server first (Inventory tab).')),
    section('Transfer runs', runsNode),
    runNode);
  await refreshPairings();
  const runs = await refreshRuns();
  if (current === null && runs.length) current = runs[0].id;
  if (current !== null && (await showRun(runNode, job, current))) watch();
  const pairingDetails = node.querySelector('details.add');
  if (pairingDetails && !runs.length) pairingDetails.open = true;
}

/** Show one run: counters, per-share progress, reconciliation, errors, logs. True while it runs. */
async function showRun(node, job, runId) {
  const base = `${jobPath(job.name)}/transfers/${runId}`;
  const [run, errors] = await Promise.all([get(base), get(`${base}/errors?limit=${ERROR_ROWS}`)]);
  const recon = run.reconciliation;
  const done = run.files_copied + run.files_skipped + run.files_failed;
  const running = RUNNING.has(run.state);
  const counters = [['files_total', 'Files to consider', run.files_total, num],
    ['files_copied', 'Copied', run.files_copied, num], ['files_skipped', 'Unchanged', run.files_skipped, num],
    ['files_failed', 'Failed', run.files_failed, num], ['bytes_copied', 'Bytes copied', run.bytes_copied, bytes],
    ['bytes_total', 'Bytes to copy', run.bytes_total, bytes]];
  const logName = (kind) => `transfer-run-${runId}${kind === 'errors' ? '-errors' : ''}.csv`;
  fill(node, h('section', {id: 'run-detail', dataset: {run: String(runId), state: run.state}},
    h('h2', {}, `Run #${runId} `, badge(run.state)),
    run.error ? h('p', {class: 'error-text'}, run.error) : null,
    progressBar(run.files_total ? done / run.files_total : (running ? 0 : 1),
                `${num(done)} of ${num(run.files_total)} files`),
    h('div', {class: 'cards'}, counters.map(([key, title, value, format]) =>
      h('div', {class: 'card', dataset: {counter: key}}, h('div', {class: 'value'}, format(value)),
        h('div', {class: 'label'}, title)))),
    h('p', {class: 'muted'}, 'Batches: ', Object.entries(run.batches).filter(([, n]) => n)
      .map(([state, n]) => `${state} ${num(n)}`).join(' · ') || 'none yet'),
    h('div', {class: 'actions'},
      h('button', {type: 'button', onclick: (e) => act(e.target, () => download(`${base}/logs/transfer.csv`, logName('transfer')))},
        'Download transfer log (CSV)'),
      h('button', {type: 'button', onclick: (e) => act(e.target, () => download(`${base}/logs/errors.csv`, logName('errors')))},
        'Download error log (CSV)'),
      running ? h('button', {type: 'button', class: 'danger', onclick: (e) => act(e.target, async () => {
        await post(`${base}/cancel`);
        await showRun(node, job, runId);
      })}, 'Cancel run') : null),
    h('h3', {}, 'Reconciliation ', h('span', {id: 'verdict', class: recon.clean ? 'ok-text' : (running ? 'muted' : 'error-text')},
      recon.clean ? 'clean: every file accounted for' : (running ? 'in progress' : 'NOT clean'))),
    h('div', {id: 'reconciliation'}, table([
      ['Share', (s) => s.share, {field: 'share'}],
      ['Progress', (s) => progressBar(s.files ? (s.copied + s.unchanged + s.failed + s.mismatched) / s.files : 0)],
      ['Files', (s) => num(s.files), {class: 'num', field: 'files'}],
      ['Folders', (s) => num(s.directories), {class: 'num', field: 'directories'}],
      ['Copied (with folders)', (s) => num(s.copied), {class: 'num', field: 'copied'}],
      ['Verified', (s) => num(s.verified), {class: 'num', field: 'verified'}],
      ['Unchanged', (s) => num(s.unchanged), {class: 'num', field: 'unchanged'}],
      ['Missing', (s) => num(s.missing), {class: 'num', field: 'missing'}],
      ['Mismatched', (s) => num(s.mismatched), {class: 'num', field: 'mismatched'}],
      ['Failed', (s) => num(s.failed), {class: 'num', field: 'failed'}],
      ['Walk errors', (s) => num(s.walk_errors), {class: 'num', field: 'walk_errors'}],
      ['Mirror errors', (s) => num(s.mirror_errors), {class: 'num', field: 'mirror_errors'}],
      ['Bytes copied', (s) => bytes(s.copied_bytes), {class: 'num', field: 'copied_bytes'}],
      ['Clean', (s) => (s.clean ? 'yes' : 'no'), {field: 'clean'}],
    ], recon.shares, {empty: 'No file record yet.', rowKey: (s) => s.share})),
    h('h3', {}, `Errors (${num(errors.total)})`),
    h('div', {id: 'errors'}, table([
      ['Share', (e) => e.share], ['Path', (e) => e.path], ['Type', (e) => e.type], ['Result', (e) => e.result],
      ['Code', (e) => e.error_code], ['Message', (e) => e.error_message],
    ], errors.errors, {empty: 'No error.'}),
    errors.total > errors.errors.length
      ? h('p', {class: 'muted'}, `First ${num(errors.errors.length)} shown; download the error log for all.`) : null)));
  return running;
}

// --- cutover ------------------------------------------------------------------------------

function cutoverForm(job, sources, onPlanned) {
  const form = h('form', {id: 'plan-cutover', class: 'grid', onsubmit: (event) => {
    event.preventDefault();
    act(form.querySelector('button'), async () => {
      const v = formValues(form);
      const body = {source: v.source, source_new_address: v.new_address, source_new_prefix_length: v.new_prefix,
        addresses: [{address: v.address, prefix_length: v.prefix, source_interface: v.source_interface,
                     destination_interface: v.destination_interface}],
        timeout_seconds: v.timeout || 3600, override_reconciliation: v.override};
      if (v.new_name) body.source_new_name = v.new_name;
      if (v.maintenance) body.maintenance_hosts = v.maintenance.split(/[\s,]+/).filter(Boolean);
      const run = await post(`${jobPath(job.name)}/cutovers`, body);
      notice(`Cutover #${run.id} planned: start it when users are ready to move.`, 'ok');
      form.reset();
      await onPlanned();
    });
  }},
  field('Source', select('source', sources.map((s) => [s.name, s.name]), sources[0] && sources[0].name)),
  field('Address users reach', h('input', {name: 'address', required: true, placeholder: '10.0.0.5'})),
  field('Prefix length', h('input', {name: 'prefix', type: 'number', min: '1', max: '32', value: '24'})),
  field('Source interface', h('input', {name: 'source_interface', required: true, placeholder: 'eth0'})),
  field('Destination interface', h('input', {name: 'destination_interface', required: true, placeholder: 'eth0'})),
  field('Source\'s new address', h('input', {name: 'new_address', required: true})),
  field('New prefix length', h('input', {name: 'new_prefix', type: 'number', min: '1', max: '32', value: '24'})),
  field('Source\'s new name', h('input', {name: 'new_name', placeholder: 'default: SMS-XXXXXXXX'})),
  field('Maintenance hosts', h('input', {name: 'maintenance', placeholder: 'hosts still allowed on the source'})),
  field('Timeout (s)', h('input', {name: 'timeout', type: 'number', min: '1', value: '3600'})),
  field('Override an unclean reconciliation', h('input', {name: 'override', type: 'checkbox'})),
  h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Plan cutover')));
  return form;
}

function cutoverRun(job, run, refresh) {
  const base = `${jobPath(job.name)}/cutovers/${run.id}`;
  const action = (title, path, cls) => h('button', {type: 'button', class: cls, onclick: (e) => act(e.target, async () => {
    const answer = await post(`${base}/${path}`);
    if (answer.failures && answer.failures.length) notice(`Rollback left: ${answer.failures.join('; ')}`);
    await refresh();
  })}, title);
  return h('article', {class: 'cutover', dataset: {cutover: String(run.id), state: run.state}},
    h('h3', {}, `Cutover #${run.id} `, badge(run.state), ' ',
      h('span', {class: 'muted'}, run.source ? `${run.source} → ${run.destination}` : `pairing #${run.pairing_id}`)),
    run.error ? h('p', {class: 'error-text'}, run.error) : null,
    definitions([['Created', when(run.created_at)], ['Started', when(run.started_at)], ['Ended', when(run.ended_at)]]),
    table([
      ['#', (s) => s.position, {class: 'num'}],
      ['Stage', (s) => s.title || s.name.replace(/_/g, ' ')],
      ['State', (s) => badge(s.state)],
      ['Progress', (s) => progressBar(s.progress)],
      ['Message', (s) => s.message],
      ['Started', (s) => when(s.started_at)],
      ['Ended', (s) => when(s.ended_at)],
    ], run.stages, {empty: 'No stage yet.'}),
    h('div', {class: 'actions'},
      run.state === 'pending' ? action('Start cutover', 'start') : null,
      run.state === 'failed' ? action('Resume at the failed stage', 'resume') : null,
      ['failed', 'succeeded'].includes(run.state) ? action('Roll back', 'rollback', 'danger') : null));
}

async function cutoverTab(node, job) {
  const runsNode = h('div', {id: 'cutovers'});
  const sources = job.servers.filter((s) => s.role === 'source');
  const refresh = async () => {
    const runs = await get(`${jobPath(job.name)}/cutovers`);
    const detailed = await Promise.all(runs.map((run) =>
      get(`${jobPath(job.name)}/cutovers/${run.id}/status`).catch((error) => {
        if (error instanceof ApiError && error.status === 404) return run;  // an API without .../status
        throw error;
      })));
    fill(runsNode, detailed.length ? detailed.reverse().map((run) => cutoverRun(job, run, watch))
      : h('p', {class: 'empty'}, 'No cutover yet. Cut over once the last transfer run reconciles clean.'));
    await refreshHead();
    return detailed.some((run) => RUNNING.has(run.state));
  };
  const watch = async () => {
    stopTimers();
    if (await refresh()) every(POLL_MS * 2, refresh);
  };
  fill(node,
    section('Cutover', h('p', {class: 'muted'},
      'The destination takes the source\'s name and addresses; the source keeps its files under a new name and ' +
      'address. A final delta copies what changed while users were held read-only.'), runsNode,
      sources.length ? h('details', {class: 'add'}, h('summary', {}, 'Plan a cutover'), cutoverForm(job, sources, watch))
        : null));
  await watch();
}

// --- routing ------------------------------------------------------------------------------

async function route() {
  generation += 1;
  stopTimers();
  refreshHead = async () => {};
  if (!token()) { showLogin(); return; }
  document.getElementById('sign-out').hidden = false;
  const main = document.getElementById('main');
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const mine = generation;
  try {
    if (parts[0] === 'jobs' && parts[1]) await jobPage(main, parts[1], parts[2] || 'inventory', parts[3]);
    else await jobsPage(main);
  } catch (error) {
    if (error instanceof Unauthorized || mine !== generation) return;
    fill(main, h('p', {class: 'error-text'}, error.message), h('p', {}, h('a', {href: '#/'}, 'Back to the jobs')));
  }
}

document.getElementById('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin('Token forgotten.');
});
window.addEventListener('hashchange', () => { clearNotice(); route(); });
route();
