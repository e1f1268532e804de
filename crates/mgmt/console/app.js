// Warren's web console: a client of the management API under /api, as RabbitMQ's console.
// No framework: each page is an object with `render` (its static parts and forms, once) and
// `refresh` (its data, every 5 s). Everything taken from the API goes through esc() before it
// reaches innerHTML. What is shown follows the user's tags:
//   management: overview, connections, channels, exchanges, queues (of its vhosts);
//   monitoring: also the node and everyone's connections;
//   policymaker: also Admin > Policies;  administrator: every Admin page.
'use strict';

const REFRESH_MS = 5000;
const MAX_SAMPLES = 120; // 10 minutes at one sample per 5 s
// gen: which page render a refresh belongs to (a refresh of a page left meanwhile is dropped).
const state = { auth: null, user: null, tags: [], timer: null, page: null, args: [], gen: 0, inflight: -1, again: false };
const samples = { overview: [], rates: [], queues: {} };

// ---- small helpers ---------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function num(n) {
  if (n === undefined || n === null || n === '') return '';
  if (typeof n !== 'number') return esc(n);
  return n.toLocaleString('en-US', { maximumFractionDigits: n < 10 ? 2 : 1 });
}

function bytes(n) {
  if (typeof n !== 'number') return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
}

function age(ms) {
  if (typeof ms !== 'number') return '';
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}

function time(ms) {
  return typeof ms === 'number' ? new Date(ms).toLocaleString() : '';
}

// A path segment: vhost '/' is %2F, the default exchange is amq.default.
const seg = (s) => encodeURIComponent(s);
const xseg = (name) => seg(name === '' ? 'amq.default' : name);

function has(tag) { return state.tags.includes(tag); }
const can = {
  admin: () => has('administrator'),
  monitor: () => has('administrator') || has('monitoring'),
  policies: () => has('administrator') || has('policymaker'),
};

// The value at a dotted path ("message_stats.publish_details.rate").
function at(obj, path) {
  return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function flash(text, isError) {
  const f = $('#flash');
  f.textContent = text;
  f.className = isError ? 'error' : '';
  f.hidden = !text;
}

// ---- the API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, data, fallback) {
    const reason = data && data.reason !== undefined ? data.reason : fallback;
    super(typeof reason === 'string' ? reason : JSON.stringify(reason));
    this.status = status;
    this.data = data;
  }
}

async function api(path, { method = 'GET', body, auth = state.auth } = {}) {
  const headers = { 'X-Requested-With': 'XMLHttpRequest' };
  if (auth) headers.Authorization = auth;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch('/api' + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = { reason: text }; }
  }
  if (!r.ok) {
    const err = new ApiError(r.status, data, r.status + ' ' + r.statusText);
    // Credentials that stopped working (password changed, user deleted): back to log-in.
    if (r.status === 401 && auth === state.auth && err.message === 'Login failed') logout('Your session ended: ' + err.message);
    throw err;
  }
  return data;
}

// ---- log-in ------------------------------------------------------------------------------

function basicAuth(user, password) {
  const bytesOf = new TextEncoder().encode(user + ':' + password);
  let bin = '';
  bytesOf.forEach((b) => { bin += String.fromCharCode(b); });
  return 'Basic ' + btoa(bin);
}

async function login(user, password) {
  const auth = basicAuth(user, password);
  const who = await api('/whoami', { auth });
  state.auth = auth;
  state.user = who.name;
  state.tags = who.tags || [];
  sessionStorage.setItem('warren.auth', auth);
  started();
}

function logout(message) {
  state.auth = null;
  state.user = null;
  state.tags = [];
  sessionStorage.removeItem('warren.auth');
  clearInterval(state.timer);
  state.timer = null;
  $('#nav').hidden = true;
  $('#who').hidden = true;
  $('#page').innerHTML = '';
  flash('');
  $('#login').hidden = false;
  const e = $('#login-error');
  e.textContent = message || '';
  e.hidden = !message;
  $('#login-user').focus();
}

function started() {
  $('#login').hidden = true;
  $('#login-error').hidden = true;
  $('#who-name').textContent = state.user + (state.tags.length ? ' (' + state.tags.join(', ') + ')' : '');
  $('#who').hidden = false;
  const nav = [['overview', 'Overview'], ['connections', 'Connections'], ['channels', 'Channels'], ['exchanges', 'Exchanges'], ['queues', 'Queues']];
  if (can.admin() || can.policies()) nav.push(['admin', 'Admin']);
  $('#nav').innerHTML = nav.map(([p, l]) => `<a href="#/${p === 'overview' ? '' : p}" data-page="${p}" id="nav-${p}">${l}</a>`).join('');
  $('#nav').hidden = false;
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  route();
}

// ---- routing -----------------------------------------------------------------------------

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter((p, i) => p !== '' || i > 0).map(decodeURIComponent);
  const page = parts.shift() || 'overview';
  return { page, args: parts };
}

