import type { AddressInfo, Socket } from 'node:net';
import tls from 'node:tls';
import type { Aedes } from 'aedes';
import { type Clock, systemClock, type Timer } from '../shared/clock.js';
import { EndCounts } from '../shared/end-reasons.js';
import { EdgemuxError } from '../shared/errors.js';
import { type ControlFrame, FrameType, PROTOCOL_VERSION } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { Tunnel } from '../shared/tunnel.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import { type AgentRecord, AgentRecords } from './agent-records.js';
import { AppAccess, anonymousAccess, isLoopbackHost } from './app-access.js';
import { HUB_DEFAULTS } from './config.js';
import type { DeviceSession } from './device-session.js';
import { type EmbeddedBroker, startEmbeddedBroker } from './embedded-broker.js';
import type { PasswordFile } from './password-file.js';
import { Registry } from './registry.js';
import type { NamespaceRule, Route } from './routes.js';
import { SessionAdmission } from './session-admission.js';
import { SessionIndex } from './session-index.js';
import { SessionStreams } from './session-streams.js';
import { SqlitePersistence } from './sqlite-persistence.js';

export interface HubOptions {
  tunnelHost: string;
  tunnelPort: number;
  /** Time a tunnel connection has to finish its TLS handshake; HUB_DEFAULTS.handshakeTimeoutMs when absent. */
  handshakeTimeoutMs?: number;
  /** Tunnel connections allowed at once before their HELLO; HUB_DEFAULTS.maxUnauthenticated when absent. */
  maxUnauthenticated?: number;
  appHost: string;
  appPort: number;
  /** Application credentials; without them, only anonymous applications (see appAllowAnonymous). */
  appPasswords?: PasswordFile | null;
  /** Unset: anonymous applications on a loopback app port without passwords, and start-up refused on any other address. */
  appAllowAnonymous?: boolean;
  /** Largest packet an application may send; the tunnel's maxPacketSize when unset. */
  appMaxPacketSize?: number;
  tls: { ca: string; cert: string; key: string };
  hubId: string;
  streamWindow: number;
  maxPacketSize: number;
  heartbeatMs: number;
  deadAfterMs: number;
  /** How long a device session outlives its tunnel waiting for the agent to resume it. */
  resumeGraceMs: number;
  /** Per device: bytes the broker may queue for a device that does not read before it is cut off. */
  maxQueuedBytes: number;
  /** Which broker each device goes to; without routes every device uses the embedded broker. */
  routes?: Route[];
  /** Which client IDs each agent may speak for; without rules, any. */
  namespaces?: NamespaceRule[];
  /**
   * SQLite file for the embedded broker's sessions, retained messages and
   * offline queues, and for the agent and device registry. Without it the
   * broker keeps its state in memory and there is no registry.
   */
  statePath?: string;
  /** Time for the stream rules: grace periods, CONNECT timeouts, broker keepalives, tunnel heartbeats; the system clock when absent. */
  clock?: Clock;
  log: Logger;
}

export interface HubStats {
  agents: number;
  tunnels: number;
  sessions: number;
  detached: number;
  queuedBytes: number;
  replayBytes: number;
  /** Device bytes the broker links hold: dialling, or waiting for a congested broker. */
  brokerHeldBytes: number;
  droppedQos0: number;
  /** Tunnels refused since start because another instance of the agent held the identity. */
  refusedTunnels: number;
  /** Tunnel connections open that have not (yet) been accepted with HELLO. */
  unauthenticated: number;
  /** Tunnel connections closed for not finishing the TLS handshake in time. */
  handshakeTimeouts: number;
  /** Tunnel connections closed on accept because too many were unauthenticated. */
  unauthenticatedRefused: number;
}

const SWEEP_INTERVAL_MS = 1000;
/** How long a stream may go without its CONNECT after OPEN (as long as a tunnel has for its HELLO). */
const CONNECT_TIMEOUT_MS = TUNNEL_DEFAULTS.helloTimeoutMs;

