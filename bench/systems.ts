/**
 * The systems under test and their baselines, each started as separate
 * processes on loopback: the edgemux chain (agent → tunnels → hub →
 * embedded aedes or an external Mosquitto), aedes alone, and an edge
 * Mosquitto bridging over mutual TLS to a cloud Mosquitto.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DevPki } from '../shared/pki.js';
import type { AedesListening } from './aedes-server.js';
import { mosquittoDir, startMosquitto, writeConfig } from './mosquitto.js';
import { waitForFlow, waitForMqtt } from './probe.js';
import type { ManagedProcess, ProcessRegistry } from './procs.js';

export const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 20_000;
const HUB_CLI = fileURLToPath(new URL('../cloud-hub/cli.js', import.meta.url));
const AGENT_CLI = fileURLToPath(new URL('../edge-agent/cli.js', import.meta.url));

export interface BenchContext {
  registry: ProcessRegistry;
  pkiDir: string;
  pki: DevPki;
  /** Scratch directory of this run (configs), removed at the end. */
  workDir: string;
  /** Extra node flags for hub and agent processes (CPU profiles). */
  hubNodeFlags: string[];
  agentNodeFlags: string[];
  progress(message: string): void;
}

export type SystemKind = 'chain' | 'aedes' | 'bridge' | 'chain-mosquitto' | 'mosquitto';

export interface System {
  kind: SystemKind;
  /** Where devices connect (the first agent's port when there are several). */
  devicePort: number;
  /** Every agent's device port, for fleets spread over several agents. */
  devicePorts: number[];
  /** Where the cloud subscriber connects. */
  appPort: number;
  /** Processes by role ('agent', 'hub', 'aedes', 'edge-mosquitto', ...): pids for RSS. */
  pids: Record<string, number>;
  procs: Record<string, ManagedProcess>;
  close(): Promise<void>;
}

/** The system could not be set up because a feature it needs is missing; the scenario is skipped. */
export class NotAvailableError extends Error {}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function deadCheck(proc: ManagedProcess): () => string | null {
  return () => (proc.alive ? null : `${proc.name} exited (code ${proc.exitInfo?.code}, signal ${proc.exitInfo?.signal}):\n${proc.logTail()}`);
}

export interface ChainOptions {
  /** Route every device to this external broker (hub config `routes`) instead of the embedded aedes. */
  externalBrokerPort?: number;
  /** Put something between agent and hub (a byte-counting relay): gets the hub's tunnel port, returns the port to dial. */
  tunnelVia?: (tunnelPort: number) => Promise<number>;
  agents?: number;
  tunnels?: number;
  /** `edge-agent --workers N`: node:cluster workers sharing the device port. */
  agentWorkers?: number;
}

