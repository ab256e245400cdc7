import type { AddressInfo } from 'node:net';
import { assignedIdPrefix } from '../shared/assigned-client-id.js';
import { type CloseBody, type ControlFrame, FrameType } from '../shared/frame-codec.js';
import type { HttpProxy } from '../shared/http-proxy.js';
import { RateLimitedLog } from '../shared/log-rate-limit.js';
import type { Logger } from '../shared/logger.js';
import { MuxStream } from '../shared/mux-stream.js';
import { SocketBatcher } from '../shared/socket-batcher.js';
import type { Tunnel } from '../shared/tunnel.js';
import type { ConnectLimits, DeviceConnect } from './connect-packet.js';
import { ConnectRate } from './connect-rate.js';
import { DeviceConnection, type DeviceHost, type DeviceTraffic } from './device-connection.js';
import { DeviceListener, type DeviceListenerOptions, type ListenerDeviceLog, type ListenerType } from './device-listeners.js';
import type { TunnelTransport } from './tunnel-dialer.js';
import { type HubAddress, TunnelPool } from './tunnel-pool.js';

export type DeviceStream = MuxStream<DeviceConnection, Tunnel>;

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

/** What the agent tracks of one device stream beyond its bytes. */
interface StreamState {
  /** The hub holding the device's session: a stream resumes there while a tunnel to it is up. */
  hubId: string;
  /** Set while the stream's tunnel is gone. */
  detachedSince: number | null;
  /** The tunnel a RESUME was sent on, until ACCEPT or CLOSE answers it. */
  resumingOn: Tunnel | null;
  resumeAttempt: number;
  /** The CLOSE this side sent or owes; the stream is kept until the hub's CLOSE confirms it. */
  closing: CloseBody | null;
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
/** The agent's replay memory per stream stays bounded whatever window the hub grants. */
const MAX_STREAM_WINDOW = 16 * 1024 * 1024;

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
  readonly connectLimits: ConnectLimits;
  readonly connectRate: ConnectRate | null;
  deviceDisconnects = 0;
  readonly traffic: DeviceTraffic = { messagesToHub: 0, bytesToHub: 0, messagesToDevice: 0, bytesToDevice: 0 };
  readonly deviceLog: DeviceHost['deviceLog'] & ListenerDeviceLog;
  private readonly streamStates = new Map<DeviceStream, StreamState>();
  private nextStreamId = 1;
  private readonly sweep: NodeJS.Timeout;
  /** Hubs (HELLO id) that said goodbye and have not come back: none of their streams can resume. */
  private readonly departedHubs = new Set<string>();

  private readonly listeners: DeviceListener[] = [];