function tunnelContext(material: HubOptions['tls']): tls.SecureContextOptions {
  return { ca: material.ca, cert: material.cert, key: material.key, minVersion: 'TLSv1.3' };
}

/**
 * The cloud side: accepts agent tunnels over mutual TLS, takes their streams
 * apart into one session per device and hands each to the embedded broker.
 */
export class CloudHub {
  readonly broker: Aedes;
  private readonly index: SessionIndex;
  private readonly admission: SessionAdmission;
  private readonly agents: AgentRecords;
  private readonly tunnels = new Set<Tunnel>();
  /** Agent tunnels closed since start, by why. */
  readonly tunnelEnds = new EndCounts();
  private readonly streams: SessionStreams<AgentRecord>;
  private readonly clock: Clock;
  private readonly sweep: Timer;
  private refusedTunnels = 0;
  private tunnelConnections = 0;
  private helloTunnels = 0;
  private handshakeTimeouts = 0;
  private unauthenticatedRefused = 0;
  /** Set while connections are being refused, so the refusals are logged once, not once each. */
  private refusingUnauthenticated = false;

  private constructor(
    private readonly options: HubOptions,
    private readonly embedded: EmbeddedBroker,
    private readonly tunnelServer: tls.Server,
    /** Agents and devices as seen by this hub, when it keeps state on disk. */
    readonly registry: Registry | null,
  ) {
    this.broker = embedded.broker;
    this.index = new SessionIndex(registry);
    this.admission = new SessionAdmission(options.routes ?? [], options.namespaces ?? [], embedded.broker, this.index);
    this.clock = options.clock ?? systemClock;
    this.streams = new SessionStreams({
      streamWindow: options.streamWindow,
      maxPacketSize: options.maxPacketSize,
      maxQueuedBytes: options.maxQueuedBytes,
      resumeGraceMs: options.resumeGraceMs,
      connectTimeoutMs: CONNECT_TIMEOUT_MS,
      clock: this.clock,
      log: options.log,
      opened: (session) => this.index.opened(session),
      admit: (session, agent, open, connect, log) => this.admission.admit(session, agent.agentId, open, connect, log),
      closed: (session, agent) => {
        this.index.closed(session);
        this.agents.prune(agent);
      },
    });
    this.agents = new AgentRecords((retired) => {
      this.streams.endAll(retired, 'agent-restarted', 'agent restarted');
      for (const tunnel of retired.tunnels) tunnel.close('agent-restarted', 'agent restarted');
    });
    tunnelServer.on('connection', (socket) => this.admitTunnelConnection(socket));
    tunnelServer.on('secureConnection', (socket) => this.acceptTunnel(socket));
    tunnelServer.on('tlsClientError', (err: NodeJS.ErrnoException, socket) => {
      if (err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT') this.handshakeTimeouts++;
      if (err.code === 'ECONNRESET') {
        // The peer went away (or was refused on accept, already logged): nothing was decided here.
        options.log.debug({ remote: socket.remoteAddress, reason: err.message }, 'tunnel connection closed before the TLS handshake');
      } else {
        options.log.warn({ remote: socket.remoteAddress, reason: err.message }, 'tunnel TLS handshake refused');
      }
      // With a tlsClientError listener Node leaves the socket open, timeouts included.
      socket.destroy();
    });
    this.sweep = this.clock.setInterval(() => this.sweepSessions(), SWEEP_INTERVAL_MS);
    // The registry keeps what it could not write and retries: one line when the
    // disk goes away and one when it is back, the count of failures in metrics.
    registry?.on('flushFailed', (err, failures) => {
      const fields = { reason: (err.cause as { code?: string } | undefined)?.code ?? err.message, pendingRows: registry.stats.pendingRows };
      if (failures === 1) options.log.error(fields, 'registry flush failed; keeping its changes and retrying');
      else options.log.debug({ ...fields, failures }, 'registry flush failed again');
    });
    registry?.on('flushRecovered', (failures) => {
      options.log.info({ failures, pendingRows: registry.stats.pendingRows }, 'registry flush succeeded again');
    });
  }

  static async start(options: HubOptions): Promise<CloudHub> {
    const passwords = options.appPasswords ?? null;
    const anonymous = anonymousAccess({ host: options.appHost, passwordFile: passwords !== null, allowAnonymous: options.appAllowAnonymous });
    if ('problem' in anonymous) {
      throw new EdgemuxError('E_CONFIG', `app.${anonymous.key}: ${anonymous.problem} (got ${JSON.stringify(anonymous.key === 'host' ? options.appHost : options.appAllowAnonymous)})`);
    }
    if (anonymous.allow && !isLoopbackHost(options.appHost)) {
      options.log.warn({ app: { host: options.appHost, port: options.appPort } }, 'application port open without credentials to anyone who reaches it');
    }
    const persistence = options.statePath !== undefined ? new SqlitePersistence({ path: options.statePath }) : undefined;
    // Before the app port opens, so an application is checked against devices known from earlier runs.
    const registry = persistence !== undefined ? new Registry(persistence.db) : null;
    let hub: CloudHub | null = null;
    const appAccess = new AppAccess({
      passwords,
      allowAnonymous: anonymous.allow,
      isDeviceClientId: (clientId) => (hub !== null ? hub.isDeviceClientId(clientId) : (registry?.knowsDevice(clientId) ?? false)),
    });
    const embedded = await startEmbeddedBroker({
      appHost: options.appHost,
      appPort: options.appPort,
      appAccess,
      appMaxPacketSize: options.appMaxPacketSize ?? options.maxPacketSize,
      persistence,
      log: options.log,
    });
    const tunnelServer = tls.createServer({
      ...tunnelContext(options.tls),
      requestCert: true,
      rejectUnauthorized: true,
      handshakeTimeout: options.handshakeTimeoutMs ?? HUB_DEFAULTS.handshakeTimeoutMs,
    });
    await new Promise<void>((resolve, reject) => {
      tunnelServer.once('error', reject);
      tunnelServer.listen(options.tunnelPort, options.tunnelHost, () => {
        tunnelServer.off('error', reject);
        resolve();
      });
    });
    hub = new CloudHub(options, embedded, tunnelServer, registry);
    options.log.info({ tunnel: hub.tunnelAddress, app: hub.appAddress }, 'hub listening');
    return hub;
  }

  get tunnelAddress(): AddressInfo {
    return this.tunnelServer.address() as AddressInfo;
  }

  get appAddress(): AddressInfo {
    return this.embedded.appServer.address() as AddressInfo;
  }

  /** The device sessions held. */
  get sessions(): ReadonlySet<DeviceSession> {
    return this.index.sessions;
  }

  /** A client ID a device uses now or has used through a tunnel (recorded in the registry when there is one). */
  isDeviceClientId(clientId: string): boolean {
    return this.index.isDeviceClientId(clientId);
  }

  stats(): HubStats {
    let detached = 0;
    let queuedBytes = 0;
    let replayBytes = 0;
    let brokerHeldBytes = 0;
    for (const session of this.sessions) {
      if (session.state === 'detached') detached++;
      queuedBytes += session.queuedBytes;
      replayBytes += session.stream.replayBytes;
      brokerHeldBytes += session.link?.heldBytes ?? 0;
    }
    const droppedQos0 = this.index.droppedQos0;
    return {
      agents: this.agents.connectedAgents,
      tunnels: this.tunnels.size,
      sessions: this.sessions.size,
      detached,
      queuedBytes,
      replayBytes,
      brokerHeldBytes,
      droppedQos0,
      refusedTunnels: this.refusedTunnels,
      unauthenticated: this.unauthenticated,
      handshakeTimeouts: this.handshakeTimeouts,
      unauthenticatedRefused: this.unauthenticatedRefused,
    };
  }

  /** Device streams ended since start, by why. */
  get streamEnds(): EndCounts {
    return this.streams.ends;
  }

  private get unauthenticated(): number {
    return this.tunnelConnections - this.helloTunnels;
  }

  /**
   * Bounds what strangers can hold: every connection to the tunnel port is
   * unauthenticated until its HELLO is accepted (the TLS handshake alone
   * costs the hub memory and CPU), and past the limit new ones are closed
   * before the handshake starts.
   */
  private admitTunnelConnection(socket: Socket): void {
    const limit = this.options.maxUnauthenticated ?? HUB_DEFAULTS.maxUnauthenticated;
    if (this.unauthenticated >= limit) {
      this.unauthenticatedRefused++;
      if (!this.refusingUnauthenticated) {
        this.refusingUnauthenticated = true;
        this.options.log.warn({ remote: socket.remoteAddress, limit, reason: 'too many unauthenticated tunnel connections' }, 'tunnel connections refused');
      }
      socket.destroy();
      return;
    }
    this.refusingUnauthenticated = false;
    this.tunnelConnections++;
    socket.once('close', () => this.tunnelConnections--);
  }

  /** Routes for devices that connect from now on; connected devices keep their broker connections. */
  replaceRoutes(routes: Route[]): void {
    this.admission.replaceRoutes(routes);
  }

  /** Namespace rules for devices that connect from now on; connected devices were checked on their CONNECT and stay. */
  replaceNamespaces(rules: NamespaceRule[]): void {
    this.admission.replaceNamespaces(rules);
  }

  /** Certificate, key and agent CA for tunnels that connect from now on; tunnels already up keep their session. */
  replaceTls(material: HubOptions['tls']): void {
    this.tunnelServer.setSecureContext(tunnelContext(material));
  }

  /**
   * A graceful stop: every session ends now (the broker publishes the wills
   * of devices that did not disconnect), then each agent tunnel says GOODBYE,
   * so agents close their devices at once instead of holding them for the
   * resume grace period as after a network failure.
   */
  async close(): Promise<void> {
    this.sweep.cancel();
    const serverClosed = new Promise<void>((resolve) => this.tunnelServer.close(() => resolve()));
    this.index.reportTraffic();
    for (const record of this.agents.values()) this.streams.endAll(record, 'shutdown', 'hub shutting down');
    const withHello = new Set<Tunnel>();
    for (const record of this.agents.values()) for (const tunnel of record.tunnels) withHello.add(tunnel);
    for (const tunnel of this.tunnels) {
      if (withHello.has(tunnel)) void tunnel.goodbye('shutdown', 'hub shutting down');
      else tunnel.close('shutdown', 'hub shutting down');
    }
    await serverClosed;
    try {
      this.registry?.close();
    } catch (err) {
      // The broker's own state is written next, whatever happened to the registry's.
      this.options.log.error({ reason: (err as { code?: string }).code ?? (err as Error).message }, 'registry not written at stop');
    }
    this.admission.close();
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
    const fingerprint = (socket.getPeerCertificate().fingerprint256 ?? '').replaceAll(':', '').toLowerCase();
    const tunnel = new Tunnel(socket, {
      maxFramePayload: this.options.maxPacketSize,
      heartbeatMs: this.options.heartbeatMs,
      deadAfterMs: this.options.deadAfterMs,
      highWaterBytes: TUNNEL_DEFAULTS.highWaterBytes,
      clock: this.clock,
      log,
    });
    let record: AgentRecord | null = null;
    // DATA and ACK count once HELLO has named the agent, and only for its streams attached here.
    tunnel.routeStreams((id) => record?.streams.attachedTo(tunnel, id)?.stream);
    const helloTimer = setTimeout(() => {
      if (record === null) tunnel.close('hello-timeout', 'no HELLO in time');
    }, TUNNEL_DEFAULTS.helloTimeoutMs);
    this.tunnels.add(tunnel);
    tunnel.on('control', (frame) => {
      if (frame.type === FrameType.HELLO) {
        if (record !== null) {
          tunnel.close('protocol-error', 'protocol violation: second HELLO');
          return;
        }
        clearTimeout(helloTimer);
        if (frame.body.version !== PROTOCOL_VERSION || frame.body.role !== 'agent') {
          log.warn({ reason: `HELLO version ${frame.body.version} role ${frame.body.role}` }, 'tunnel refused');
          tunnel.close('protocol-error', `unsupported protocol version ${frame.body.version} or role ${frame.body.role}`);
          return;
        }
        tunnel.peerMaxFramePayload = frame.body.maxFramePayload;
        const admitted = this.agents.register(agentId, frame.body.worker ?? 0, frame.body.instance, log);
        if (typeof admitted === 'string') {
          this.refusedTunnels++;
          log.warn({ worker: frame.body.worker ?? 0, instance: frame.body.instance, helloId: frame.body.id, reason: admitted }, 'tunnel refused');
          // The reason goes to the agent in place of HELLO, so its operator sees it there too.
          void tunnel.goodbye('identity-in-use', admitted);
          return;
        }
        record = admitted;
        record.tunnels.add(tunnel);
        this.helloTunnels++;
        this.registry?.agentConnected(agentId, fingerprint, record.tunnels.size);
        tunnel.send({
          type: FrameType.HELLO,
          streamId: 0,
          body: {
            version: PROTOCOL_VERSION,
            role: 'hub',
            id: this.options.hubId,
            heartbeatMs: this.options.heartbeatMs,
            streamWindow: this.options.streamWindow,
            maxFramePayload: this.options.maxPacketSize,
            instance: this.options.hubId,
          },
        });
        log.info('agent tunnel up');
        return;
      }
      if (record === null) {
        log.warn({ reason: `frame type ${frame.type} before HELLO` }, 'closing tunnel');
        tunnel.close('protocol-error', 'protocol violation: frame before HELLO');
        return;
      }
      this.onStreamControl(tunnel, record, frame, log);
    });
    tunnel.on('goodbye', (body) => {
      if (record === null) return;
      log.info({ code: body.code, reason: body.reason, sessions: record.streams.size }, 'agent said goodbye; ending its sessions');
      this.streams.departed(record, `agent said goodbye: ${body.reason}`);
    });
    tunnel.on('closed', (reason, detail) => {
      clearTimeout(helloTimer);
      this.tunnels.delete(tunnel);
      this.tunnelEnds.add(reason);
      log.info({ reason, detail, streams: record?.streams.heldCount(tunnel) ?? 0 }, 'agent tunnel down');
      if (record !== null) this.streams.tunnelClosed(tunnel, record);
      if (record !== null) {
        this.helloTunnels--;
        record.tunnels.delete(tunnel);
        this.registry?.agentDisconnected(agentId, record.tunnels.size);
        this.agents.prune(record);
      }
    });
  }

  private onStreamControl(tunnel: Tunnel, record: AgentRecord, frame: ControlFrame, log: Logger): void {
    switch (frame.type) {
      case FrameType.OPEN:
        this.streams.open(tunnel, record, frame.streamId, frame.body, log);
        return;
      case FrameType.RESUME:
        this.streams.resume(tunnel, record, frame.streamId, frame.body, log);
        return;
      case FrameType.CLOSE:
        this.streams.closeReceived(tunnel, record, frame.streamId, frame.body);
        return;
      default:
        log.warn({ streamId: frame.streamId, reason: `unexpected frame type ${frame.type}` }, 'ignoring frame');
    }
  }

  private sweepSessions(): void {
    this.index.reportTraffic();
    const now = this.clock.now();
    for (const record of [...this.agents.values()]) this.streams.sweep(record, now);
  }
}
