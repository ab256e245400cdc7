import net, { type AddressInfo } from 'node:net';
import { FrameType } from '../shared/frame-codec.js';
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
  backoffInitialMs: number;
  backoffMaxMs: number;
  log: Logger;
}

export interface AgentStats {
  devices: number;
  attached: number;
  tunnelsUp: number;
  wanConnections: number;
}

const SWEEP_INTERVAL_MS = 1000;

/**
 * The edge side: accepts local MQTT devices and carries each one as a stream
 * over the tunnel pool to the hub.
 */
export class EdgeAgent implements DeviceHost {
  readonly batcher = new SocketBatcher();
  readonly devices = new Set<DeviceConnection>();
  readonly pool: TunnelPool;
  readonly log: Logger;
  readonly maxPacketSize: number;
  readonly assignedIdPrefix: string;
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
    this.pool.on('control', (tunnel, frame) => {
      const device = deviceOnStream(tunnel, frame.streamId);
      if (frame.type === FrameType.CLOSE) device?.closeFromHub(frame.body.reason);
      else if (frame.type === FrameType.ACCEPT) tunnel.streams.get(frame.streamId)?.setPeerWindow(frame.body.window);
    });
    this.pool.on('down', (tunnel, _slot, reason) => {
      for (const streamId of [...tunnel.streams.keys()]) deviceOnStream(tunnel, streamId)?.tunnelLost(reason);
      tunnel.streams.clear();
    });
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
    return { devices: this.devices.size, attached, tunnelsUp: this.pool.readyCount, wanConnections: this.pool.connectionsOpened };
  }

  openStream(device: DeviceConnection, connect: DeviceConnect): DeviceStream | null {
    const picked = this.pool.pick(connect.clientId);
    if (picked === null) return null;
    const { tunnel, hubStreamWindow } = picked;
    const streamId = this.allocateStreamId();
    const stream = new MuxStream(streamId, tunnel, device, hubStreamWindow, this.options.streamWindow, this.options.maxPacketSize);
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
    const tunnel = stream.carrier;
    stream.close();
    tunnel.streams.delete(stream.id);
    tunnel.send({ type: FrameType.CLOSE, streamId: stream.id, body: { reason, abrupt } });
  }

  deviceClosed(device: DeviceConnection): void {
    this.devices.delete(device);
    if (device.stream !== null) device.stream.carrier.streams.delete(device.stream.id);
  }

  async close(): Promise<void> {
    clearInterval(this.sweep);
    this.pool.stop();
    for (const device of this.devices) device.socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
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
  }
}

function deviceOnStream(tunnel: Tunnel, streamId: number): DeviceConnection | undefined {
  return (tunnel.streams.get(streamId) as DeviceStream | undefined)?.sink;
}