function route() {
  if (!state.auth) return;
  const { page, args } = parseHash();
  let name = page;
  if (page === 'queues' && args.length >= 2) name = 'queue';
  if (page === 'exchanges' && args.length >= 2) name = 'exchange';
  const p = pages[name] || pages.notfound;
  state.page = p;
  state.gen++;
  state.args = args;
  $$('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === page));
  flash('');
  const root = $('#page');
  root.innerHTML = '';
  p.render(root, args);
  refresh();
}

async function refresh() {
  const gen = state.gen;
  // One refresh of a page at a time; a new page's first refresh never waits for the old one.
  if (!state.auth || !state.page) return;
  if (state.inflight === gen) { state.again = true; return; }
  const p = state.page;
  state.inflight = gen;
  try {
    await p.refresh($('#page'), state.args);
    if (gen === state.gen) $('#updated').textContent = 'Updated ' + new Date().toLocaleTimeString() + ' · refreshes every 5 s';
  } catch (e) {
    if (gen === state.gen && state.auth) {
      const box = $('#page .page-error');
      if (box) { box.textContent = e.message; box.hidden = false; }
    }
  } finally {
    if (state.inflight === gen) state.inflight = -1;
    // Something (an action) asked for fresh data while this refresh was on its way.
    if (state.again && gen === state.gen) { state.again = false; refresh(); }
  }
}

// Runs an action from a form or button: its error is shown, the page refreshed.
async function act(what, fn) {
  try {
    const msg = await fn();
    flash(msg || what + ': done.');
  } catch (e) {
    flash(what + ' failed: ' + e.message, true);
  }
  refresh();
}

// ---- charts (hand-written SVG) -----------------------------------------------------------

// series: [{name, cls, values: [numbers]}] on the same sample times `ts` (ms).
function chart(ts, series, unit) {
  if (ts.length < 2) return '<p class="nodata">collecting samples (one every 5 s)…</p>';
  const W = 600, H = 160, L = 48, B = 20, T = 8;
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter((v) => typeof v === 'number')));
  const t0 = ts[0], t1 = ts[ts.length - 1], span = Math.max(1, t1 - t0);
  const x = (t) => L + ((t - t0) / span) * (W - L - 4);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const lines = series.map((s) => {
    const pts = s.values.map((v, i) => (typeof v === 'number' ? `${x(ts[i]).toFixed(1)},${y(v).toFixed(1)}` : null)).filter(Boolean).join(' ');
    return `<polyline class="${s.cls}" points="${pts}"></polyline>`;
  }).join('');
  const ago = Math.round(span / 1000);
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="${esc(series.map((s) => s.name).join(', '))}">
    <line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"></line>
    <line class="axis" x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}"></line>
    <text x="${L - 4}" y="${T + 9}" text-anchor="end">${esc(num(max))}</text>
    <text x="${L - 4}" y="${H - B}" text-anchor="end">0</text>
    <text x="${L}" y="${H - 5}">${ago} s ago</text>
    <text x="${W - 2}" y="${H - 5}" text-anchor="end">now${unit ? ' · ' + esc(unit) : ''}</text>
    ${lines}</svg>
    <div class="legend">${series.map((s) => `<span class="${s.cls}">${esc(s.name)}: ${esc(num(s.values[s.values.length - 1]))}</span>`).join('')}</div>`;
}

function sample(list, point) {
  list.push(point);
  if (list.length > MAX_SAMPLES) list.shift();
}

// Message rates as RabbitMQ's API gives them (message_stats.<name>_details.rate), if it does.
const RATE_NAMES = [['publish', 'Publish'], ['deliver_get', 'Deliver / get'], ['ack', 'Ack'], ['redeliver', 'Redeliver'], ['confirm', 'Confirm'], ['return_unroutable', 'Unroutable']];
const RATE_CLASSES = ['s-ready', 's-unacked', 's-4', 's-5', 's-6', 's-total'];

function rates(stats) {
  const out = {};
  for (const [k] of RATE_NAMES) {
    const r = at(stats, k + '_details.rate');
    if (typeof r === 'number') out[k] = r;
  }
  return Object.keys(out).length ? out : null;
}

function rateChart(list) {
  const known = RATE_NAMES.filter(([k]) => list.some((s) => s.r && typeof s.r[k] === 'number'));
  if (!known.length) return '<p class="nodata" id="no-rate-data">no rate data</p>';
  const ts = list.map((s) => s.t);
  return chart(ts, known.map(([k, l], i) => ({ name: l + ' /s', cls: RATE_CLASSES[i], values: list.map((s) => (s.r ? s.r[k] : null)) })), 'msg/s');
}

// ---- tables and lists --------------------------------------------------------------------

// cols: [{label, cls, html(row)}]; key(row) names the row (data-name).
function table(id, cols, rows, key, empty) {
  if (!rows.length) return `<p class="muted" id="${id}-empty">${esc(empty || 'Nothing here.')}</p>`;
  return `<div class="scroll"><table id="${id}"><thead><tr>${cols.map((c) => `<th class="${c.cls || ''}">${esc(c.label)}</th>`).join('')}</tr></thead><tbody>${rows
    .map((r) => `<tr data-name="${esc(key ? key(r) : '')}">${cols.map((c) => `<td class="${c.cls || ''}">${c.html(r)}</td>`).join('')}</tr>`)
    .join('')}</tbody></table></div>`;
}

const n = (k) => (r) => esc(num(at(r, k)));
const rateCol = (k) => (r) => { const v = at(r, 'message_stats.' + k + '_details.rate'); return typeof v === 'number' ? esc(num(v)) + '/s' : ''; };

// A list page over one of the paginated API lists: name filter, page size, pages.
function listPage({ title, path, cols, key, extra, empty }) {
  return {
    render(root) {
      root.innerHTML = `<h1>${esc(title)}</h1>
        <div class="tools">
          <label>Filter <input id="filter" type="search" placeholder="name contains…"></label>
          <label><input id="filter-regex" type="checkbox"> regex</label>
          <label>Page size <select id="page-size"><option>20</option><option selected>100</option><option>500</option></select></label>
          <span class="pager"><button type="button" class="secondary" id="prev">‹</button><span id="page-info"></span><button type="button" class="secondary" id="next">›</button></span>
        </div>
        <p class="page-error error" hidden></p>
        <div id="list"></div>${extra ? extra.html() : ''}`;
      this.pageNo = 1;
      const again = () => { this.pageNo = 1; refresh(); };
      $('#filter', root).addEventListener('input', again);
      $('#filter-regex', root).addEventListener('change', again);
      $('#page-size', root).addEventListener('change', again);
      $('#prev', root).addEventListener('click', () => { if (this.pageNo > 1) { this.pageNo--; refresh(); } });
      $('#next', root).addEventListener('click', () => { if (this.pageNo < (this.pages || 1)) { this.pageNo++; refresh(); } });
      if (extra) extra.bind(root);
    },
    async refresh(root) {
      const q = new URLSearchParams({ page: this.pageNo, page_size: $('#page-size', root).value });
      const f = $('#filter', root).value;
      if (f) { q.set('name', f); if ($('#filter-regex', root).checked) q.set('use_regex', 'true'); }
      let res;
      try {
        res = await api(path + '?' + q);
      } catch (e) {
        if (e.data && e.data.error === 'page_out_of_range' && this.pageNo > 1) { this.pageNo = 1; return this.refresh(root); }
        throw e;
      }
      this.pages = Math.max(1, res.page_count);
      $('#page-info', root).textContent = ` page ${res.page} of ${this.pages} · ${res.filtered_count} of ${res.total_count} `;
      $('#list', root).innerHTML = table(title.toLowerCase() + '-table', cols, res.items, key, empty);
      $('.page-error', root).hidden = true;
    },
  };
}

// A two-step button: the first click asks, the second does it.
function confirmButton(id, label, question, onYes) {
  return {
    html: `<span class="confirm" id="${id}-box"><button type="button" class="danger" id="${id}">${esc(label)}</button></span>`,
    bind(root) {
      const box = $(`#${id}-box`, root);
      const reset = () => {
        box.innerHTML = `<button type="button" class="danger" id="${id}">${esc(label)}</button>`;
        $(`#${id}`, box).addEventListener('click', ask);
      };
      const ask = () => {
        box.innerHTML = `<span>${esc(question)}</span><button type="button" class="danger" id="${id}-yes">Yes, ${esc(label.toLowerCase())}</button><button type="button" class="secondary" id="${id}-no">Cancel</button>`;
        $(`#${id}-yes`, box).addEventListener('click', () => { reset(); onYes(); });
        $(`#${id}-no`, box).addEventListener('click', reset);
      };
      $(`#${id}`, box).addEventListener('click', ask);
    },
  };
}

