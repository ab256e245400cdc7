import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import mqttPacket from 'mqtt-packet';
import type { Aedes } from 'aedes';
import { type ControlFrame, FrameType, type OpenBody, PROTOCOL_VERSION } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { MuxStream } from '../shared/mux-stream.js';
import { Tunnel } from '../shared/tunnel.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import { DeviceSession } from './device-session.js';
import { type EmbeddedBroker, startEmbeddedBroker } from './embedded-broker.js';

export interface HubOptions {
  tunnelHost: string;
  tunnelPort: number;
  appHost: string;
  appPort: number;
  tls: { ca: string; cert: string; key: string };
  hubId: string;
  streamWindow: number;
  maxPacketSize: number;
  heartbeatMs: number;
  deadAfterMs: number;
  log: Logger;
}

type SessionStream = MuxStream<DeviceSession, Tunnel>;

export interface HubStats {
  agents: number;
  tunnels: number;
  sessions: number;
}

/** MQTT 5 reason code 0x84, Unsupported Protocol Version (§3.2.2.2): aedes speaks 3.1.1 only. */
const UNSUPPORTED_PROTOCOL_VERSION = 0x84;
const SWEEP_INTERVAL_MS = 1000;

/**
 * The cloud side: accepts agent tunnels over mutual TLS, takes their streams
 * apart into one session per device and hands each to the embedded broker.
 */
export class CloudHub {
  readonly broker: Aedes;
  readonly sessions = new Set<DeviceSession>();
  private readonly tunnels = new Set<Tunnel>();
  private readonly sweep: NodeJS.Timeout;

  private constructor(
    private readonly options: HubOptions,
    private readonly embedded: EmbeddedBroker,
    private readonly tunnelServer: tls.Server,
  ) {
    this.broker = embedded.broker;
    tunnelServer.on('secureConnection', (socket) => this.acceptTunnel(socket));
    tunnelServer.on('tlsClientError', (err, socket) => {
      options.log.warn({ remote: socket.remoteAddress, reason: err.message }, 'tunnel TLS handshake refused');
    });
    this.sweep = setInterval(() => this.sweepSessions(), SWEEP_INTERVAL_MS);
    this.sweep.unref();
  }

  static async start(options: HubOptions): Promise<CloudHub> {
    const embedded = await startEmbeddedBroker({ appHost: options.appHost, appPort: options.appPort });
    const tunnelServer = tls.createServer({
      ca: options.tls.ca,
      cert: options.tls.cert,
      key: options.tls.key,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
    });
    await new Promise<void>((resolve, reject) => {
      tunnelServer.once('error', reject);
      tunnelServer.listen(options.tunnelPort, options.tunnelHost, () => {
        tunnelServer.off('error', reject);
        resolve();
      });
    });
    const hub = new CloudHub(options, embedded, tunnelServer);
    options.log.info({ tunnel: hub.tunnelAddress, app: hub.appAddress }, 'hub listening');
    return hub;
  }

  get tunnelAddress(): AddressInfo {
    return this.tunnelServer.address() as AddressInfo;
  }

  get appAddress(): AddressInfo {
    return this.embedded.appServer.address() as AddressInfo;
  }

  stats(): HubStats {
    const agents = new Set<string>();
    for (const tunnel of this.tunnels) agents.add(agentIdOf(tunnel));
    return { agents: agents.size, tunnels: this.tunnels.size, sessions: this.sessions.size };
  }

  async close(): Promise<void> {
    clearInterval(this.sweep);
    await new Promise<void>((resolve) => {
      this.tunnelServer.close(() => resolve());
      for (const tunnel of this.tunnels) tunnel.close('hub shutting down');
    });
    await this.embedded.close();
  }

