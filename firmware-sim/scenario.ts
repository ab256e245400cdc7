import { mkdirSync } from 'node:fs';
import { CloudHub } from '../cloud-hub/hub.js';
import { OPEN_NAMESPACES } from '../cloud-hub/routes.js';
import { EdgeAgent } from '../edge-agent/agent.js';
import { createLogger } from '../shared/logger.js';
import { ensureDevPki } from '../shared/pki.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import { ChaosProxy } from './chaos-proxy.js';
import { CloudApp } from './cloud-app.js';
import { DeviceFleet } from './device-fleet.js';

export interface ScenarioOptions {
  dataDir: string;
  devices: number;
  ratePerDevice: number;
  qos: 0 | 1 | 2;
  payloadSize: number;
  tunnels: number;
  devicePort: number;
  appPort: number;
  heartbeatMs: number;
  deadAfterMs: number;
  resumeGraceMs: number;
  /** Route the tunnels through a relay that can break them. */
  chaos: boolean;
  logLevel: string;
}

export const SCENARIO_DEFAULTS: ScenarioOptions = {
  dataDir: '.edgemux',
  devices: 200,
  ratePerDevice: 1,
  qos: 1,
  payloadSize: 64,
  tunnels: 2,
  devicePort: 1883,
  appPort: 1884,
  heartbeatMs: TUNNEL_DEFAULTS.heartbeatMs,
  deadAfterMs: TUNNEL_DEFAULTS.deadAfterMs,
  resumeGraceMs: TUNNEL_DEFAULTS.resumeGraceMs,
  chaos: false,
  logLevel: 'warn',
};

/**
 * The whole product on one machine: a hub with its embedded broker, an
 * agent, optionally a chaos relay between them, a device fleet and a cloud
 * application. Used by `npm start` and `npm run chaos`.
 */
export class Scenario {
  fleet: DeviceFleet | null = null;
  app: CloudApp | null = null;

  private constructor(
    readonly options: ScenarioOptions,
    readonly hub: CloudHub,
    readonly agent: EdgeAgent,
    readonly proxy: ChaosProxy | null,
  ) {}

  static async start(options: ScenarioOptions): Promise<Scenario> {
    mkdirSync(options.dataDir, { recursive: true });
    const pki = await ensureDevPki(`${options.dataDir}/pki`, { agentIds: ['agent-1'] });
    const log = createLogger('edgemux', options.logLevel);
    const hub = await CloudHub.start({
      hubId: 'hub-1',
      tunnelHost: '127.0.0.1',
      tunnelPort: 0,
      appHost: '127.0.0.1',
      appPort: options.appPort,
      tls: { ca: pki.ca, cert: pki.hub.cert, key: pki.hub.key },
      streamWindow: TUNNEL_DEFAULTS.streamWindow,
      maxPacketSize: TUNNEL_DEFAULTS.maxFramePayload,
      heartbeatMs: options.heartbeatMs,
      deadAfterMs: options.deadAfterMs,
      resumeGraceMs: options.resumeGraceMs,
      maxQueuedBytes: TUNNEL_DEFAULTS.maxQueuedBytes,
      // The demo's devices ('sim-0', ...) and your own (`mosquitto_pub -i my-device`) are
      // not named '<agentId>:*': its one agent may use every client ID, said explicitly.
      namespaces: OPEN_NAMESPACES,
      log: log.child({ component: 'cloud-hub' }),
    });
    const proxy = options.chaos ? await ChaosProxy.start({ host: '127.0.0.1', port: hub.tunnelAddress.port }) : null;
    const agent = await EdgeAgent.start({
      agentId: 'agent-1',
      deviceHost: '127.0.0.1',
      devicePort: options.devicePort,
      hubs: [{ host: '127.0.0.1', port: proxy?.port ?? hub.tunnelAddress.port }],
      tunnels: options.tunnels,
      tls: { ca: pki.ca, cert: pki.agents['agent-1'].cert, key: pki.agents['agent-1'].key },
      serverName: 'localhost',
      streamWindow: TUNNEL_DEFAULTS.streamWindow,
      maxPacketSize: TUNNEL_DEFAULTS.maxFramePayload,
      connectTimeoutMs: 10_000,
      heartbeatMs: options.heartbeatMs,
      deadAfterMs: options.deadAfterMs,
      resumeGraceMs: options.resumeGraceMs,
      backoffInitialMs: 100,
      backoffMaxMs: 2000,
      log: log.child({ component: 'edge-agent' }),
    });
    await agent.pool.waitForTunnels(options.tunnels);
    return new Scenario(options, hub, agent, proxy);
  }

  async startTraffic(): Promise<void> {
    if (this.options.devices === 0) return;
    this.app = await CloudApp.connect({ host: '127.0.0.1', port: this.hub.appAddress.port, qos: this.options.qos });
    this.fleet = new DeviceFleet({
      host: '127.0.0.1',
      port: this.agent.deviceAddress.port,
      devices: this.options.devices,
      ratePerDevice: this.options.ratePerDevice,
      qos: this.options.qos,
      payloadSize: this.options.payloadSize,
      keepaliveSeconds: 30,
    });
    await this.fleet.start();
  }

  /** Stops new telemetry and waits (bounded) until every message in flight is acknowledged and delivered. */
  async drain(timeoutMs: number): Promise<void> {
    if (this.fleet === null || this.app === null) return;
    this.fleet.pausePublishing();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const fleet = this.fleet.stats();
      const settled = this.options.qos === 0 || fleet.acked >= fleet.sent;
      if ((settled && this.app.sequences.delivered >= fleet.sent) || Date.now() > deadline) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async stop(): Promise<void> {
    await this.fleet?.stop();
    await this.app?.close();
    await this.agent.close();
    await this.proxy?.close();
    await this.hub.close();
  }
}