function formValues(form) {
  return Object.fromEntries(new FormData(form).entries());
}

function parseJsonField(text, what) {
  if (!text || !text.trim()) return {};
  try { return JSON.parse(text); } catch (e) { throw new Error(what + ' is not valid JSON: ' + e.message); }
}

// ---- pages -------------------------------------------------------------------------------

const pages = {};

pages.notfound = {
  render(root) { root.innerHTML = '<h1>Not found</h1><p>No such page. <a href="#/">Overview</a></p>'; },
  async refresh() {},
};

pages.overview = {
  render(root) {
    root.innerHTML = `<h1>Overview</h1>
      <p class="page-error error" hidden></p>
      <div class="cards" id="totals"></div>
      <div class="grid2">
        <section><h2>Queued messages</h2><div class="panel" id="queued-chart"></div></section>
        <section><h2>Message rates</h2><div class="panel" id="rate-chart"></div></section>
      </div>
      <h2>Node</h2><div id="node"></div>
      <h2>Listeners</h2><div id="listeners"></div>`;
  },
  async refresh(root) {
    const o = await api('/overview');
    const t = o.object_totals || {}, q = o.queue_totals || {};
    const card = (id, v, l) => `<div class="card" id="total-${id}"><div class="n">${esc(num(v))}</div><div class="l">${esc(l)}</div></div>`;
    $('#totals', root).innerHTML = [
      card('connections', t.connections, 'Connections'), card('channels', t.channels, 'Channels'),
      card('exchanges', t.exchanges, 'Exchanges'), card('queues', t.queues, 'Queues'), card('consumers', t.consumers, 'Consumers'),
      card('ready', q.messages_ready, 'Ready'), card('unacked', q.messages_unacknowledged, 'Unacked'), card('messages', q.messages, 'Total messages'),
    ].join('');
    const now = Date.now();
    sample(samples.overview, { t: now, ready: q.messages_ready || 0, unacked: q.messages_unacknowledged || 0, total: q.messages || 0 });
    sample(samples.rates, { t: now, r: rates(o.message_stats) });
    const s = samples.overview;
    $('#queued-chart', root).innerHTML = chart(s.map((p) => p.t), [
      { name: 'Ready', cls: 's-ready', values: s.map((p) => p.ready) },
      { name: 'Unacked', cls: 's-unacked', values: s.map((p) => p.unacked) },
      { name: 'Total', cls: 's-total', values: s.map((p) => p.total) },
    ], 'messages');
    $('#rate-chart', root).innerHTML = rateChart(samples.rates);
    $('#listeners', root).innerHTML = table('listeners-table', [
      { label: 'Protocol', html: (l) => esc(l.protocol) }, { label: 'Address', html: (l) => esc(l.ip_address) }, { label: 'Port', cls: 'num', html: (l) => esc(l.port) },
    ], o.listeners || [], (l) => l.protocol + ' ' + l.ip_address + ':' + l.port);
    if (!can.monitor()) {
      $('#node', root).innerHTML = '<p class="muted">Node details need the <code>monitoring</code> or <code>administrator</code> tag.</p>';
      return;
    }
    const [node] = await api('/nodes');
    const meter = (used, limit, text) => (typeof limit === 'number' && limit > 0
      ? `<meter min="0" max="${limit}" value="${Math.min(used || 0, limit)}"></meter> ${text}` : text);
    const alarms = [node.mem_alarm && 'memory', node.disk_free_alarm && 'disk'].filter(Boolean);
    $('#node', root).innerHTML = `<div class="panel"><dl class="props" id="node-props">
      <dt>Name</dt><dd>${esc(node.name)}</dd>
      <dt>Version</dt><dd>${esc(o.product_name)} ${esc(o.product_version)} (RabbitMQ ${esc(o.rabbitmq_version)} API)</dd>
      <dt>Uptime</dt><dd>${esc(age(node.uptime))}</dd>
      <dt>Memory</dt><dd>${meter(node.mem_used, node.mem_limit, esc(bytes(node.mem_used)) + ' of ' + esc(bytes(node.mem_limit)) + ' high watermark')}</dd>
      <dt>Disk free</dt><dd>${esc(bytes(node.disk_free))} (alarm below ${esc(bytes(node.disk_free_limit))})</dd>
      <dt>File descriptors</dt><dd>${typeof node.fd_used === 'number' ? meter(node.fd_used, node.fd_total, esc(num(node.fd_used)) + ' of ' + esc(num(node.fd_total))) : 'unknown'}</dd>
      <dt>Alarms</dt><dd id="alarms">${alarms.length ? `<span class="alarm">${esc(alarms.join(', '))} alarm in effect: publishers are blocked</span>` : '<span class="ok">none</span>'}</dd>
    </dl></div>`;
  },
};

