import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type AdminApi, readAdminToken, startAdminApi } from '../../cloud-hub/admin-api.js';
import { hubConfigSchema } from '../../cloud-hub/config.js';
import { resolveRoute } from '../../cloud-hub/main.js';
import { isEdgemuxError } from '../../shared/errors.js';
import { quietLogger } from '../../shared/logger.js';
import { type Chain, connectClient, eventually, removePki, startChain } from '../support/chain.js';
import { duplexPair } from '../support/duplex-pair.js';
import { itWithMosquitto, Mosquitto } from '../support/mosquitto.js';
import { RawAgent } from '../support/raw-agent.js';

const TOKEN = 'a'.repeat(20) + '-admin-test-token';

describe('hub admin API', () => {
  let chain: Chain;
  let admin: AdminApi;
  let base: string;
  const extra: (() => Promise<unknown>)[] = [];

  async function start(options: Parameters<typeof startChain>[0] = {}): Promise<void> {
    chain = await startChain(options);
    admin = await startAdminApi({ host: '127.0.0.1', port: 0, token: TOKEN, hub: chain.hub, log: quietLogger('admin') });
    base = `http://127.0.0.1:${admin.address.port}`;
  }

  function api(path: string, init: RequestInit = {}, token: string | null = TOKEN): Promise<Response> {
    const headers = new Headers(init.headers);
    if (token !== null) headers.set('authorization', `Bearer ${token}`);
    return fetch(`${base}${path}`, { ...init, headers });
  }

  async function json<T = Record<string, unknown>>(path: string, init: RequestInit = {}): Promise<T> {
    const response = await api(path, init);
    expect(response.status, `${init.method ?? 'GET'} ${path}`).toBeLessThan(300);
    return (await response.json()) as T;
  }

  beforeEach(() => start());
  afterEach(async () => {
    while (extra.length > 0) await extra.pop()!();
    await admin.close();
    await chain.close();
  });
  afterAll(removePki);

  it('gives a stranger 401 and nothing else, on every API path and action, and does nothing for it', async () => {
    await chain.device({ clientId: 'guarded' });
    const attempts: [string, RequestInit, string | null][] = [
      ['/api/v1/agents', {}, null],
      ['/api/v1/devices', {}, 'wrong'],
      ['/api/v1/devices', {}, `${TOKEN}x`],
      ['/api/v1/devices', {}, TOKEN.slice(0, -1)],
      ['/api/v1/devices/guarded', { headers: { authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` } }, null],
      ['/api/v1/devices/guarded/disconnect', { method: 'POST' }, null],
      ['/api/v1/agents/agent-1/drain', { method: 'POST', body: 'x'.repeat(100_000) }, 'nope'],
      ['/api/v1/reload', { method: 'POST' }, null],
      ['/api/v1/no-such-thing', {}, null],
      ['/api/other', {}, null],
    ];
    for (const [path, init, token] of attempts) {
      const response = await api(path, init, token);
      expect(response.status, path).toBe(401);
      expect(response.headers.get('www-authenticate')).toBe('Bearer realm="edgemux"');
      expect(await response.text(), path).toBe('{"error":"unauthorized"}');
    }
    expect(chain.hub.device('guarded')?.state).toBe('attached');
    expect((await json<{ agents: { draining: boolean }[] }>('/api/v1/agents')).agents[0].draining).toBe(false);
  });

  it('serves the status page without the token, and no data with it', async () => {
    const page = await fetch(`${base}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    const html = await page.text();
    expect(html).toContain('<script src="app.js"');
    expect(html).not.toContain('agent-1');
    expect((await fetch(`${base}/app.js`)).status).toBe(200);
    expect((await fetch(`${base}/../../package.json`)).status).toBe(404);
    expect((await fetch(`${base}/index.html/..%2f..%2fadmin-api.ts`)).status).toBe(404);
  });

  it('lists agents with their tunnels: transport, address, since and bytes', async () => {
    const body = await json<{ agents: { agentId: string; worker: number; instance: string; sessions: number; tunnels: { transport: string; remote: string; since: string; bytesIn: number; bytesOut: number }[] }[] }>('/api/v1/agents');
    expect(body.agents).toHaveLength(1);
    const [agent] = body.agents;
    expect(agent).toMatchObject({ agentId: 'agent-1', worker: 0, sessions: 0, draining: false });
    expect(agent.instance).toMatch(/.+/);
    expect(agent.tunnels).toHaveLength(2);
    for (const tunnel of agent.tunnels) {
      expect(tunnel.transport).toBe('tls');
      expect(tunnel.remote).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(Date.now() - Date.parse(tunnel.since)).toBeLessThan(60_000);
      expect(tunnel.bytesIn).toBeGreaterThan(0);
      expect(tunnel.bytesOut).toBeGreaterThan(0);
    }
  });

  it('names each tunnel\'s transport: websocket on the tunnel port, external for a connection handed over without one', async () => {
    await admin.close();
    await chain.close();
    await start({ agent: { transports: ['websocket'] } });
    const [hubEnd, agentEnd] = duplexPair();
    chain.hub.acceptAuthenticatedConnection(hubEnd, { agentId: 'handed-over' });
    const handedOver = new RawAgent(agentEnd);
    extra.push(async () => handedOver.destroy());
    await handedOver.handshake();

    type Agents = { agents: { agentId: string; tunnels: { transport: string; remote: string }[] }[] };
    const { agents } = await json<Agents>('/api/v1/agents');
    const transports = (agentId: string): string[] => agents.find((agent) => agent.agentId === agentId)!.tunnels.map((tunnel) => tunnel.transport);
    expect(transports('agent-1')).toEqual(['websocket', 'websocket']);
    expect(agents.find((agent) => agent.agentId === 'agent-1')!.tunnels[0].remote).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(transports('handed-over')).toEqual(['external']);
  });

  it('pages and searches devices on the server, and shows one device\'s session', async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `dev-${i}`);
    const devices = await Promise.all(ids.map((clientId) => chain.device({ clientId })));
    await devices[3].publishAsync('t/dev-3', 'hello', { qos: 1 });

    type Page = { total: number; next: string | null; devices: { clientId: string }[] };
    const seen: string[] = [];
    let page = await json<Page>('/api/v1/devices?limit=5');
    expect(page.total).toBe(12);
    for (;;) {
      expect(page.devices.length).toBeLessThanOrEqual(5);
      seen.push(...page.devices.map((device) => device.clientId));
      if (page.next === null) break;
      page = await json<Page>(`/api/v1/devices?limit=5&after=${encodeURIComponent(page.next)}`);
    }
    expect(seen).toEqual([...ids].sort());

    const search = await json<Page>('/api/v1/devices?search=DEV-1');
    expect(search.devices.map((device) => device.clientId)).toEqual(['dev-1', 'dev-10', 'dev-11']);
    expect(search.total).toBe(3);
    expect((await json<Page>('/api/v1/devices?agent=agent-2')).total).toBe(0);
    const bad = await api('/api/v1/devices?limit=0');
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/^limit: /);

    const detail = await json('/api/v1/devices/dev-3');
    expect(detail).toMatchObject({ clientId: 'dev-3', agentId: 'agent-1', state: 'attached', route: 'embedded', backend: 'embedded', protocolVersion: 4, messagesUp: 2, bytesDown: 4 + 4, droppedOversized: 0 });
    expect(Date.parse(detail.lastSeen as string)).toBeGreaterThanOrEqual(Date.parse(detail.connectedSince as string));
    expect((await api('/api/v1/devices/nobody')).status).toBe(404);
  });

  it('disconnects one device: it is closed, its will published, the others stay', async () => {
    const watcher = await chain.app({ clientId: 'will-watcher' });
    await watcher.subscribeAsync('wills/#', { qos: 1 });
    const wills: string[] = [];
    watcher.on('message', (topic) => wills.push(topic));
    const target = await chain.device({ clientId: 'kicked', will: { topic: 'wills/kicked', payload: Buffer.from('gone'), qos: 1, retain: false } });
    const bystander = await chain.device({ clientId: 'bystander' });
    const closed = new Promise<void>((resolve) => target.once('close', () => resolve()));

    const response = await api('/api/v1/devices/kicked/disconnect', { method: 'POST' });
    expect(response.status).toBe(202);
    expect(await response.json()).toEqual({ clientId: 'kicked', disconnected: true });
    await closed;
    await eventually(() => wills.includes('wills/kicked'), 5000, 'the will');
    await eventually(() => chain.hub.device('kicked') === undefined, 5000, 'the session to end');
    expect(bystander.connected).toBe(true);
    expect((await api('/api/v1/devices/kicked/disconnect', { method: 'POST' })).status).toBe(404);
  });

  it('drains an agent: its devices are closed without wills and refused until the drain is lifted', async () => {
    const watcher = await chain.app({ clientId: 'drain-watcher' });
    await watcher.subscribeAsync('wills/#', { qos: 1 });
    const wills: string[] = [];
    watcher.on('message', (topic) => wills.push(topic));
    const devices = await Promise.all(['d-1', 'd-2', 'd-3'].map((clientId) => chain.device({ clientId, will: { topic: `wills/${clientId}`, payload: Buffer.from('x'), qos: 1, retain: false } })));
    const closed = devices.map((device) => new Promise<void>((resolve) => device.once('close', () => resolve())));

    expect(await json('/api/v1/agents/agent-1/drain', { method: 'POST' })).toEqual({ agentId: 'agent-1', draining: true, sessionsEnded: 3 });
    await Promise.all(closed);
    await eventually(() => chain.hub.sessions.size === 0, 5000, 'sessions to end');
    await expect(connectClient(chain.devicePort, { clientId: 'd-1' })).rejects.toThrow(/Server unavailable/i);
    const refusals = (await json<{ refusals: Record<string, number> }>('/api/v1/overview')).refusals;
    expect(refusals['agent-draining']).toBe(1);
    expect((await json<{ agents: { draining: boolean }[] }>('/api/v1/agents')).agents[0].draining).toBe(true);

    expect(await json('/api/v1/agents/agent-1/undrain', { method: 'POST' })).toEqual({ agentId: 'agent-1', draining: false, wasDraining: true });
    const back = await chain.device({ clientId: 'd-1' });
    expect(back.connected).toBe(true);
    // A drained device moves; nobody is told it died.
    await watcher.publishAsync('wills/marker', 'end', { qos: 1 });
    await eventually(() => wills.includes('wills/marker'), 5000, 'the marker');
    expect(wills).toEqual(['wills/marker']);
  });

  it('refuses request bodies past its bound, methods a path does not take, and a reload it cannot do', async () => {
    const big = await api('/api/v1/agents/agent-1/drain', { method: 'POST', body: 'x'.repeat(4096) });
    expect(big.status).toBe(413);
    expect((await json<{ agents: { draining: boolean }[] }>('/api/v1/agents')).agents[0].draining).toBe(false);
    expect((await api('/api/v1/agents', { method: 'POST' })).status).toBe(405);
    expect((await api('/api/v1/devices/x/disconnect')).status).toBe(405);
    const reload = await api('/api/v1/reload', { method: 'POST' });
    expect(reload.status).toBe(501);
  });

  it('answers a request target URL cannot parse with 400 and keeps serving', async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(admin.address.port, '127.0.0.1', () => socket.write('GET http://[ HTTP/1.1\r\nHost: x\r\n\r\n'));
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect((await api('/api/v1/overview')).status).toBe(200);
  });

  it('reports totals for the status page: messages, bytes, resumes, refusals', async () => {
    const device = await chain.device({ clientId: 'counted' });
    await device.publishAsync('t/x', 'abc', { qos: 1 });
    const overview = await json('/api/v1/overview');
    expect(overview).toMatchObject({ agents: 1, tunnels: 2, sessions: 1, messagesUp: 2, messagesDown: 2, resumes: 0, slowConsumerCutoffs: 0, refusals: {} });
    expect(overview.readiness).toMatchObject({ ready: true, reasons: [] });
  });

  itWithMosquitto('asks an MQTT 5 device of a drained agent to use another server (DISCONNECT 0x9C)', async () => {
    const mosquitto = await Mosquitto.start();
    extra.push(() => mosquitto.remove());
    await admin.close();
    await chain.close();
    const route = resolveRoute({ name: 'mosquitto', match: { clientId: 'v5-*' }, backend: { brokers: [{ url: mosquitto.url, rejectUnauthorized: true }], healthCheckMs: 0 } }, 0, quietLogger('hub'));
    await start({ hub: { routes: [route] } });
    const device: MqttClient = await chain.device({ clientId: 'v5-mover', protocolVersion: 5 });
    const detail = await json('/api/v1/devices/v5-mover');
    expect(detail).toMatchObject({ route: 'mosquitto', backend: mosquitto.url, protocolVersion: 5 });
    const disconnect = new Promise<number | undefined>((resolve) => device.once('disconnect', (packet) => resolve(packet.reasonCode)));
    expect(await json('/api/v1/agents/agent-1/drain', { method: 'POST' })).toMatchObject({ sessionsEnded: 1 });
    expect(await disconnect).toBe(0x9c);
  });
});

