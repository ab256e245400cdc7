import type { AddressInfo } from 'node:net';
import { assignedIdPrefix } from '../shared/assigned-client-id.js';
import type { HttpProxy } from '../shared/http-proxy.js';
import { type Clock, systemClock, type Timer } from '../shared/clock.js';
import type { EndCounts } from '../shared/end-reasons.js';
import { RateLimitedLog } from '../shared/log-rate-limit.js';
import type { Logger } from '../shared/logger.js';
import { SocketBatcher } from '../shared/socket-batcher.js';
import type { CloseIntent } from '../shared/stream-lifecycle.js';
import type { Tunnel } from '../shared/tunnel.js';
import type { ConnectLimits, DeviceConnect } from './connect-packet.js';
import { ConnectRate } from './connect-rate.js';
import { DeviceConnection, type DeviceHost, type DeviceTraffic } from './device-connection.js';
import { DeviceListener, type DeviceListenerOptions, type ListenerDeviceLog, type ListenerType } from './device-listeners.js';
import type { TunnelTransport } from './tunnel-dialer.js';
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
  /** Where devices connect, over TCP, TLS or WebSocket; when absent, plain TCP on deviceHost:devicePort. */
  listeners?: DeviceListenerOptions[];
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
  /** CONNECTs per second from one (non-loopback) source address; 0 for no limit, DEFAULT_CONNECTS_PER_SECOND_PER_ADDRESS when absent. */
  connectsPerSecondPerAddress?: number;
  /** Longest device client ID, in characters; DEFAULT_MAX_CLIENT_ID_LENGTH when absent. */
  maxClientIdLength?: number;
  /** Mean interval between TCP probes while a hub is unreachable (default DEFAULT_RECONNECT_PROBE_MS). */
  reconnectProbeMs?: number;
  /** Clock of the connect rate limit; injected by tests. */
  now?: () => number;
  /** Transports tried in order (tls, websocket, proxy when absent); a hub's dials start at the one that last worked. */
  transports?: readonly TunnelTransport[];
  /** Path of WebSocket tunnels at the hubs. */
  webSocketPath?: string;
  /** The site's HTTP CONNECT proxy, used by the `proxy` transport. */
  proxy?: HttpProxy | null;
  /** NO_PROXY rules: hubs they match are never dialled through the proxy. */
  noProxy?: string;
  /** How often a tunnel on a fallback transport checks the preferred ones. */
  preferredRetryMs?: number;
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
  /** CONNECTs refused because their source address connected too often. */
  connectsRateLimited: number;
}

const SWEEP_INTERVAL_MS = 1000;
/**
 * A device in a reconnect loop tries hundreds of times a second; a site's
 * devices each have their own address, so a legitimate one needs a handful.
 */
export const DEFAULT_CONNECTS_PER_SECOND_PER_ADDRESS = 200;
/** The hub's default too (and aedes'): every ID the hub admits is kept in its registry. */
export const DEFAULT_MAX_CLIENT_ID_LENGTH = 256;
/** Lines about single devices: a storm writes `burst` of them, then one summary a second. */
const DEVICE_LOG_LIMIT = { perSecond: 20, burst: 100 };
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
  readonly connectLimits: ConnectLimits;
  readonly connectRate: ConnectRate | null;
  deviceDisconnects = 0;
  readonly traffic: DeviceTraffic = { messagesToHub: 0, bytesToHub: 0, messagesToDevice: 0, bytesToDevice: 0 };
  readonly deviceLog: DeviceHost['deviceLog'] & ListenerDeviceLog;
  private readonly streams: DeviceStreams;
  private readonly sweep: Timer;

  private readonly listeners: DeviceListener[] = [];

  private constructor(private readonly options: AgentOptions) {
    this.log = options.log;
    this.clock = options.clock ?? systemClock;
    const deviceLog = options.log.child({ agentId: options.agentId });
    this.deviceLog = {
      refused: new RateLimitedLog(deviceLog, { msg: 'device refused', plural: 'device refusals', ...DEVICE_LOG_LIMIT }),
      closed: new RateLimitedLog(deviceLog, { msg: 'closing device', plural: 'device closes', ...DEVICE_LOG_LIMIT }),
      handshakeFailed: new RateLimitedLog(deviceLog, { msg: 'device TLS handshake failed', plural: 'failed device TLS handshakes', ...DEVICE_LOG_LIMIT }),
    };
    this.maxPacketSize = options.maxPacketSize;
    this.assignedIdPrefix = assignedIdPrefix(options.agentId);
    this.connectLimits = { maxClientIdLength: options.maxClientIdLength ?? DEFAULT_MAX_CLIENT_ID_LENGTH };
    const perSecond = options.connectsPerSecondPerAddress ?? DEFAULT_CONNECTS_PER_SECOND_PER_ADDRESS;
    this.connectRate = perSecond > 0 ? new ConnectRate(perSecond, options.now ?? (() => this.clock.now())) : null;
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
      transports: options.transports,
      webSocketPath: options.webSocketPath,
      proxy: options.proxy,
      noProxy: options.noProxy,
      preferredRetryMs: options.preferredRetryMs,
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
    this.sweep = this.clock.setInterval(() => this.sweepDevices(), SWEEP_INTERVAL_MS);
  }

  static async start(options: AgentOptions): Promise<EdgeAgent> {
    const agent = new EdgeAgent(options);
    const wanted = options.listeners ?? [{ type: 'tcp', host: options.deviceHost, port: options.devicePort }];
    try {
      for (const listener of wanted) {
        agent.listeners.push(
          await DeviceListener.start(
            { backlog: options.deviceBacklog ?? DEFAULT_DEVICE_BACKLOG, ...listener },
            options.maxPacketSize,
            (socket, identity) => agent.devices.add(new DeviceConnection(socket, agent, identity)),
            options.log,
            agent.deviceLog,
          ),
        );
      }
    } catch (err) {
      await agent.close();
      throw err;
    }
    agent.pool.start();
    options.log.info({ devices: agent.deviceAddresses, hubs: options.hubs, tunnels: options.tunnels }, 'agent listening');
    return agent;
  }

  /** The first listener's address (the plain TCP one unless `listeners` says otherwise). */
  get deviceAddress(): AddressInfo {
    return this.listeners[0].address;
  }

  /** Every listener's address, in the order they were configured. */
  get deviceAddresses(): (AddressInfo & { type: ListenerType })[] {
    return this.listeners.map((listener) => ({ type: listener.options.type, ...listener.address }));
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
      connectsRateLimited: this.connectRate?.refused ?? 0,
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
    const listenersClosed = Promise.all(this.listeners.map((listener) => listener.close()));
    const devicesClosed = [...this.devices].map((device) => device.shutDown('agent shutting down'));
    await this.pool.stop('agent shutting down');
    await Promise.all(devicesClosed);
    await listenersClosed;
  }

  private sweepDevices(): void {
    const now = this.clock.now();
    for (const device of this.devices) device.checkTimers(now, this.options.connectTimeoutMs);
    this.streams.sweep(now);
  }
}