pages.connections = listPage({
  title: 'Connections',
  path: '/connections',
  key: (c) => c.name,
  empty: 'No connections.',
  cols: [
    { label: 'Name', html: (c) => esc(c.name) },
    { label: 'User', html: (c) => esc(c.user) },
    { label: 'Vhost', html: (c) => esc(c.vhost) },
    { label: 'Client', html: (c) => esc([at(c, 'client_properties.product'), at(c, 'client_properties.version')].filter(Boolean).join(' ')) },
    { label: 'Protocol', html: (c) => esc(c.protocol) },
    { label: 'Channels', cls: 'num', html: n('channels') },
    { label: 'State', html: (c) => esc(c.state) },
    { label: 'Connected', html: (c) => esc(time(c.connected_at)) },
    { label: 'Recv', cls: 'num', html: (c) => { const v = at(c, 'recv_oct_details.rate'); return typeof v === 'number' ? esc(bytes(v)) + '/s' : ''; } },
    { label: 'Send', cls: 'num', html: (c) => { const v = at(c, 'send_oct_details.rate'); return typeof v === 'number' ? esc(bytes(v)) + '/s' : ''; } },
  ],
});

pages.channels = listPage({
  title: 'Channels',
  path: '/channels',
  key: (c) => c.name,
  empty: 'No channels.',
  cols: [
    { label: 'Channel', html: (c) => esc(c.name) },
    { label: 'User', html: (c) => esc(c.user) },
    { label: 'Vhost', html: (c) => esc(c.vhost) },
    { label: 'Consumers', cls: 'num', html: n('consumer_count') },
    { label: 'Prefetch', cls: 'num', html: n('prefetch_count') },
    { label: 'Unacked', cls: 'num unacked', html: n('messages_unacknowledged') },
    { label: 'Publish', cls: 'num', html: rateCol('publish') },
    { label: 'Deliver / get', cls: 'num', html: rateCol('deliver_get') },
    { label: 'Ack', cls: 'num', html: rateCol('ack') },
  ],
});

const exchangeName = (name) => (name === '' ? '(AMQP default)' : name);

pages.exchanges = listPage({
  title: 'Exchanges',
  path: '/exchanges',
  key: (x) => x.vhost + '/' + x.name,
  cols: [
    { label: 'Vhost', html: (x) => esc(x.vhost) },
    { label: 'Name', html: (x) => `<a href="#/exchanges/${seg(x.vhost)}/${xseg(x.name)}">${esc(exchangeName(x.name))}</a>` },
    { label: 'Type', html: (x) => esc(x.type) },
    { label: 'Features', html: (x) => esc([x.durable && 'D', x.auto_delete && 'AD', x.internal && 'I'].filter(Boolean).join(' ')) },
    { label: 'In', cls: 'num', html: rateCol('publish_in') },
    { label: 'Out', cls: 'num', html: rateCol('publish_out') },
  ],
  extra: {
    html: () => `<h2>Add an exchange</h2>
      <form class="inline" id="add-exchange">
        <label>Vhost <input name="vhost" value="/" required></label>
        <label>Name <input name="name" required></label>
        <label>Type <select name="type"><option>direct</option><option>fanout</option><option>topic</option><option>headers</option></select></label>
        <label>Durable <select name="durable"><option value="true">yes</option><option value="false">no</option></select></label>
        <button type="submit">Add exchange</button>
      </form>`,
    bind(root) {
      $('#add-exchange', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        const v = formValues(ev.target);
        act('Add exchange', async () => {
          await api(`/exchanges/${seg(v.vhost)}/${seg(v.name)}`, { method: 'PUT', body: { type: v.type, durable: v.durable === 'true' } });
          ev.target.reset();
          return `Exchange ${v.name} added.`;
        });
      });
    },
  },
});

pages.queues = listPage({
  title: 'Queues',
  path: '/queues',
  key: (q) => q.vhost + '/' + q.name,
  empty: 'No queues.',
  cols: [
    { label: 'Vhost', cls: 'opt', html: (q) => esc(q.vhost) },
    { label: 'Name', cls: 'name', html: (q) => `<a href="#/queues/${seg(q.vhost)}/${seg(q.name)}">${esc(q.name)}</a>` },
    { label: 'Type', cls: 'opt', html: (q) => esc(q.type) },
    { label: 'Features', cls: 'opt', html: (q) => esc([q.durable && 'D', q.auto_delete && 'AD', q.exclusive && 'Excl'].filter(Boolean).join(' ')) },
    { label: 'State', cls: 'opt', html: (q) => esc(q.state) },
    { label: 'Consumers', cls: 'num consumers', html: n('consumers') },
    { label: 'Ready', cls: 'num ready', html: n('messages_ready') },
    { label: 'Unacked', cls: 'num unacked', html: n('messages_unacknowledged') },
    { label: 'Total', cls: 'num total', html: n('messages') },
    { label: 'Incoming', cls: 'num opt', html: rateCol('publish') },
    { label: 'Deliver / get', cls: 'num opt', html: rateCol('deliver_get') },
    { label: 'Ack', cls: 'num opt', html: rateCol('ack') },
  ],
  extra: {
    html: () => `<h2>Add a queue</h2>
      <form class="inline" id="add-queue">
        <label>Vhost <input name="vhost" value="/" required></label>
        <label>Name <input name="name" required></label>
        <label>Durable <select name="durable"><option value="true">yes</option><option value="false">no</option></select></label>
        <label>Arguments (JSON) <input name="arguments" placeholder='{"x-queue-type": "quorum"}'></label>
        <button type="submit">Add queue</button>
      </form>`,
    bind(root) {
      $('#add-queue', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        const v = formValues(ev.target);
        act('Add queue', async () => {
          const args = parseJsonField(v.arguments, 'Arguments');
          await api(`/queues/${seg(v.vhost)}/${seg(v.name)}`, { method: 'PUT', body: { durable: v.durable === 'true', arguments: args } });
          ev.target.reset();
          return `Queue ${v.name} added.`;
        });
      });
    },
  },
});

function bindingsTable(id, list) {
  return table(id, [
    { label: 'From', html: (b) => esc(exchangeName(b.source)) },
    { label: 'To', html: (b) => esc(b.destination) + ` <span class="muted">(${esc(b.destination_type)})</span>` },
    { label: 'Routing key', html: (b) => esc(b.routing_key) },
    { label: 'Arguments', cls: 'wrap', html: (b) => esc(Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : '') },
    { label: '', html: (b) => (b.source === '' ? '' : `<button type="button" class="secondary unbind" data-path="${esc(`/bindings/${seg(b.vhost)}/e/${seg(b.source)}/${b.destination_type === 'queue' ? 'q' : 'e'}/${seg(b.destination)}/${seg(b.properties_key)}`)}">Unbind</button>`) },
  ], list, (b) => b.source + ' ' + b.destination + ' ' + b.routing_key, 'No bindings.');
}

