// The hub's status page: plain script, no build step. Everything shown comes
// from the admin API with the token the operator typed, kept in this tab's
// sessionStorage only. Values from devices are set as text, never as HTML.
'use strict';

const TOKEN_KEY = 'edgemux-admin-token';
const PAGE_SIZE = 50;
const CHART_SECONDS = 120;
const OVERVIEW_EVERY_MS = 1000;
const TABLES_EVERY_MS = 2000;

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  previous: null,
  points: [],
  search: '',
  agent: '',
  // Cursors of the pages before the current one; the server pages by client ID.
  cursors: [],
  after: undefined,
  next: null,
  timers: [],
};

class Unauthorized extends Error {}

async function api(path, init = {}) {
  const response = await fetch(`api/v1/${path}`, { ...init, headers: { authorization: `Bearer ${state.token}` }, cache: 'no-store' });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function button(label, onClick, className) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  if (className) b.className = className;
  b.addEventListener('click', onClick);
  return b;
}

function ago(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

function showError(err) {
  if (err instanceof Unauthorized) {
    logout('The hub refused this token.');
    return;
  }
  $('error').textContent = err ? `Last request failed: ${err.message}` : '';
}

async function refreshOverview() {
  const o = await api('overview');
  const now = Date.parse(o.time);
  if (state.previous !== null && now > state.previous.time) {
    const seconds = (now - state.previous.time) / 1000;
    state.points.push({
      up: Math.max(0, (o.messagesUp - state.previous.messagesUp) / seconds),
      down: Math.max(0, (o.messagesDown - state.previous.messagesDown) / seconds),
    });
    if (state.points.length > CHART_SECONDS) state.points.shift();
  }
  state.previous = { time: now, messagesUp: o.messagesUp, messagesDown: o.messagesDown };
  const last = state.points[state.points.length - 1];
  $('agents-count').textContent = o.agents;
  $('tunnels-count').textContent = o.tunnels;
  $('sessions-count').textContent = o.sessions;
  $('rate-up').textContent = last ? last.up.toFixed(1) : '–';
  $('rate-down').textContent = last ? last.down.toFixed(1) : '–';
  $('resumes').textContent = o.resumes;
  $('cutoffs').textContent = o.slowConsumerCutoffs;
  const refusals = Object.entries(o.refusals);
  $('refusals-total').textContent = refusals.reduce((sum, [, n]) => sum + n, 0);
  $('refusals').replaceChildren(...refusals.map(([reason, n]) => {
    const li = document.createElement('li');
    li.textContent = `${reason}: ${n}`;
    return li;
  }));
  const badge = $('readiness');
  badge.textContent = o.readiness.ready ? 'ready' : 'not ready';
  badge.className = `badge ${o.readiness.ready ? 'ready' : 'not-ready'}`;
  $('readiness-reasons').replaceChildren(...o.readiness.reasons.map((reason) => {
    const li = document.createElement('li');
    li.textContent = reason;
    return li;
  }));
  drawChart();
}

function drawChart() {
  const canvas = $('rate-chart');
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  const pad = { left: 48, right: 8, top: 10, bottom: 18 };
  ctx.clearRect(0, 0, width, height);
  const peak = Math.max(1, ...state.points.map((p) => Math.max(p.up, p.down)));
  const x = (i) => pad.left + ((width - pad.left - pad.right) * (CHART_SECONDS - state.points.length + i)) / (CHART_SECONDS - 1);
  const y = (v) => height - pad.bottom - ((height - pad.top - pad.bottom) * v) / peak;
  ctx.strokeStyle = '#e6e9ed';
  ctx.fillStyle = '#5b6570';
  ctx.font = '11px system-ui, sans-serif';
  for (const fraction of [0, 0.5, 1]) {
    const v = peak * fraction;
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(width - pad.right, y(v));
    ctx.stroke();
    ctx.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 4, y(v) + 4);
  }
  ctx.fillText(`last ${CHART_SECONDS} s`, width - pad.right - 60, height - 4);
  const style = getComputedStyle(document.documentElement);
  for (const [key, color] of [['up', style.getPropertyValue('--up')], ['down', style.getPropertyValue('--down')]]) {
    ctx.strokeStyle = color.trim() || '#000';
    ctx.lineWidth = 2;
    ctx.beginPath();
    state.points.forEach((p, i) => (i === 0 ? ctx.moveTo(x(i), y(p[key])) : ctx.lineTo(x(i), y(p[key]))));
    ctx.stroke();
  }
}