  private acceptTunnel(socket: tls.TLSSocket): void {
    const agentId = socket.getPeerCertificate().subject?.CN;
    const log = this.options.log.child({ agentId, remote: socket.remoteAddress });
    if (typeof agentId !== 'string' || agentId.length === 0) {
      log.warn({ reason: 'certificate has no common name' }, 'tunnel refused');
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const tunnel = new Tunnel(socket, {
      maxFramePayload: this.options.maxPacketSize,
      heartbeatMs: this.options.heartbeatMs,
      deadAfterMs: this.options.deadAfterMs,
      highWaterBytes: TUNNEL_DEFAULTS.highWaterBytes,
      log,
    });
    tunnelAgents.set(tunnel, agentId);
    let greeted = false;
    const helloTimer = setTimeout(() => {
      if (!greeted) tunnel.close('no HELLO in time');
    }, TUNNEL_DEFAULTS.helloTimeoutMs);
    this.tunnels.add(tunnel);
    tunnel.on('control', (frame) => {
      if (frame.type === FrameType.HELLO) {
        greeted = true;
        clearTimeout(helloTimer);
        tunnel.send({
          type: FrameType.HELLO,
          streamId: 0,
          body: { version: PROTOCOL_VERSION, role: 'hub', id: this.options.hubId, heartbeatMs: this.options.heartbeatMs, streamWindow: this.options.streamWindow },
        });
        log.info('agent tunnel up');
        return;
      }
      if (!greeted) {
        log.warn({ reason: `frame type ${frame.type} before HELLO` }, 'closing tunnel');
        tunnel.close('protocol violation: frame before HELLO');
        return;
      }
      this.onStreamControl(tunnel, agentId, frame, log);
    });
    tunnel.on('closed', (reason) => {
      clearTimeout(helloTimer);
      this.tunnels.delete(tunnel);
      log.info({ reason }, 'agent tunnel down');
      for (const stream of [...tunnel.streams.values()]) {
        (stream as SessionStream).sink.closeFromAgent(`tunnel lost: ${reason}`, true);
      }
    });
  }

  private onStreamControl(tunnel: Tunnel, agentId: string, frame: ControlFrame, log: Logger): void {
    switch (frame.type) {
      case FrameType.OPEN:
        this.openSession(tunnel, agentId, frame.streamId, frame.body, log);
        return;
      case FrameType.CLOSE: {
        const stream = tunnel.streams.get(frame.streamId);
        if (stream !== undefined) (stream as SessionStream).sink.closeFromAgent(frame.body.reason, frame.body.abrupt);
        return;
      }
      default:
        log.warn({ streamId: frame.streamId, reason: `unexpected frame type ${frame.type}` }, 'ignoring frame');
    }
  }

  private openSession(tunnel: Tunnel, agentId: string, streamId: number, open: OpenBody, log: Logger): void {
    if (tunnel.streams.has(streamId)) {
      tunnel.close(`protocol violation: stream ${streamId} opened twice`);
      return;
    }
    const session = new DeviceSession({
      clientId: open.clientId,
      agentId,
      keepaliveSeconds: open.keepalive,
      maxPacketSize: this.options.maxPacketSize,
      log,
      onClosed: (closed) => this.sessions.delete(closed),
    });
    const stream = new MuxStream(streamId, tunnel, session, open.window, this.options.streamWindow, this.options.maxPacketSize);
    session.bind(tunnel, stream);
    tunnel.streams.set(streamId, stream);
    tunnel.send({ type: FrameType.ACCEPT, streamId, body: { window: this.options.streamWindow, received: 0 } });
    if (open.protocolVersion === 5) {
      log.info({ clientId: open.clientId, reason: 'MQTT 5 on the embedded 3.1.1 broker' }, 'device refused');
      const connack = mqttPacket.generate(
        { cmd: 'connack', reasonCode: UNSUPPORTED_PROTOCOL_VERSION, sessionPresent: false },
        { protocolVersion: 5 },
      );
      stream.write(connack);
      tunnel.send({ type: FrameType.CLOSE, streamId, body: { reason: 'unsupported protocol version', abrupt: false } });
      stream.close();
      tunnel.streams.delete(streamId);
      return;
    }
    this.sessions.add(session);
    this.broker.handle(session.pipe);
  }

  private sweepSessions(): void {
    const now = Date.now();
    for (const session of this.sessions) session.keepBrokerAlive(now);
  }
}

const tunnelAgents = new WeakMap<Tunnel, string>();

function agentIdOf(tunnel: Tunnel): string {
  return tunnelAgents.get(tunnel) ?? 'unknown';
}