function bindUnbind(root) {
  root.addEventListener('click', (ev) => {
    const b = ev.target.closest('button.unbind');
    if (!b) return;
    act('Unbind', async () => { await api(b.dataset.path, { method: 'DELETE' }); return 'Binding removed.'; });
  });
}

pages.queue = {
  render(root, [vhost, name]) {
    this.path = `/queues/${seg(vhost)}/${seg(name)}`;
    const purge = confirmButton('purge', 'Purge', 'Purge every ready message?', () => act('Purge', async () => { await api(this.path + '/contents', { method: 'DELETE' }); return `Queue ${name} purged.`; }));
    const del = confirmButton('delete', 'Delete', 'Delete this queue and its messages?', () => act('Delete', async () => { await api(this.path, { method: 'DELETE' }); location.hash = '#/queues'; return `Queue ${name} deleted.`; }));
    root.innerHTML = `<h1>Queue <span id="queue-name">${esc(name)}</span> <span class="muted">in ${esc(vhost)}</span></h1>
      <p class="page-error error" hidden></p>
      <div class="cards" id="queue-totals"></div>
      <div class="grid2">
        <section><h2>Queued messages</h2><div class="panel" id="queue-chart"></div></section>
        <section><h2>Details</h2><div class="panel" id="queue-details"></div></section>
      </div>
      <h2>Consumers</h2><div id="consumers"></div>
      <h2>Bindings</h2><div id="bindings"></div>
      <form class="inline" id="bind-form">
        <label>From exchange <input name="exchange" required></label>
        <label>Routing key <input name="routing_key"></label>
        <button type="submit">Bind</button>
      </form>
      <h2>Get messages</h2>
      <form class="inline" id="get-form">
        <label>Ack mode <select name="ackmode">
          <option value="ack_requeue_true">Nack, requeue (look only)</option>
          <option value="reject_requeue_true">Reject, requeue</option>
          <option value="ack_requeue_false">Ack (remove)</option>
          <option value="reject_requeue_false">Reject, no requeue (dead-letter)</option>
        </select></label>
        <label>Encoding <select name="encoding"><option value="auto">Auto string / base64</option><option value="base64">base64</option></select></label>
        <label>Messages <input name="count" type="number" min="1" value="1"></label>
        <label>Truncate at (bytes) <input name="truncate" type="number" min="1" value="50000"></label>
        <button type="submit" id="get-submit">Get messages</button>
      </form>
      <div id="got"></div>
      <h2>Purge or delete</h2>
      <div class="tools">${purge.html} ${del.html}</div>`;
    purge.bind(root);
    del.bind(root);
    bindUnbind($('#bindings', root));
    $('#bind-form', root).addEventListener('submit', (ev) => {
      ev.preventDefault();
      const v = formValues(ev.target);
      act('Bind', async () => {
        await api(`/bindings/${seg(vhost)}/e/${xseg(v.exchange)}/q/${seg(name)}`, { method: 'POST', body: { routing_key: v.routing_key, arguments: {} } });
        return 'Bound.';
      });
    });
    $('#get-form', root).addEventListener('submit', (ev) => {
      ev.preventDefault();
      const v = formValues(ev.target);
      act('Get messages', async () => {
        const msgs = await api(this.path + '/get', { method: 'POST', body: { count: Number(v.count), ackmode: v.ackmode, encoding: v.encoding, truncate: Number(v.truncate) } });
        $('#got', root).innerHTML = msgs.length ? msgs.map((m, i) => `<div class="msg" data-index="${i}">
          <dl class="props">
            <dt>Message</dt><dd>${i + 1} · ${esc(m.message_count)} left in the queue</dd>
            <dt>Exchange</dt><dd>${esc(exchangeName(m.exchange))}</dd>
            <dt>Routing key</dt><dd>${esc(m.routing_key)}</dd>
            <dt>Redelivered</dt><dd>${m.redelivered ? 'yes' : 'no'}</dd>
            <dt>Properties</dt><dd>${esc(JSON.stringify(m.properties))}</dd>
            <dt>Payload</dt><dd>${esc(m.payload_bytes)} bytes, ${esc(m.payload_encoding)}</dd>
          </dl><pre class="payload">${esc(m.payload)}</pre></div>`).join('') : '<p class="muted" id="got-empty">Queue is empty.</p>';
        return `${msgs.length} message(s) got.`;
      });
    });
  },
  async refresh(root, [vhost, name]) {
    const q = await api(this.path);
    const card = (id, v, l) => `<div class="card" id="q-${id}"><div class="n">${esc(num(v))}</div><div class="l">${esc(l)}</div></div>`;
    $('#queue-totals', root).innerHTML = [
      card('ready', q.messages_ready, 'Ready'), card('unacked', q.messages_unacknowledged, 'Unacked'),
      card('total', q.messages, 'Total'), card('consumers', q.consumers, 'Consumers'),
    ].join('');
    const key = vhost + '\u0000' + name;
    const list = (samples.queues[key] = samples.queues[key] || []);
    sample(list, { t: Date.now(), ready: q.messages_ready || 0, unacked: q.messages_unacknowledged || 0, r: rates(q.message_stats) });
    $('#queue-chart', root).innerHTML = chart(list.map((p) => p.t), [
      { name: 'Ready', cls: 's-ready', values: list.map((p) => p.ready) },
      { name: 'Unacked', cls: 's-unacked', values: list.map((p) => p.unacked) },
    ], 'messages') + '<h2>Message rates</h2>' + rateChart(list);
    $('#queue-details', root).innerHTML = `<dl class="props">
      <dt>Type</dt><dd>${esc(q.type)}</dd><dt>State</dt><dd>${esc(q.state)}</dd>
      <dt>Features</dt><dd>${esc([q.durable ? 'durable' : 'transient', q.auto_delete && 'auto-delete', q.exclusive && 'exclusive'].filter(Boolean).join(', '))}</dd>
      <dt>Arguments</dt><dd>${esc(JSON.stringify(q.arguments || {}))}</dd>
      <dt>Policy</dt><dd>${esc(q.policy || '')}</dd>
      <dt>Ready bytes</dt><dd>${esc(bytes(q.message_bytes_ready))}</dd>
      <dt>Published</dt><dd>${esc(num(at(q, 'message_stats.publish')))}</dd>
    </dl>`;
    $('#consumers', root).innerHTML = table('consumers-table', [
      { label: 'Consumer tag', html: (c) => esc(c.consumer_tag) },
      { label: 'Channel', html: (c) => esc(at(c, 'channel_details.name')) },
      { label: 'Ack required', html: (c) => (c.ack_required ? 'yes' : 'no') },
      { label: 'Exclusive', html: (c) => (c.exclusive ? 'yes' : 'no') },
      { label: 'Prefetch', cls: 'num', html: n('prefetch_count') },
      { label: 'Unacked', cls: 'num unacked', html: n('messages_unacknowledged') },
      { label: 'Oldest unacked', cls: 'num oldest', html: (c) => esc(age(c.oldest_unacked_age_ms)) },
      { label: 'Active', html: (c) => (c.active ? 'yes' : 'no') },
    ], q.consumer_details || [], (c) => c.consumer_tag, 'No consumers.');
    const b = await api(this.path + '/bindings');
    $('#bindings', root).innerHTML = bindingsTable('bindings-table', b);
  },
};

