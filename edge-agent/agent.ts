import net, { type AddressInfo } from 'node:net';
import { type ControlFrame, FrameType } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { MuxStream } from '../shared/mux-stream.js';
import type { Tunnel } from '../shared/tunnel.js';
import type { DeviceConnect } from './connect-packet.js';
import { DeviceConnection, type DeviceHost } from './device-connection.js';
import { SocketBatcher } from './socket-batcher.js';
import { type HubAddress, TunnelPool } from './tunnel-pool.js';

export type DeviceStream = MuxStream<DeviceConnection, Tunnel>;

export interface AgentOptions {
  agentId: string;
  /** Index of this worker process when the agent runs several (`--workers`); 0 otherwise. */
  worker?: number;
  deviceHost: string;
  devicePort: number;
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

/** A stream whose tunnel died: since when, which tunnel it asked to resume on, and a close it owes the hub. */
interface Detachment {
  since: number;
  resumingOn: Tunnel | null;
  pendingClose: { reason: string; abrupt: boolean } | null;
}

const SWEEP_INTERVAL_MS = 1000;

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
  deviceDisconnects = 0;
  private readonly detached = new Map<DeviceStream, Detachment>();
  private nextStreamId = 1;
  private readonly sweep: NodeJS.Timeout;

  private constructor(
    private readonly options: AgentOptions,
    private readonly server: net.Server,
  ) {
    this.log = options.log;
    this.maxPacketSize = options.maxPacketSize;
    this.assignedIdPrefix = `emx-${options.agentId}-`;
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
      log: options.log,
    });
    this.pool.on('control', (tunnel, frame) => this.onStreamControl(tunnel, frame));
    this.pool.on('down', (tunnel) => this.onTunnelDown(tunnel));
    this.pool.on('up', () => this.resumeDetached());
    server.on('connection', (socket) => this.devices.add(new DeviceConnection(socket, this)));
    this.sweep = setInterval(() => this.sweepDevices(), SWEEP_INTERVAL_MS);
    this.sweep.unref();
  }

  static async start(options: AgentOptions): Promise<EdgeAgent> {
    const server = net.createServer({ noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.devicePort, options.deviceHost, () => {
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
      detached: this.detached.size,
      tunnelsUp: this.pool.readyCount,
      wanConnections: this.pool.connectionsOpened,
      deviceDisconnects: this.deviceDisconnects,
    };
  }

  openStream(device: DeviceConnection, connect: DeviceConnect): DeviceStream | null {
    const picked = this.pool.pick(connect.clientId);
    if (picked === null) return null;
    const { tunnel, hubStreamWindow } = picked;
    const streamId = this.allocateStreamId();
    const stream: DeviceStream = new MuxStream(streamId, tunnel, device, hubStreamWindow, this.options.streamWindow, this.options.maxPacketSize);
    tunnel.streams.set(streamId, stream);
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
    const detachment = this.detached.get(stream);
    if (detachment !== undefined) {
      // The hub still has bytes of this device to receive; close once the stream is back.
      detachment.pendingClose = { reason, abrupt };
      return;
    }
    const tunnel = stream.carrier;
    stream.close();
    if (tunnel === null) return;
    tunnel.streams.delete(stream.id);
    tunnel.send({ type: FrameType.CLOSE, streamId: stream.id, body: { reason, abrupt } });
  }

  deviceClosed(device: DeviceConnection, afterConnect: boolean): void {
    this.devices.delete(device);
    if (afterConnect) this.deviceDisconnects++;
    const stream = device.stream;
    if (stream !== null && !this.detached.has(stream)) stream.carrier?.streams.delete(stream.id);
  }

  async close(): Promise<void> {
    clearInterval(this.sweep);
    this.pool.stop();
    for (const device of this.devices) device.socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onStreamControl(tunnel: Tunnel, frame: ControlFrame): void {
    const stream = tunnel.streams.get(frame.streamId) as DeviceStream | undefined;
    if (stream === undefined) return;
    if (frame.type === FrameType.ACCEPT) {
      const detachment = this.detached.get(stream);
      if (detachment === undefined) {
        stream.setPeerWindow(frame.body.window);
        return;
      }
      if (detachment.resumingOn !== tunnel) return;
      this.detached.delete(stream);
      stream.attach(tunnel, frame.body.received, frame.body.window);
      if (detachment.pendingClose !== null) this.closeStream(stream, detachment.pendingClose.reason, detachment.pendingClose.abrupt);
      return;
    }
    if (frame.type === FrameType.CLOSE) {
      tunnel.streams.delete(stream.id);
      this.detached.delete(stream);
      stream.sink.closeFromHub(frame.body.reason);
    }
  }

  private onTunnelDown(tunnel: Tunnel): void {
    const now = Date.now();
    for (const stream of tunnel.streams.values() as IterableIterator<DeviceStream>) {
      if (stream.state === 'closed') continue;
      const known = this.detached.get(stream);
      if (known !== undefined) {
        known.resumingOn = null;
      } else {
        stream.detach();
        this.detached.set(stream, { since: now, resumingOn: null, pendingClose: null });
      }
    }
    tunnel.streams.clear();
    this.resumeDetached();
  }

  /** Asks the hub to continue every detached stream on a live tunnel. */
  private resumeDetached(): void {
    for (const [stream, detachment] of this.detached) {
      if (detachment.resumingOn !== null) continue;
      const clientId = stream.sink.clientId!;
      const picked = this.pool.pick(clientId);
      if (picked === null) return;
      detachment.resumingOn = picked.tunnel;
      picked.tunnel.streams.set(stream.id, stream);
      picked.tunnel.send({
        type: FrameType.RESUME,
        streamId: stream.id,
        body: { clientId, window: this.options.streamWindow, received: stream.receivedOffset },
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
    for (const [stream, detachment] of this.detached) {
      if (now - detachment.since <= this.options.resumeGraceMs) continue;
      this.detached.delete(stream);
      detachment.resumingOn?.streams.delete(stream.id);
      stream.close();
      stream.sink.resumeExpired();
    }
  }
}