describe('admin API configuration', () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgemux-admin-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is off by default and binds loopback unless a host is given', () => {
    expect(hubConfigSchema.parse({ devPki: dir }).admin).toBeUndefined();
    expect(hubConfigSchema.parse({ devPki: dir, admin: { port: 9200, tokenFile: '/t' } }).admin).toEqual({ host: '127.0.0.1', port: 9200, tokenFile: '/t' });
    const missing = hubConfigSchema.safeParse({ devPki: dir, admin: { port: 9200 } });
    expect(missing.success).toBe(false);
    expect(missing.error?.issues[0].path).toEqual(['admin', 'tokenFile']);
  });

  it('reads the token from its file and refuses a missing, short or spaced one naming the key', () => {
    const good = join(dir, 'good');
    writeFileSync(good, `${TOKEN}\n`);
    expect(readAdminToken(good)).toBe(TOKEN);
    for (const [name, content] of [['short', 'abc'], ['spaced', 'abcdefgh ijklmnopqrs']] as const) {
      writeFileSync(join(dir, name), content);
      expect(() => readAdminToken(join(dir, name))).toThrow(/^admin\.tokenFile: /);
    }
    try {
      readAdminToken(join(dir, 'absent'));
      expect.unreachable();
    } catch (err) {
      expect(isEdgemuxError(err, 'E_CONFIG')).toBe(true);
      expect((err as Error).message).toMatch(/^admin\.tokenFile: cannot read .*absent \(ENOENT\)$/);
    }
  });
});