// "in 3/s, out 6/s" from message_stats.publish_in/out_details.rate, or "no rate data".
function exchangeRates(x) {
  const parts = [['in', 'publish_in'], ['out', 'publish_out']]
    .map(([l, k]) => [l, at(x, 'message_stats.' + k + '_details.rate')])
    .filter(([, v]) => typeof v === 'number')
    .map(([l, v]) => `${l} ${esc(num(v))}/s`);
  return parts.length ? parts.join(', ') : '<span class="muted">no rate data</span>';
}

pages.exchange = {
  render(root, [vhost, name]) {
    const xname = name === 'amq.default' ? '' : name;
    this.path = `/exchanges/${seg(vhost)}/${xseg(xname)}`;
    const del = confirmButton('delete', 'Delete', 'Delete this exchange?', () => act('Delete', async () => { await api(this.path, { method: 'DELETE' }); location.hash = '#/exchanges'; return `Exchange ${name} deleted.`; }));
    root.innerHTML = `<h1>Exchange <span id="exchange-name">${esc(exchangeName(xname))}</span> <span class="muted">in ${esc(vhost)}</span></h1>
      <p class="page-error error" hidden></p>
      <div class="panel" id="exchange-details"></div>
      <h2>Bindings from this exchange</h2><div id="bindings"></div>
      ${xname === '' ? '<p class="muted">The default exchange routes to the queue named by the routing key.</p>' : `<form class="inline" id="bind-form">
        <label>To <select name="kind"><option value="q">queue</option><option value="e">exchange</option></select></label>
        <label>Name <input name="destination" required></label>
        <label>Routing key <input name="routing_key"></label>
        <button type="submit">Bind</button></form>`}
      <h2>Publish a message</h2>
      <form class="inline" id="publish-form">
        <label>Routing key <input name="routing_key"></label>
        <label>Delivery mode <select name="delivery_mode"><option value="1">1 – non-persistent</option><option value="2">2 – persistent</option></select></label>
        <label>Headers (JSON) <input name="headers" placeholder='{"k": "v"}'></label>
        <label>Properties (JSON) <input name="properties" placeholder='{"content_type": "text/plain"}'></label>
        <label class="grow">Payload <textarea name="payload" rows="3"></textarea></label>
        <button type="submit" id="publish-submit">Publish message</button>
      </form>
      ${xname.startsWith('amq.') || xname === '' ? '' : `<h2>Delete</h2><div class="tools">${del.html}</div>`}`;
    if (!(xname.startsWith('amq.') || xname === '')) del.bind(root);
    bindUnbind($('#bindings', root));
    const bf = $('#bind-form', root);
    if (bf) bf.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const v = formValues(ev.target);
      act('Bind', async () => {
        await api(`/bindings/${seg(vhost)}/e/${seg(xname)}/${v.kind}/${seg(v.destination)}`, { method: 'POST', body: { routing_key: v.routing_key, arguments: {} } });
        return 'Bound.';
      });
    });
    $('#publish-form', root).addEventListener('submit', (ev) => {
      ev.preventDefault();
      const v = formValues(ev.target);
      act('Publish', async () => {
        const props = parseJsonField(v.properties, 'Properties');
        props.delivery_mode = Number(v.delivery_mode);
        const headers = parseJsonField(v.headers, 'Headers');
        if (Object.keys(headers).length) props.headers = headers;
        const r = await api(this.path + '/publish', { method: 'POST', body: { routing_key: v.routing_key, payload: v.payload, payload_encoding: 'string', properties: props } });
        return r.routed ? 'Message published.' : 'Message published, but not routed.';
      });
    });
  },
  async refresh(root) {
    const x = await api(this.path);
    $('#exchange-details', root).innerHTML = `<dl class="props">
      <dt>Type</dt><dd>${esc(x.type)}</dd>
      <dt>Features</dt><dd>${esc([x.durable ? 'durable' : 'transient', x.auto_delete && 'auto-delete', x.internal && 'internal'].filter(Boolean).join(', '))}</dd>
      <dt>Arguments</dt><dd>${esc(JSON.stringify(x.arguments || {}))}</dd>
      <dt>Rates</dt><dd>${exchangeRates(x)}</dd>
    </dl>`;
    const b = await api(this.path + '/bindings/source');
    $('#bindings', root).innerHTML = bindingsTable('bindings-table', b);
  },
};

// ---- admin -------------------------------------------------------------------------------

const ADMIN_TABS = [
  ['users', 'Users', can.admin], ['vhosts', 'Virtual hosts', can.admin], ['permissions', 'Permissions', can.admin],
  ['policies', 'Policies', can.policies], ['limits', 'Limits', can.admin], ['definitions', 'Definitions', can.admin],
];

