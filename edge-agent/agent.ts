import net, { type AddressInfo } from 'node:net';
import { assignedIdPrefix } from '../shared/assigned-client-id.js';
import { type Clock, systemClock, type Timer } from '../shared/clock.js';
import type { EndCounts } from '../shared/end-reasons.js';
import type { Logger } from '../shared/logger.js';
import { SocketBatcher } from '../shared/socket-batcher.js';
import type { CloseIntent } from '../shared/stream-lifecycle.js';
import type { Tunnel } from '../shared/tunnel.js';
import type { DeviceConnect } from './connect-packet.js';
import { DeviceConnection, type DeviceHost } from './device-connection.js';
import { type DeviceStream, DeviceStreams } from './device-streams.js';
import { type HubAddress, TunnelPool } from './tunnel-pool.js';

export interface AgentOptions {
  agentId: string;
  /** Index of this worker process when the agent runs several (`--workers`); 0 otherwise. */
  worker?: number;
  deviceHost: string;
  devicePort: number;
  /** Kernel accept queue of the device port; node's own default (511) overflows in connect storms. */
  deviceBacklog?: number;
  hubs: HubAddress[];
  tunnels: number;
  tls: { ca: string; cert: string; key: string };
  serverName?: string;
  streamWindow: number;
  maxPacketSize: number;
  connectTimeoutMs: number;
  heartbeatMs: number;
  deadAfterMs: number;
  /** How long a device stays connected while its stream waits to resume on a tunnel. */
  resumeGraceMs: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  /** Mean interval between TCP probes while a hub is unreachable (default DEFAULT_RECONNECT_PROBE_MS). */
  reconnectProbeMs?: number;
  /** Jitter source for reconnect delays, in [0, 1); injected by tests. */
  random?: () => number;
  /** Time for the stream rules: grace periods, device keepalives and CONNECT timeouts, tunnel heartbeats; the system clock when absent. */
  clock?: Clock;
  log: Logger;
}

export interface AgentStats {
  devices: number;
  attached: number;
  /** Streams waiting for a tunnel to resume on. */
  detached: number;
  tunnelsUp: number;
  wanConnections: number;
  /** Device connections the agent closed or lost after CONNECT. */
  deviceDisconnects: number;
}

const SWEEP_INTERVAL_MS = 1000;
/** Connections the kernel queues on the device port (capped by net.core.somaxconn). */
export const DEFAULT_DEVICE_BACKLOG = 4096;

/**
 * The edge side: accepts local MQTT devices and carries each one as a stream
 * over the tunnel pool to the hub. When a tunnel dies its streams resume on
 * another one; the devices never notice.
 */
export class EdgeAgent implements DeviceHost {
  readonly batcher = new SocketBatcher();
  readonly devices = new Set<DeviceConnection>();
  readonly pool: TunnelPool;
  readonly log: Logger;
  readonly maxPacketSize: number;
  readonly assignedIdPrefix: string;
  readonly clock: Clock;
  deviceDisconnects = 0;
  private readonly streams: DeviceStreams;
  private readonly sweep: Timer;

  private constructor(
    private readonly options: AgentOptions,
    private readonly server: net.Server,
  ) {
    this.log = options.log;
    this.clock = options.clock ?? systemClock;
    this.maxPacketSize = options.maxPacketSize;
    this.assignedIdPrefix = assignedIdPrefix(options.agentId);
    this.pool = new TunnelPool({
      agentId: options.agentId,
      worker: options.worker ?? 0,
      hubs: options.hubs,
      tunnels: options.tunnels,
      tls: options.tls,
      serverName: options.serverName,
      streamWindow: options.streamWindow,
      maxFramePayload: options.maxPacketSize,
      heartbeatMs: options.heartbeatMs,
      deadAfterMs: options.deadAfterMs,
      backoffInitialMs: options.backoffInitialMs,
      backoffMaxMs: options.backoffMaxMs,
      probeMs: options.reconnectProbeMs,
      random: options.random,
      clock: this.clock,
      log: options.log,
    });
    this.streams = new DeviceStreams({
      placement: this.pool,
      streamWindow: options.streamWindow,
      maxPacketSize: options.maxPacketSize,
      resumeGraceMs: options.resumeGraceMs,
      clock: this.clock,
      log: options.log,
    });
    this.pool.on('control', (tunnel, frame) => this.streams.onControl(tunnel, frame));
    this.pool.on('down', (tunnel) => this.streams.tunnelDown(tunnel));
    this.pool.on('up', (tunnel) => this.streams.tunnelUp(tunnel));
    this.pool.on('gave-up', () => this.streams.resumeDetached());
    server.on('connection', (socket) => this.devices.add(new DeviceConnection(socket, this)));
    this.sweep = this.clock.setInterval(() => this.sweepDevices(), SWEEP_INTERVAL_MS);
  }

  static async start(options: AgentOptions): Promise<EdgeAgent> {
    const server = net.createServer({ noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: options.devicePort, host: options.deviceHost, backlog: options.deviceBacklog ?? DEFAULT_DEVICE_BACKLOG }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const agent = new EdgeAgent(options, server);
    agent.pool.start();
    options.log.info({ devices: agent.deviceAddress, hubs: options.hubs, tunnels: options.tunnels }, 'agent listening');
    return agent;
  }

  get deviceAddress(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  stats(): AgentStats {
    let attached = 0;
    for (const device of this.devices) if (device.state === 'attached') attached++;
    return {
      devices: this.devices.size,
      attached,
      detached: this.streams.detachedCount,
      tunnelsUp: this.pool.readyCount,
      wanConnections: this.pool.connectionsOpened,
      deviceDisconnects: this.deviceDisconnects,
    };
  }

  openStream(device: DeviceConnection, connect: DeviceConnect): DeviceStream | null {
    return this.streams.open(device, connect);
  }

  closeStream(stream: DeviceStream, close: CloseIntent): void {
    this.streams.deviceEnded(stream, close);
  }

  /** Device streams ended since start, by why. */
  get streamEnds(): EndCounts {
    return this.streams.ends;
  }

  /** Streams `tunnel` holds: attached to it, or with a RESUME outstanding there. */
  streamsOn(tunnel: Tunnel): number {
    return this.streams.countOn(tunnel);
  }

  deviceClosed(device: DeviceConnection, afterConnect: boolean): void {
    this.devices.delete(device);
    if (afterConnect) this.deviceDisconnects++;
  }

  /**
   * A graceful stop: each device is closed (an MQTT 5 device is told the
   * server is shutting down) and its stream CLOSEd, then every tunnel says
   * GOODBYE behind those CLOSEs, so the hub ends every session of this
   * instance at once, detached ones included, instead of holding them for
   * the resume grace period as after a network failure.
   */
  async close(): Promise<void> {
    this.sweep.cancel();
    const listenerClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const devicesClosed = [...this.devices].map((device) => device.shutDown('agent shutting down'));
    await this.pool.stop('agent shutting down');
    await Promise.all(devicesClosed);
    await listenerClosed;
  }

  private sweepDevices(): void {
    const now = this.clock.now();
    for (const device of this.devices) device.checkTimers(now, this.options.connectTimeoutMs);
    this.streams.sweep(now);
  }
}
