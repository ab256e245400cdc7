import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { EdgeAgent, type AgentOptions } from '../../edge-agent/agent.js';
import { ChaosProxy } from '../../firmware-sim/chaos-proxy.js';
import { CloudHub, type HubOptions } from '../../cloud-hub/hub.js';
import { OPEN_NAMESPACES } from '../../cloud-hub/routes.js';
import { quietLogger } from '../../shared/logger.js';
import { type DevPki, ensureDevPki } from '../../shared/pki.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';

export interface Chain {
  pki: DevPki;
  hub: CloudHub;
  agent: EdgeAgent;
  /** The relay between agent and hub, when the chain was started with `viaProxy`. */
  proxy: ChaosProxy | null;
  devicePort: number;
  appPort: number;
  /** A device: MQTT.js connected to the agent. */
  device(options?: IClientOptions): Promise<MqttClient>;
  /** A cloud application: MQTT.js connected to the hub's broker. */
  app(options?: IClientOptions): Promise<MqttClient>;
  close(): Promise<void>;
}

let sharedPki: Promise<{ dir: string; pki: DevPki }> | null = null;

/** One development PKI per test file: RSA keys take a moment to make. */
export function testPki(): Promise<{ dir: string; pki: DevPki }> {
  sharedPki ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'edgemux-pki-'));
    const pki = await ensureDevPki(dir, { agentIds: ['agent-1', 'agent-2'] });
    return { dir, pki };
  })();
  return sharedPki;
}

export function hubOptions(pki: DevPki, overrides: Partial<HubOptions> = {}): HubOptions {
  return {
    hubId: 'hub-test',
    tunnelHost: '127.0.0.1',
    tunnelPort: 0,
    appHost: '127.0.0.1',
    appPort: 0,
    tls: { ca: pki.ca, cert: pki.hub.cert, key: pki.hub.key },
    streamWindow: TUNNEL_DEFAULTS.streamWindow,
    maxPacketSize: TUNNEL_DEFAULTS.maxFramePayload,
    heartbeatMs: 1000,
    deadAfterMs: 5000,
    resumeGraceMs: 10_000,
    maxQueuedBytes: TUNNEL_DEFAULTS.maxQueuedBytes,
    // Tests name devices 'dev-1' behind agents 'agent-1' and 'agent-2' and move
    // them between agents: every agent may use every client ID, said explicitly.
    namespaces: OPEN_NAMESPACES,
    log: quietLogger('hub'),
    ...overrides,
  };
}

export function agentOptions(pki: DevPki, hubPort: number, overrides: Partial<AgentOptions> = {}): AgentOptions {
  const agentId = overrides.agentId ?? 'agent-1';
  return {
    agentId,
    deviceHost: '127.0.0.1',
    devicePort: 0,
    hubs: [{ host: '127.0.0.1', port: hubPort }],
    tunnels: 2,
    tls: { ca: pki.ca, cert: pki.agents[agentId].cert, key: pki.agents[agentId].key },
    streamWindow: TUNNEL_DEFAULTS.streamWindow,
    maxPacketSize: TUNNEL_DEFAULTS.maxFramePayload,
    connectTimeoutMs: 2000,
    heartbeatMs: 1000,
    deadAfterMs: 5000,
    resumeGraceMs: 10_000,
    backoffInitialMs: 50,
    backoffMaxMs: 1000,
    log: quietLogger('agent'),
    ...overrides,
  };
}

export async function connectClient(port: number, options: IClientOptions = {}): Promise<MqttClient> {
  const client = mqtt.connect({ host: '127.0.0.1', port, reconnectPeriod: 0, connectTimeout: 5000, ...options });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
    client.once('close', () => reject(new Error('connection closed before CONNACK')));
  });
  return client;
}

/** Hub with its embedded broker and one agent, both on loopback, torn down by close(). */
export async function startChain(
  options: { hub?: Partial<HubOptions>; agent?: Partial<AgentOptions>; viaProxy?: boolean } = {},
): Promise<Chain> {
  const { pki } = await testPki();
  const hub = await CloudHub.start(hubOptions(pki, options.hub));
  const proxy = options.viaProxy ? await ChaosProxy.start({ host: '127.0.0.1', port: hub.tunnelAddress.port }) : null;
  const agent = await EdgeAgent.start(agentOptions(pki, proxy?.port ?? hub.tunnelAddress.port, options.agent));
  await agent.pool.waitForTunnels(agent.pool.size);
  const clients: MqttClient[] = [];
  const track = async (client: Promise<MqttClient>): Promise<MqttClient> => {
    const connected = await client;
    clients.push(connected);
    return connected;
  };
  return {
    pki,
    hub,
    agent,
    proxy,
    devicePort: agent.deviceAddress.port,
    appPort: hub.appAddress.port,
    device: (clientOptions) => track(connectClient(agent.deviceAddress.port, clientOptions)),
    app: (clientOptions) => track(connectClient(hub.appAddress.port, clientOptions)),
    close: async () => {
      for (const client of clients) client.end(true);
      await agent.close();
      await proxy?.close();
      await hub.close();
    },
  };
}

export async function removePki(): Promise<void> {
  if (sharedPki === null) return;
  const { dir } = await sharedPki;
  rmSync(dir, { recursive: true, force: true });
  sharedPki = null;
}

/** Polls until `condition` holds or fails after `timeoutMs`. */
export async function eventually(condition: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