const adminTabs = {
  users: {
    html: `<div id="users"></div><h2>Add or update a user</h2>
      <form class="inline" id="user-form">
        <label>Name <input name="name" required></label>
        <label>Password <input name="password" type="password" autocomplete="new-password"></label>
        <label>Tags <input name="tags" placeholder="management, monitoring, policymaker, administrator"></label>
        <button type="submit">Save user</button></form>`,
    bind(root) {
      $('#user-form', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        const v = formValues(ev.target);
        const body = { tags: v.tags };
        if (v.password) body.password = v.password;
        act('Save user', async () => { await api(`/users/${seg(v.name)}`, { method: 'PUT', body }); ev.target.reset(); return `User ${v.name} saved.`; });
      });
      root.addEventListener('click', (ev) => {
        const b = ev.target.closest('button.del-user');
        if (b) act('Delete user', async () => { await api(`/users/${seg(b.dataset.user)}`, { method: 'DELETE' }); return `User ${b.dataset.user} deleted.`; });
      });
    },
    async refresh(root) {
      const users = await api('/users');
      $('#users', root).innerHTML = table('users-table', [
        { label: 'Name', html: (u) => esc(u.name) },
        { label: 'Tags', html: (u) => esc((u.tags || []).join(', ')) },
        { label: 'Limits', html: (u) => esc(Object.keys(u.limits || {}).length ? JSON.stringify(u.limits) : '') },
        { label: '', html: (u) => (u.name === state.user ? '' : `<button type="button" class="secondary del-user" data-user="${esc(u.name)}">Delete</button>`) },
      ], users, (u) => u.name);
    },
  },
  vhosts: {
    html: `<div id="vhosts"></div><h2>Add a virtual host</h2>
      <form class="inline" id="vhost-form"><label>Name <input name="name" required></label><button type="submit">Add vhost</button></form>`,
    bind(root) {
      $('#vhost-form', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        const v = formValues(ev.target);
        act('Add vhost', async () => { await api(`/vhosts/${seg(v.name)}`, { method: 'PUT' }); ev.target.reset(); return `Vhost ${v.name} added.`; });
      });
      root.addEventListener('click', (ev) => {
        const b = ev.target.closest('button.del-vhost');
        if (!b) return;
        if (b.dataset.armed !== 'yes') { b.dataset.armed = 'yes'; b.textContent = 'Click again to delete'; return; }
        act('Delete vhost', async () => { await api(`/vhosts/${seg(b.dataset.vhost)}`, { method: 'DELETE' }); return `Vhost ${b.dataset.vhost} deleted.`; });
      });
    },
    async refresh(root) {
      const vs = await api('/vhosts');
      $('#vhosts', root).innerHTML = table('vhosts-table', [
        { label: 'Name', html: (v) => esc(v.name) },
        { label: 'Ready', cls: 'num', html: n('messages_ready') },
        { label: 'Unacked', cls: 'num', html: n('messages_unacknowledged') },
        { label: 'Total', cls: 'num', html: n('messages') },
        { label: '', html: (v) => `<button type="button" class="secondary del-vhost" data-vhost="${esc(v.name)}">Delete</button>` },
      ], vs, (v) => v.name);
    },
  },
  permissions: {
    html: `<div id="permissions"></div><h2>Set permissions</h2>
      <form class="inline" id="perm-form">
        <label>User <input name="user" required></label><label>Vhost <input name="vhost" value="/" required></label>
        <label>Configure <input name="configure" value=".*"></label><label>Write <input name="write" value=".*"></label><label>Read <input name="read" value=".*"></label>
        <button type="submit">Set permissions</button></form>`,
    bind(root) {
      $('#perm-form', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        const v = formValues(ev.target);
        act('Set permissions', async () => { await api(`/permissions/${seg(v.vhost)}/${seg(v.user)}`, { method: 'PUT', body: { configure: v.configure, write: v.write, read: v.read } }); return `Permissions of ${v.user} in ${v.vhost} set.`; });
      });
      root.addEventListener('click', (ev) => {
        const b = ev.target.closest('button.del-perm');
        if (b) act('Clear permissions', async () => { await api(`/permissions/${seg(b.dataset.vhost)}/${seg(b.dataset.user)}`, { method: 'DELETE' }); return 'Permissions cleared.'; });
      });
    },
    async refresh(root) {
      const ps = await api('/permissions');
      $('#permissions', root).innerHTML = table('permissions-table', [
        { label: 'User', html: (p) => esc(p.user) }, { label: 'Vhost', html: (p) => esc(p.vhost) },
        { label: 'Configure', html: (p) => `<code>${esc(p.configure)}</code>` }, { label: 'Write', html: (p) => `<code>${esc(p.write)}</code>` }, { label: 'Read', html: (p) => `<code>${esc(p.read)}</code>` },
        { label: '', html: (p) => `<button type="button" class="secondary del-perm" data-user="${esc(p.user)}" data-vhost="${esc(p.vhost)}">Clear</button>` },
      ], ps, (p) => p.user + '@' + p.vhost);
    },
  },
  policies: {
    html: `<div id="policies"></div><h2>Add or update a policy</h2>
      <form class="inline" id="policy-form">
        <label>Vhost <input name="vhost" value="/" required></label><label>Name <input name="name" required></label>
        <label>Pattern <input name="pattern" required placeholder="^orders\\."></label>
        <label>Apply to <select name="apply-to"><option>queues</option><option>exchanges</option><option>all</option></select></label>
        <label>Priority <input name="priority" type="number" value="0"></label>
        <label>Definition (JSON) <input name="definition" required placeholder='{"max-length": 1000}'></label>
        <button type="submit">Save policy</button></form>`,
    bind(root) {
      $('#policy-form', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        const v = formValues(ev.target);
        act('Save policy', async () => {
          const definition = parseJsonField(v.definition, 'Definition');
          await api(`/policies/${seg(v.vhost)}/${seg(v.name)}`, { method: 'PUT', body: { pattern: v.pattern, 'apply-to': v['apply-to'], priority: Number(v.priority || 0), definition } });
          return `Policy ${v.name} saved.`;
        });
      });
      root.addEventListener('click', (ev) => {
        const b = ev.target.closest('button.del-policy');
        if (b) act('Delete policy', async () => { await api(`/policies/${seg(b.dataset.vhost)}/${seg(b.dataset.name)}`, { method: 'DELETE' }); return `Policy ${b.dataset.name} deleted.`; });
      });
    },
    async refresh(root) {
      const ps = await api('/policies');
      $('#policies', root).innerHTML = table('policies-table', [
        { label: 'Vhost', html: (p) => esc(p.vhost) }, { label: 'Name', html: (p) => esc(p.name) },
        { label: 'Pattern', html: (p) => `<code>${esc(p.pattern)}</code>` }, { label: 'Apply to', html: (p) => esc(p['apply-to']) },
        { label: 'Definition', cls: 'wrap', html: (p) => esc(JSON.stringify(p.definition)) }, { label: 'Priority', cls: 'num', html: n('priority') },
        { label: '', html: (p) => `<button type="button" class="secondary del-policy" data-vhost="${esc(p.vhost)}" data-name="${esc(p.name)}">Delete</button>` },
      ], ps, (p) => p.vhost + '/' + p.name, 'No policies.');
    },
  },
  limits: {
    html: `<h2>Virtual host limits</h2><div id="vhost-limits"></div>
      <form class="inline" id="vhost-limit-form">
        <label>Vhost <input name="vhost" value="/" required></label>
        <label>Limit <select name="name"><option>max-connections</option><option>max-queues</option></select></label>
        <label>Value (negative: none) <input name="value" type="number" required></label>
        <button type="submit">Set limit</button></form>
      <h2>User limits</h2><div id="user-limits"></div>
      <form class="inline" id="user-limit-form">
        <label>User <input name="user" required></label>
        <label>Limit <select name="name"><option>max-connections</option><option>max-channels</option></select></label>
        <label>Value (negative: none) <input name="value" type="number" required></label>
        <button type="submit">Set limit</button></form>`,
    bind(root) {
      $('#vhost-limit-form', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        const v = formValues(ev.target);
        act('Set limit', async () => { await api(`/vhost-limits/${seg(v.vhost)}/${seg(v.name)}`, { method: 'PUT', body: { value: Number(v.value) } }); return 'Limit set.'; });
      });
      $('#user-limit-form', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        const v = formValues(ev.target);
        act('Set limit', async () => { await api(`/user-limits/${seg(v.user)}/${seg(v.name)}`, { method: 'PUT', body: { value: Number(v.value) } }); return 'Limit set.'; });
      });
    },
    async refresh(root) {
      const [vl, ul] = await Promise.all([api('/vhost-limits'), api('/user-limits')]);
      $('#vhost-limits', root).innerHTML = table('vhost-limits-table', [{ label: 'Vhost', html: (l) => esc(l.vhost) }, { label: 'Limits', html: (l) => esc(JSON.stringify(l.value)) }], vl, (l) => l.vhost, 'No vhost limits.');
      $('#user-limits', root).innerHTML = table('user-limits-table', [{ label: 'User', html: (l) => esc(l.user) }, { label: 'Limits', html: (l) => esc(JSON.stringify(l.value)) }], ul, (l) => l.user, 'No user limits.');
    },
  },
  definitions: {
    html: `<h2>Export</h2>
      <p>Users, vhosts, permissions, queues, exchanges, bindings and policies, in RabbitMQ's definitions format.</p>
      <div class="tools"><button type="button" id="export">Download definitions</button><a id="export-link" hidden download="warren-definitions.json">warren-definitions.json</a></div>
      <h2>Import</h2>
      <form id="import-form">
        <p><input type="file" id="import-file" accept="application/json,.json"></p>
        <textarea name="definitions" id="import-text" placeholder='{"queues": [...], "exchanges": [...], "bindings": [...]}'></textarea>
        <p><button type="submit">Import definitions</button></p></form>`,
    bind(root) {
      $('#export', root).addEventListener('click', () => act('Export', async () => {
        const defs = await api('/definitions');
        const link = $('#export-link', root);
        if (link.href) URL.revokeObjectURL(link.href);
        link.href = URL.createObjectURL(new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' }));
        link.hidden = false;
        link.click();
        return `Exported ${(defs.queues || []).length} queues, ${(defs.exchanges || []).length} exchanges, ${(defs.bindings || []).length} bindings.`;
      }));
      $('#import-file', root).addEventListener('change', async (ev) => {
        const f = ev.target.files[0];
        if (f) $('#import-text', root).value = await f.text();
      });
      $('#import-form', root).addEventListener('submit', (ev) => {
        ev.preventDefault();
        act('Import', async () => {
          const defs = parseJsonField($('#import-text', root).value, 'The definitions');
          await api('/definitions', { method: 'POST', body: defs });
          return 'Definitions imported.';
        });
      });
    },
    async refresh() {},
  },
};