  private constructor(private readonly options: AgentOptions) {
    this.log = options.log;
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
    this.connectRate = perSecond > 0 ? new ConnectRate(perSecond, options.now) : null;
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
      log: options.log,
    });
    this.pool.on('control', (tunnel, frame) => this.onStreamControl(tunnel, frame));
    this.pool.on('down', (tunnel) => this.onTunnelDown(tunnel));
    this.pool.on('up', (tunnel) => {
      this.departedHubs.delete(tunnel.peerId);
      this.resumeDetached();
    });
    this.pool.on('gave-up', () => this.resumeDetached());
    this.sweep = setInterval(() => this.sweepDevices(), SWEEP_INTERVAL_MS);
    this.sweep.unref();
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
    let detached = 0;
    for (const state of this.streamStates.values()) if (state.detachedSince !== null) detached++;
    return {
      devices: this.devices.size,
      attached,
      detached,
      tunnelsUp: this.pool.readyCount,
      wanConnections: this.pool.connectionsOpened,
      deviceDisconnects: this.deviceDisconnects,
      connectsRateLimited: this.connectRate?.refused ?? 0,
    };
  }

  openStream(device: DeviceConnection, connect: DeviceConnect): DeviceStream | null {
    const picked = this.pool.pick(connect.clientId);
    if (picked === null) return null;
    const { tunnel, hubStreamWindow } = picked;
    const streamId = this.allocateStreamId();
    const stream: DeviceStream = new MuxStream(streamId, tunnel, device, hubStreamWindow, this.options.streamWindow, this.options.maxPacketSize);
    tunnel.streams.set(streamId, stream);
    this.streamStates.set(stream, { hubId: tunnel.peerId, detachedSince: null, resumingOn: null, resumeAttempt: 0, closing: null });
    tunnel.send({
      type: FrameType.OPEN,
      streamId,
      body: {
        clientId: connect.clientId,
        window: this.options.streamWindow,
        keepalive: connect.keepaliveSeconds,
        protocolVersion: connect.protocolVersion,
        cleanSession: connect.cleanSession,
        ...(connect.username !== undefined ? { username: connect.username } : {}),
      },
    });
    stream.write(connect.bytes);
    return stream;
  }

  closeStream(stream: DeviceStream, reason: string, abrupt: boolean): void {
    const state = this.streamStates.get(stream);
    if (state === undefined || state.closing !== null) return;
    // The stream and its replay buffer stay until the hub confirms with its own
    // CLOSE, so the device's last bytes survive a tunnel lost in between.
    state.closing = { reason, abrupt };
    if (state.detachedSince === null) stream.carrier?.send({ type: FrameType.CLOSE, streamId: stream.id, body: state.closing });
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
    clearInterval(this.sweep);
    const listenersClosed = Promise.all(this.listeners.map((listener) => listener.close()));
    const devicesClosed = [...this.devices].map((device) => device.shutDown('agent shutting down'));
    await this.pool.stop('agent shutting down');
    await Promise.all(devicesClosed);
    await listenersClosed;
  }

  private onStreamControl(tunnel: Tunnel, frame: ControlFrame): void {
    const stream = tunnel.streams.get(frame.streamId) as DeviceStream | undefined;
    const state = stream === undefined ? undefined : this.streamStates.get(stream);
    if (stream === undefined || state === undefined) {
      // The hub resumed a stream this agent has given up on: end it there too.
      if (frame.type === FrameType.ACCEPT) {
        tunnel.send({ type: FrameType.CLOSE, streamId: frame.streamId, body: { reason: 'stream no longer held by the agent', abrupt: true } });
      }
      return;
    }
    if (frame.type === FrameType.ACCEPT) {
      const window = Math.min(frame.body.window, MAX_STREAM_WINDOW);
      if (state.detachedSince === null) {
        stream.setPeerWindow(window);
        return;
      }
      try {
        stream.attach(tunnel, frame.body.received, window);
      } catch (err) {
        this.log.warn({ streamId: stream.id, clientId: stream.sink.clientId, reason: (err as Error).message }, 'stream could not resume');
        tunnel.send({ type: FrameType.CLOSE, streamId: stream.id, body: { reason: 'resume failed', abrupt: true } });
        this.forget(stream, tunnel);
        stream.sink.resumeExpired();
        return;
      }
      state.detachedSince = null;
      state.resumingOn = null;
      state.hubId = tunnel.peerId;
      if (state.closing !== null) tunnel.send({ type: FrameType.CLOSE, streamId: stream.id, body: state.closing });
      return;
    }
    if (frame.type === FrameType.CLOSE) {
      if (stream.carrier !== tunnel && state.resumingOn !== tunnel) return;
      if (state.closing === null) {
        // The hub ended the session (DISCONNECT, takeover, refusal, unknown stream): confirm and close the device.
        tunnel.send({ type: FrameType.CLOSE, streamId: stream.id, body: { reason: 'closed', abrupt: false } });
        stream.sink.closeFromHub(frame.body.reason);
      }
      this.forget(stream, tunnel);
    }
  }

  private forget(stream: DeviceStream, tunnel: Tunnel | null): void {
    const state = this.streamStates.get(stream);
    this.streamStates.delete(stream);
    tunnel?.streams.delete(stream.id);
    state?.resumingOn?.streams.delete(stream.id);
    stream.carrier?.streams.delete(stream.id);
    stream.close();
  }

  private onTunnelDown(tunnel: Tunnel): void {
    if (tunnel.peerGoodbye !== null) this.departedHubs.add(tunnel.peerId);
    if (this.departedHubs.has(tunnel.peerId)) {
      this.endStreamsOfDepartedHub(tunnel);
      return;
    }
    const now = Date.now();
    for (const stream of tunnel.streams.values() as IterableIterator<DeviceStream>) {
      const state = this.streamStates.get(stream);
      if (state === undefined || stream.state === 'closed') continue;
      if (state.detachedSince === null) {
        stream.detach();
        state.detachedSince = now;
      }
      state.resumingOn = null;
    }
    tunnel.streams.clear();
    this.resumeDetached();
  }

  /**
   * The hub said goodbye: it has ended every session it held for this agent,
   * so the devices are closed now rather than after the resume grace period,
   * and reconnect (to another hub, or to this one when it is back). Streams
   * riding the hub's other tunnels end when those close, behind their own
   * GOODBYE, so the broker's last packets on them still reach the devices.
   */
  private endStreamsOfDepartedHub(tunnel: Tunnel): void {
    const reason = `hub ${tunnel.peerId} said goodbye`;
    const ending: DeviceStream[] = [];
    for (const [stream, state] of this.streamStates) {
      if (state.hubId === tunnel.peerId && (state.detachedSince !== null || stream.carrier === tunnel)) ending.push(stream);
      // A stream of another hub that was asking to resume here asks again elsewhere.
      else if (state.resumingOn === tunnel) state.resumingOn = null;
    }
    tunnel.streams.clear();
    for (const stream of ending) {
      const state = this.streamStates.get(stream);
      if (state === undefined) continue;
      this.forget(stream, null);
      if (state.closing === null) stream.sink.closeFromHub(reason, true);
    }
    if (ending.length > 0) this.log.info({ hubId: tunnel.peerId, streams: ending.length, reason }, 'closing the devices of a departed hub');
    this.resumeDetached();
  }

  /** Asks the hub to continue every detached stream on a live tunnel, to the same hub where one is up. */
  private resumeDetached(): void {
    for (const [stream, state] of this.streamStates) {
      if (state.detachedSince === null || state.resumingOn !== null) continue;
      const clientId = stream.sink.clientId!;
      // While a tunnel slot is still redialling the stream's own hub, wait for
      // it: any other hub would refuse the stream and the device reconnect.
      const picked = this.pool.pick(clientId, state.hubId, this.pool.mayReach(state.hubId));
      if (picked === null) continue;
      state.resumingOn = picked.tunnel;
      state.resumeAttempt++;
      picked.tunnel.streams.set(stream.id, stream);
      picked.tunnel.send({
        type: FrameType.RESUME,
        streamId: stream.id,
        body: { clientId, window: this.options.streamWindow, received: stream.receivedOffset, attempt: state.resumeAttempt },
      });
    }
  }

  private allocateStreamId(): number {
    const id = this.nextStreamId;
    // Agent-opened streams are odd (hub-opened ones would be even); wrap before u32 overflow.
    this.nextStreamId = this.nextStreamId >= 0xffff_fffd ? 1 : this.nextStreamId + 2;
    return id;
  }

  private sweepDevices(): void {
    const now = Date.now();
    for (const device of this.devices) device.checkTimers(now, this.options.connectTimeoutMs);
    for (const [stream, state] of this.streamStates) {
      if (state.detachedSince === null || now - state.detachedSince <= this.options.resumeGraceMs) continue;
      // A RESUME still on its way would reattach the session at the hub: end it behind the RESUME.
      state.resumingOn?.send({ type: FrameType.CLOSE, streamId: stream.id, body: { reason: 'resume grace period expired', abrupt: true } });
      this.forget(stream, null);
      if (state.closing === null) stream.sink.resumeExpired();
    }
  }
}