export async function startChain(ctx: BenchContext, options: ChainOptions = {}): Promise<System> {
  const tunnelPort = await freePort();
  const appPort = await freePort();
  const hubArgs = ['--dev-pki', ctx.pkiDir, '--tunnel-host', HOST, '--tunnel-port', String(tunnelPort), '--app-host', HOST, '--app-port', String(appPort), '--log-level', 'warn', '--open-namespaces'];
  if (options.externalBrokerPort !== undefined) {
    const config = join(mkdtempSync(join(ctx.workDir, 'hub-')), 'hub.yaml');
    writeFileSync(
      config,
      ['routes:', "  - match: { clientId: '*' }", `    backend: { brokers: [{ url: 'mqtt://${HOST}:${options.externalBrokerPort}' }] }`, ''].join('\n'),
    );
    hubArgs.unshift('--config', config);
  }
  const hub = ctx.registry.spawnNode('hub', HUB_CLI, hubArgs, ctx.hubNodeFlags);
  const procs: Record<string, ManagedProcess> = { hub };
  const closeAll = async (): Promise<void> => {
    await Promise.all(Object.values(procs).map((p) => p.stop()));
  };
  try {
    try {
      await waitForMqtt(HOST, appPort, START_TIMEOUT_MS, deadCheck(hub));
    } catch (err) {
      if (options.externalBrokerPort !== undefined && !hub.alive) {
        throw new NotAvailableError(`the hub refused a config with an external-broker route: ${firstLines(hub.logTail(), 4)}`);
      }
      throw err;
    }
    const dialPort = options.tunnelVia !== undefined ? await options.tunnelVia(tunnelPort) : tunnelPort;
    const devicePorts: number[] = [];
    for (let i = 1; i <= (options.agents ?? 1); i++) {
      const devicePort = await freePort();
      const name = i === 1 ? 'agent' : `agent-${i}`;
      const agent = ctx.registry.spawnNode(
        name,
        AGENT_CLI,
        [
          '--dev-pki', ctx.pkiDir, '--agent-id', `agent-${i}`, '--hub', `${HOST}:${dialPort}`, '--host', HOST, '--port', String(devicePort),
          '--tunnels', String(options.tunnels ?? 2), '--log-level', 'warn',
          ...(options.agentWorkers !== undefined ? ['--workers', String(options.agentWorkers)] : []),
        ],
        ctx.agentNodeFlags,
      );
      procs[name] = agent;
      try {
        await waitForMqtt(HOST, devicePort, START_TIMEOUT_MS, deadCheck(agent));
      } catch (err) {
        if (options.agentWorkers !== undefined && !agent.alive) {
          throw new NotAvailableError(`the agent refused --workers ${options.agentWorkers}: ${firstLines(agent.logTail(), 4)}`);
        }
        if (options.externalBrokerPort !== undefined && agent.alive && hub.alive) {
          throw new NotAvailableError(`a device CONNECT through agent and hub to the external broker got no CONNACK (${(err as Error).message}); hub log: ${firstLines(hub.logTail(), 4)}`);
        }
        throw err;
      }
      devicePorts.push(devicePort);
    }
    return {
      kind: options.externalBrokerPort !== undefined ? 'chain-mosquitto' : 'chain',
      devicePort: devicePorts[0],
      devicePorts,
      appPort: options.externalBrokerPort ?? appPort,
      pids: Object.fromEntries(Object.entries(procs).map(([k, p]) => [k, p.pid])),
      procs,
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

export async function startAedes(ctx: BenchContext, options: { tls?: boolean } = {}): Promise<System & { tlsPort: number | null }> {
  const proc = await ctx.registry.forkRpc('aedes', new URL('./aedes-server.js', import.meta.url));
  try {
    const listening = await proc.call<AedesListening>('listen', {
      host: HOST,
      tls: options.tls ? { ca: ctx.pki.ca, cert: ctx.pki.hub.cert, key: ctx.pki.hub.key } : undefined,
    });
    return {
      kind: 'aedes',
      devicePort: listening.port,
      devicePorts: [listening.port],
      appPort: listening.port,
      tlsPort: listening.tlsPort,
      pids: { aedes: proc.pid },
      procs: { aedes: proc },
      close: async () => {
        await proc.stop();
      },
    };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}

function pkiFiles(ctx: BenchContext): Record<string, string> {
  return {
    'ca.pem': join(ctx.pkiDir, 'ca.pem'),
    'hub.pem': join(ctx.pkiDir, 'hub.pem'),
    'hub-key.pem': join(ctx.pkiDir, 'hub-key.pem'),
    'agent.pem': join(ctx.pkiDir, 'agent-agent-1.pem'),
    'agent-key.pem': join(ctx.pkiDir, 'agent-agent-1-key.pem'),
  };
}

/** One Mosquitto with a plain listener: the external broker behind the hub. */
export async function startMosquittoBroker(ctx: BenchContext): Promise<System> {
  const { dir } = mosquittoDir(ctx.workDir, {});
  const port = await freePort();
  const config = writeConfig(dir, 'mosquitto.conf', [`listener ${port} ${HOST}`]);
  const { guard, pid } = await startMosquitto(ctx.registry, 'mosquitto', config);
  try {
    await waitForMqtt(HOST, port, START_TIMEOUT_MS, deadCheck(guard));
  } catch (err) {
    await guard.stop();
    throw err;
  }
  return { kind: 'mosquitto', devicePort: port, devicePorts: [port], appPort: port, pids: { mosquitto: pid }, procs: { mosquitto: guard }, close: async () => void (await guard.stop()) };
}

/**
 * What most sites run today: devices on an edge Mosquitto that bridges
 * (MQTT 3.1.1, `topic # out 1`) over mutual TLS to a cloud Mosquitto, where
 * the subscriber is.
 */
export async function startBridge(ctx: BenchContext): Promise<System> {
  const files = mosquittoDir(ctx.workDir, pkiFiles(ctx));
  const [edgePort, cloudPlainPort, cloudTlsPort] = [await freePort(), await freePort(), await freePort()];
  const cloudConfig = writeConfig(files.dir, 'cloud.conf', [
    `listener ${cloudPlainPort} ${HOST}`,
    `listener ${cloudTlsPort} ${HOST}`,
    `cafile ${files.path('ca.pem')}`,
    `certfile ${files.path('hub.pem')}`,
    `keyfile ${files.path('hub-key.pem')}`,
    'require_certificate true',
  ]);
  const edgeConfig = writeConfig(files.dir, 'edge.conf', [
    `listener ${edgePort} ${HOST}`,
    'connection cloud',
    `address ${HOST}:${cloudTlsPort}`,
    'topic # out 1',
    'bridge_protocol_version mqttv311',
    `bridge_cafile ${files.path('ca.pem')}`,
    `bridge_certfile ${files.path('agent.pem')}`,
    `bridge_keyfile ${files.path('agent-key.pem')}`,
  ]);
  const procs: Record<string, ManagedProcess> = {};
  const pids: Record<string, number> = {};
  const closeAll = async (): Promise<void> => {
    await Promise.all(Object.values(procs).map((p) => p.stop()));
  };
  try {
    const cloud = await startMosquitto(ctx.registry, 'cloud-mosquitto', cloudConfig);
    procs['cloud-mosquitto'] = cloud.guard;
    pids['cloud-mosquitto'] = cloud.pid;
    await waitForMqtt(HOST, cloudPlainPort, START_TIMEOUT_MS, deadCheck(cloud.guard));
    const edge = await startMosquitto(ctx.registry, 'edge-mosquitto', edgeConfig);
    procs['edge-mosquitto'] = edge.guard;
    pids['edge-mosquitto'] = edge.pid;
    await waitForMqtt(HOST, edgePort, START_TIMEOUT_MS, deadCheck(edge.guard));
    await waitForFlow(HOST, edgePort, cloudPlainPort, START_TIMEOUT_MS);
  } catch (err) {
    await closeAll();
    throw err;
  }
  return { kind: 'bridge', devicePort: edgePort, devicePorts: [edgePort], appPort: cloudPlainPort, pids, procs, close: closeAll };
}

/** Agent and hub in front of an external Mosquitto (the hub's external-broker backend). */
export async function startChainToMosquitto(ctx: BenchContext): Promise<System> {
  const broker = await startMosquittoBroker(ctx);
  try {
    const chain = await startChain(ctx, { externalBrokerPort: broker.devicePort });
    return {
      ...chain,
      pids: { ...chain.pids, ...broker.pids },
      procs: { ...chain.procs, ...broker.procs },
      close: async () => {
        await chain.close();
        await broker.close();
      },
    };
  } catch (err) {
    await broker.close();
    throw err;
  }
}

function firstLines(text: string, n: number): string {
  return text.split('\n').filter((l) => l.trim() !== '').slice(0, n).join(' | ');
}