async function refreshAgents() {
  const { agents } = await api('agents');
  const rows = agents.map((agent) => {
    const row = document.createElement('tr');
    cell(row, agent.agentId);
    cell(row, agent.worker, 'num');
    cell(row, agent.sessions, 'num');
    const tunnels = agent.tunnels.map((t) => `${t.transport} ${t.remote} since ${ago(t.since)}, ${bytes(t.bytesIn)} in / ${bytes(t.bytesOut)} out`);
    cell(row, tunnels.length === 0 ? 'none' : '').replaceChildren(...tunnels.map((text) => {
      const div = document.createElement('div');
      div.textContent = text;
      return div;
    }));
    cell(row, agent.draining ? 'draining' : 'serving');
    const action = agent.draining
      ? button('Lift drain', () => act(`agents/${encodeURIComponent(agent.agentId)}/undrain`))
      : button('Drain', () => {
          if (confirm(`Send every device of ${agent.agentId} elsewhere and refuse new ones?`)) act(`agents/${encodeURIComponent(agent.agentId)}/drain`);
        });
    cell(row, '').appendChild(action);
    return row;
  });
  $('agents').tBodies[0].replaceChildren(...rows);
  const filter = $('agent-filter');
  const known = new Set([...filter.options].map((option) => option.value));
  for (const agentId of new Set(agents.map((agent) => agent.agentId))) {
    if (known.has(agentId)) continue;
    const option = document.createElement('option');
    option.value = agentId;
    option.textContent = agentId;
    filter.appendChild(option);
  }
}

async function refreshDevices() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.search) params.set('search', state.search);
  if (state.agent) params.set('agent', state.agent);
  if (state.after !== undefined) params.set('after', state.after);
  const page = await api(`devices?${params}`);
  state.next = page.next;
  $('devices-total').textContent = `${page.total} matching`;
  $('page-number').textContent = `page ${state.cursors.length + 1} of ${Math.max(1, Math.ceil(page.total / PAGE_SIZE))}`;
  $('prev-page').disabled = state.cursors.length === 0;
  $('next-page').disabled = page.next === null;
  const rows = page.devices.map((device) => {
    const row = document.createElement('tr');
    row.dataset.clientId = device.clientId;
    cell(row, '').appendChild(button(device.clientId, () => showDevice(device.clientId), 'link'));
    cell(row, device.agentId);
    cell(row, ago(device.connectedSince)).title = device.connectedSince;
    cell(row, ago(device.lastSeen)).title = device.lastSeen;
    cell(row, `${device.messagesUp} / ${device.messagesDown}`, 'num');
    cell(row, `${bytes(device.bytesUp)} / ${bytes(device.bytesDown)}`, 'num');
    cell(row, device.route);
    cell(row, device.backend);
    cell(row, '').appendChild(button('Disconnect', () => {
      if (confirm(`Disconnect ${device.clientId}?`)) act(`devices/${encodeURIComponent(device.clientId)}/disconnect`);
    }));
    return row;
  });
  $('devices').tBodies[0].replaceChildren(...rows);
}

async function showDevice(clientId) {
  try {
    const detail = await api(`devices/${encodeURIComponent(clientId)}`);
    $('device-detail').textContent = JSON.stringify(detail, null, 2);
    $('device-detail').hidden = false;
  } catch (err) {
    showError(err);
  }
}

async function act(path) {
  try {
    await api(path, { method: 'POST' });
    await Promise.all([refreshAgents(), refreshDevices()]);
  } catch (err) {
    showError(err);
  }
}

function every(ms, task) {
  const run = () => task().then(() => showError(null), showError);
  run();
  state.timers.push(setInterval(run, ms));
}

function start() {
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('forget-token').hidden = false;
  every(OVERVIEW_EVERY_MS, refreshOverview);
  every(TABLES_EVERY_MS, () => Promise.all([refreshAgents(), refreshDevices()]));
}

function logout(message) {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('dashboard').hidden = true;
  $('forget-token').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
}

let searchTimer = null;
$('search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.search = $('search').value.trim();
    state.cursors = [];
    state.after = undefined;
    refreshDevices().catch(showError);
  }, 250);
});
$('agent-filter').addEventListener('change', () => {
  state.agent = $('agent-filter').value;
  state.cursors = [];
  state.after = undefined;
  refreshDevices().catch(showError);
});
$('next-page').addEventListener('click', () => {
  if (state.next === null) return;
  state.cursors.push(state.after);
  state.after = state.next;
  refreshDevices().catch(showError);
});
$('prev-page').addEventListener('click', () => {
  if (state.cursors.length === 0) return;
  state.after = state.cursors.pop();
  refreshDevices().catch(showError);
});
$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  state.token = $('token').value.trim();
  $('token').value = '';
  sessionStorage.setItem(TOKEN_KEY, state.token);
  start();
});
$('forget-token').addEventListener('click', () => logout());

if (state.token) start();
else logout();