pages.admin = {
  render(root, [tab]) {
    const tabs = ADMIN_TABS.filter(([, , allowed]) => allowed());
    if (!tabs.length) {
      this.tab = null;
      root.innerHTML = `<h1>Admin</h1><p class="error" id="admin-refused">Not authorised: the Admin pages need the <code>administrator</code> tag (policies: <code>policymaker</code>).</p>`;
      return;
    }
    const current = tabs.find(([t]) => t === tab) || tabs[0];
    this.tab = adminTabs[current[0]];
    root.innerHTML = `<h1>Admin</h1>
      <nav class="tabs">${tabs.map(([t, l]) => `<a href="#/admin/${t}" id="tab-${t}" class="${t === current[0] ? 'active' : ''}">${esc(l)}</a>`).join('')}</nav>
      <p class="page-error error" hidden></p>
      <section id="admin-${current[0]}">${this.tab.html}</section>`;
    this.tab.bind(root);
  },
  async refresh(root) {
    if (this.tab) await this.tab.refresh(root);
  },
};

// ---- start -------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = $('#login-submit');
    btn.disabled = true;
    try {
      await login($('#login-user').value, $('#login-password').value);
      $('#login-password').value = '';
    } catch (e) {
      const err = $('#login-error');
      err.textContent = e.status === 401 ? e.message : 'Could not reach the broker: ' + e.message;
      err.hidden = false;
    } finally {
      btn.disabled = false;
    }
  });
  $('#logout').addEventListener('click', () => logout(''));
  window.addEventListener('hashchange', route);
  const saved = sessionStorage.getItem('warren.auth');
  if (saved) {
    api('/whoami', { auth: saved }).then((who) => {
      state.auth = saved;
      state.user = who.name;
      state.tags = who.tags || [];
      started();
    }).catch(() => logout(''));
  } else {
    logout('');
  }
});
