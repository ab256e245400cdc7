import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Aedes } from 'aedes';
import type { IConnectPacket } from 'mqtt-packet';
import { refusalConnack } from '../shared/connack.js';
import { EdgemuxError, isEdgemuxError } from '../shared/errors.js';
import { type ControlFrame, FrameType, type OpenBody, type ResumeBody } from '../shared/frame-codec.js';
import { applyHello, buildHello, checkHello, refuseHello } from '../shared/hello.js';
import { RateLimitedLog } from '../shared/log-rate-limit.js';
import type { Logger } from '../shared/logger.js';
import { parseConnect } from '../shared/mqtt-connect.js';
import { MuxStream } from '../shared/mux-stream.js';
import { Tunnel } from '../shared/tunnel.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import { ENROLL_ALPN } from '../shared/enrollment-wire.js';
import type { CertificateAndKey } from '../shared/pki.js';
import { ALPN_HTTP, ALPN_TUNNEL, DEFAULT_WS_PATH } from '../shared/transports/tunnel-port.js';
import { AgentGate } from './agent-gate.js';
import { AppAccess, anonymousAccess, isLoopbackHost } from './app-access.js';
import { BrokerPipe } from './broker-pipe.js';
import { HUB_DEFAULTS } from './config.js';
import { DeviceSession, DISCONNECT_REASON, type SessionStream } from './device-session.js';
import { type EmbeddedBroker, startEmbeddedBroker } from './embedded-broker.js';
import { ExternalBrokerLink } from './external-broker.js';
import { HubCounters, type RefusalReason } from './hub-counters.js';
import { EnrollmentServer } from './enrollment-server.js';
import type { PasswordFile } from './password-file.js';
import type { PkiStore } from './pki-store.js';
import { Registry } from './registry.js';
import { type OfflineQueueLimits, SqlitePersistence } from './sqlite-persistence.js';
import type { SubscriptionLimitOptions } from './subscription-limits.js';
import { Namespaces, type NamespaceRule, type Route, Router } from './routes.js';
import { WsTunnelListener } from './ws-tunnel-listener.js';

export interface HubOptions {
  tunnelHost: string;
  tunnelPort: number;
  /** Time a tunnel connection has to finish its TLS handshake, and again its WebSocket upgrade; HUB_DEFAULTS.handshakeTimeoutMs when absent. */
  handshakeTimeoutMs?: number;
  /** Tunnel connections allowed at once before their HELLO; HUB_DEFAULTS.maxUnauthenticated when absent. */
  maxUnauthenticated?: number;
  /** Path of WebSocket tunnels on the tunnel port (DEFAULT_WS_PATH when absent); null takes raw TLS tunnels only. */
  webSocketPath?: string | null;
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
  /** Longest client ID a device or application may use; HUB_DEFAULTS.maxClientIdLength when absent. */
  maxClientIdLength?: number;
  /** Devices one agent identity may hold at once; HUB_DEFAULTS.maxDevicesPerAgent when absent. */
  maxDevicesPerAgent?: number;
  /** Registry rows not seen for this long are deleted; HUB_DEFAULTS.registryExpireAfterDays when absent. */
  registryExpireAfterMs?: number;
  /** Topic filters per client of the embedded broker, their length and depth; DEFAULT_SUBSCRIPTION_LIMITS when absent. */
  subscriptionLimits?: SubscriptionLimitOptions;
  /** Per session of the embedded broker that is not connected: messages and bytes it may have queued. */
  offlineQueue?: OfflineQueueLimits;
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
  /** Device connect, disconnect and refusal lines: at most `burst` at once and `perSecond` after that. */
  deviceLogLimit?: { perSecond: number; burst: number };
  /** Enrollment, renewal and revocation (docs/pki.md); without it the agent CA alone decides who connects. */
  pki?: {
    store: PkiStore;
    ca: CertificateAndKey;
    certValidityMs: number;
    revocationPollMs?: number;
  };
  log: Logger;
}

/** One tunnel of an agent, as the admin API shows it. */
export interface TunnelView {
  /**
   * tls: raw TLS on the tunnel port; websocket: WebSocket over TLS on it;
   * external: handed over by acceptAuthenticatedConnection, which does not know what carried it.
   */
  transport: 'tls' | 'websocket' | 'external';
  remote: string;
  since: number;
  bytesIn: number;
  bytesOut: number;
}

export interface AgentView {
  agentId: string;
  worker: number;
  instance: string;
  draining: boolean;
  sessions: number;
  tunnels: TunnelView[];
}

/** Whether the hub can do its job: its listeners up and each route with a broker that answers. */
export interface HubReadiness {
  ready: boolean;
  reasons: string[];
  routes: { route: string; brokers: { url: string; healthy: boolean }[] }[];
}

const DEFAULT_DEVICE_LOG_LIMIT = { perSecond: 20, burst: 100 };
/** A refused client ID is logged by its start: one past maxClientIdLength may be as long as a frame. */
const LOGGED_CLIENT_ID_CHARS = 64;

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
  /** Deliveries dropped (and acknowledged to the broker) because a device could not receive them: too large. */
  droppedOversized: number;
  /** Messages not queued for an embedded-broker session that was away, because its queue was full. */
  offlineDropped: number;
  /** Messages queued in the embedded broker for sessions (those away, and those in flight). */
  offlineQueued: number;
  /** Topic filters refused with SUBACK 0x80 for a subscription limit. */
  subscriptionsRefused: number;
  /** Clients the embedded broker closed for a packet it refuses. */
  brokerClientErrors: number;
  /** Devices refused because their agent held maxDevicesPerAgent. */
  agentDeviceLimitRefused: number;
  /** Tunnels refused since start because another instance of the agent held the identity. */
  refusedTunnels: number;
  /** Tunnel connections open that have not (yet) been accepted with HELLO. */
  unauthenticated: number;
  /** Tunnel connections closed for not finishing the TLS handshake, or then the WebSocket upgrade, in time. */
  handshakeTimeouts: number;
  /** Tunnel connections closed on accept because too many were unauthenticated. */
  unauthenticatedRefused: number;
}

/** What the hub knows of one agent process (one worker of it): its streams outlive any one tunnel. */
interface AgentRecord {
  key: string;
  agentId: string;
  worker: number;
  instance: string;
  streams: Map<number, SessionStream>;
  /** Tunnels that completed HELLO and are not closed: while there is one, the instance holds the identity. */
  tunnels: Set<Tunnel>;
  /** The instance said GOODBYE: none of its streams will resume, each ends as its tunnel goes. */
  departed: boolean;
}

/** Who is at the other end of an authenticated tunnel connection, whatever carries it. */
export interface TunnelPeer {
  /** The common name of the agent's certificate. */
  agentId: string;
  /** SHA-256 of the agent's certificate, lowercase hex; absent when no certificate carried the identity. */
  fingerprint?: string;
  remoteAddress?: string;
}

/** The peer identity mutual TLS established; null when the certificate names no one. */
export function tunnelPeer(socket: tls.TLSSocket): TunnelPeer | null {
  const certificate = socket.getPeerCertificate();
  const agentId = certificate.subject?.CN;
  if (typeof agentId !== 'string' || agentId.length === 0) return null;
  return { agentId, fingerprint: (certificate.fingerprint256 ?? '').replaceAll(':', '').toLowerCase(), remoteAddress: socket.remoteAddress };
}

const SWEEP_INTERVAL_MS = 1000;
/** How long a stream may go without its CONNECT after OPEN (as long as a tunnel has for its HELLO). */
const CONNECT_TIMEOUT_MS = TUNNEL_DEFAULTS.helloTimeoutMs;
/** An agent may ask for a large window, but the hub's replay memory per stream stays bounded. */
const MAX_STREAM_WINDOW = 16 * 1024 * 1024;

function tunnelContext(material: HubOptions['tls']): tls.SecureContextOptions {
  return { ca: material.ca, cert: material.cert, key: material.key, minVersion: 'TLSv1.3' };
}

/** An agent that offers no ALPN (older agents) gets a raw tunnel, as before ALPN was used. */
function tunnelAlpn(options: HubOptions): string[] {
  return options.webSocketPath === null ? [ALPN_TUNNEL, ENROLL_ALPN] : [ALPN_TUNNEL, ALPN_HTTP, ENROLL_ALPN];
}

function capWindow(window: number): number {
  return Math.min(window, MAX_STREAM_WINDOW);
}

/**
 * The cloud side: accepts agent tunnels over mutual TLS, takes their streams
 * apart into one session per device and hands each to the embedded broker.
 */
export class CloudHub {
  readonly broker: Aedes;
  readonly sessions = new Set<DeviceSession>();
  readonly counters = new HubCounters();
  private router: Router;
  private namespaces: Namespaces;
  private droppedQos0OfClosedSessions = 0;
  private droppedOversizedOfClosedSessions = 0;
  private readonly sessionsByClientId = new Map<string, DeviceSession>();
  /** Client IDs each agent identity holds sessions for, across its workers. */
  private readonly devicesByAgent = new Map<string, Set<string>>();
  /** Agents at their device limit, so it is logged once each time it is reached. */
  private readonly agentsAtDeviceLimit = new Set<string>();
  private agentDeviceLimitRefused = 0;
  /** Without a registry: every client ID a device has used on this hub, which no application may take. */
  private readonly deviceClientIds = new Set<string>();
  private readonly reportedTraffic = new WeakMap<DeviceSession, DeviceSession['traffic']>();
  private readonly agents = new Map<string, AgentRecord>();
  private readonly tunnels = new Set<Tunnel>();
  private readonly tunnelSince = new WeakMap<Tunnel, { since: number; transport: TunnelView['transport']; remote: string }>();
  /** Agents whose devices are sent elsewhere: new ones are refused until the drain is lifted. */
  private readonly draining = new Set<string>();
  private readonly deviceLog: { connected: RateLimitedLog; disconnected: RateLimitedLog; refused: RateLimitedLog; resumeRefused: RateLimitedLog };
  private readonly sweep: NodeJS.Timeout;
  private readonly gate: AgentGate;
  private refusedTunnels = 0;
  private tunnelConnections = 0;
  /**
   * Connections of the tunnel port, which admitTunnelConnection counts by
   * their TCP socket, with the transport the admin API shows for them.
   */
  private readonly fromTunnelPort = new WeakMap<Duplex, Pick<TunnelView, 'transport' | 'remote'>>();
  private helloTunnels = 0;
  private handshakeTimeouts = 0;
  private unauthenticatedRefused = 0;
  /** Set while connections are being refused, so the refusals are logged once, not once each. */
  private refusingUnauthenticated = false;
  /** Connections closed on accept by the unauthenticated limit: their TLS error is the hub's own decision, already logged. */
  private readonly refusedOnAccept = new WeakSet<Socket>();
  private readonly webSockets: WsTunnelListener | null;

  private constructor(
    private readonly options: HubOptions,
    private readonly embedded: EmbeddedBroker,
    private readonly tunnelServer: tls.Server,
    /** Agents and devices as seen by this hub, when it keeps state on disk. */
    readonly registry: Registry | null,
  ) {
    this.broker = embedded.broker;
    this.router = new Router(options.routes ?? []);
    this.namespaces = new Namespaces(options.namespaces ?? []);
    const limit = options.deviceLogLimit ?? DEFAULT_DEVICE_LOG_LIMIT;
    this.deviceLog = {
      connected: new RateLimitedLog(options.log, { msg: 'device connected', plural: 'device connects', ...limit }),
      disconnected: new RateLimitedLog(options.log, { msg: 'device disconnected', plural: 'device disconnects', ...limit }),
      refused: new RateLimitedLog(options.log, { msg: 'device refused', plural: 'device refusals', ...limit }),
      // After a hub restart every stream of every agent asks to resume at once.
      resumeRefused: new RateLimitedLog(options.log, { msg: 'resume refused', plural: 'refused resumes', ...limit }),
    };
    const pki = options.pki;
    this.gate = new AgentGate({
      store: pki?.store,
      enrollment: pki && new EnrollmentServer({ store: pki.store, ca: pki.ca, certValidityMs: pki.certValidityMs, log: options.log }),
      revocationPollMs: pki?.revocationPollMs,
      log: options.log,
    });
    this.gate.on('revoked', (agentId, reason) => this.endAgent(agentId, `agent revoked: ${reason}`));
    tunnelServer.on('connection', (socket) => this.admitTunnelConnection(socket));
    this.webSockets =
      options.webSocketPath === null
        ? null
        : new WsTunnelListener({
            path: options.webSocketPath ?? DEFAULT_WS_PATH,
            maxFramePayload: options.maxPacketSize,
            upgradeTimeoutMs: options.handshakeTimeoutMs ?? HUB_DEFAULTS.handshakeTimeoutMs,
            onUpgradeTimeout: () => {
              this.handshakeTimeouts++;
              this.counters.refused('tunnel-tls');
            },
            onUnknownPath: () => this.counters.refused('tunnel-protocol'),
            log: options.log,
            accept: (duplex, socket) => this.acceptFromTunnelPort(duplex, socket, 'websocket'),
          });
    tunnelServer.on('secureConnection', (socket) => {
      const webSockets = socket.alpnProtocol === ALPN_HTTP ? this.webSockets : null;
      // The gate sees every connection before any transport does: enrollment goes by its ALPN
      // protocol, and a certificate it refuses gets no tunnel, raw or WebSocket. A WebSocket
      // connection is refused inside a WebSocket, where the agent can read the GOODBYE.
      const admitted = webSockets === null ? this.gate.admit(socket) : this.gate.admit(socket, (refused, frame) => webSockets.refuse(refused, frame));
      if (!admitted) return;
      socket.setNoDelay(true);
      if (webSockets !== null) webSockets.handle(socket);
      else this.acceptFromTunnelPort(socket, socket, 'tls');
    });
    tunnelServer.on('tlsClientError', (err: NodeJS.ErrnoException, socket) => {
      if (err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT') this.handshakeTimeouts++;
      // node:tls keeps the accepted TCP socket as the TLS socket's _parent; it has no public accessor.
      const raw = (socket as unknown as { _parent?: Socket })._parent;
      if (raw !== undefined && this.refusedOnAccept.has(raw)) {
        options.log.debug({ reason: err.message }, 'tunnel connection closed on accept');
      } else {
        this.counters.refused('tunnel-tls');
        this.gate.handshakeFailed(err, socket);
      }
      // With a tlsClientError listener Node leaves the socket open, timeouts included.
      socket.destroy();
    });
    this.sweep = setInterval(() => this.sweepSessions(), SWEEP_INTERVAL_MS);
    this.sweep.unref();
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
    registry?.on('expired', (agents, devices) => {
      options.log.info({ agents, devices, reason: 'not seen for registry.expireAfterDays' }, 'registry rows expired');
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
    // Without a state file SQLite keeps the broker's state in memory, so that
    // the bounds on offline queues hold there too.
    const persistence = new SqlitePersistence({
      path: options.statePath ?? ':memory:',
      offlineQueue: options.offlineQueue,
      onQueueFull: (clientId, queued) => {
        options.log.warn(
          { clientId, queuedMessages: queued.messages, queuedBytes: queued.bytes, reason: 'offline queue full (offlineQueue.maxMessages or maxBytes)' },
          'dropping new messages for a session that is away',
        );
      },
    });
    // Before the app port opens, so an application is checked against devices known from earlier runs.
    const registry =
      options.statePath !== undefined
        ? new Registry(persistence.db, { expireAfterMs: options.registryExpireAfterMs ?? HUB_DEFAULTS.registryExpireAfterDays * 24 * 3600 * 1000 })
        : null;
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
      maxClientIdLength: options.maxClientIdLength ?? HUB_DEFAULTS.maxClientIdLength,
      subscriptionLimits: options.subscriptionLimits,
      persistence,
      log: options.log,
    });
    const tunnelServer = tls.createServer({
      ...tunnelContext(options.tls),
      // The gate refuses what the handshake would have, but with a GOODBYE naming the failed check,
      // and lets enrollment (no certificate yet) through under its own ALPN protocol.
      requestCert: true,
      rejectUnauthorized: false,
      ALPNProtocols: tunnelAlpn(options),
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
    hub.logNamespacePolicy();
    options.log.info({ tunnel: hub.tunnelAddress, app: hub.appAddress }, 'hub listening');
    return hub;
  }

  get tunnelAddress(): AddressInfo {
    return this.tunnelServer.address() as AddressInfo;
  }

  get appAddress(): AddressInfo {
    return this.embedded.appServer.address() as AddressInfo;
  }

  /** A client ID a device uses now or has used through a tunnel (recorded in the registry when there is one). */
  isDeviceClientId(clientId: string): boolean {
    if (this.sessionsByClientId.has(clientId)) return true;
    return this.registry !== null ? this.registry.knowsDevice(clientId) : this.deviceClientIds.has(clientId);
  }

  stats(): HubStats {
    let detached = 0;
    let queuedBytes = 0;
    let replayBytes = 0;
    let brokerHeldBytes = 0;
    let droppedQos0 = this.droppedQos0OfClosedSessions;
    let droppedOversized = this.droppedOversizedOfClosedSessions;
    for (const session of this.sessions) {
      if (session.state === 'detached') detached++;
      queuedBytes += session.queuedBytes;
      replayBytes += session.stream.replayBytes;
      brokerHeldBytes += session.link?.heldBytes ?? 0;
      droppedQos0 += session.droppedQos0;
      droppedOversized += session.droppedOversized;
    }
    const agents = new Set<string>();
    for (const record of this.agents.values()) if (record.tunnels.size > 0) agents.add(record.agentId);
    return {
      agents: agents.size,
      tunnels: this.tunnels.size,
      sessions: this.sessions.size,
      detached,
      queuedBytes,
      replayBytes,
      brokerHeldBytes,
      droppedQos0,
      droppedOversized,
      offlineDropped: this.embedded.persistence?.stats.offlineDropped ?? 0,
      offlineQueued: this.embedded.persistence?.stats.queuedMessages ?? 0,
      subscriptionsRefused: this.embedded.subscriptionLimits.refused,
      brokerClientErrors: this.embedded.stats.clientErrors,
      agentDeviceLimitRefused: this.agentDeviceLimitRefused,
      refusedTunnels: this.refusedTunnels,
      unauthenticated: this.unauthenticated,
      handshakeTimeouts: this.handshakeTimeouts,
      unauthenticatedRefused: this.unauthenticatedRefused,
    };
  }

  private get unauthenticated(): number {
    return this.tunnelConnections - this.helloTunnels;
  }

  /**
   * Bounds what strangers can hold: every connection to the tunnel port is
   * unauthenticated until its HELLO is accepted (the TLS handshake alone
   * costs the hub memory and CPU), and past the limit new ones are closed
   * before the handshake starts. An enrollment or renewal connection never
   * says HELLO: it counts until it closes, its answer written, and one the
   * gate refused counts until the agent has read its GOODBYE.
   */
  private admitTunnelConnection(socket: Socket): void {
    const limit = this.options.maxUnauthenticated ?? HUB_DEFAULTS.maxUnauthenticated;
    if (this.unauthenticated >= limit) {
      this.unauthenticatedRefused++;
      if (!this.refusingUnauthenticated) {
        this.refusingUnauthenticated = true;
        this.options.log.warn({ remote: socket.remoteAddress, limit, reason: 'too many unauthenticated tunnel connections' }, 'tunnel connections refused');
      }
      this.refusedOnAccept.add(socket);
      socket.destroy();
      return;
    }
    this.refusingUnauthenticated = false;
    this.tunnelConnections++;
    socket.once('close', () => this.tunnelConnections--);
  }

  /** Every agent worker the hub holds tunnels or sessions for. */
  agentViews(): AgentView[] {
    return [...this.agents.values()].map((record) => ({
      agentId: record.agentId,
      worker: record.worker,
      instance: record.instance,
      draining: this.draining.has(record.agentId),
      sessions: record.streams.size,
      tunnels: [...record.tunnels].map((tunnel) => {
        const seen = this.tunnelSince.get(tunnel);
        return { transport: seen?.transport ?? 'tls', remote: seen?.remote ?? '', since: seen?.since ?? 0, bytesIn: tunnel.traffic.bytesIn, bytesOut: tunnel.traffic.bytesOut };
      }),
    }));
  }

  /** The session of each connected client ID, in no particular order. */
  devices(): IterableIterator<DeviceSession> {
    return this.sessionsByClientId.values();
  }

  device(clientId: string): DeviceSession | undefined {
    return this.sessionsByClientId.get(clientId);
  }

  /** The broker a session's device is connected to: 'embedded' or the external broker's URL. */
  backendOf(session: DeviceSession): string {
    return session.link instanceof ExternalBrokerLink ? (session.link.endpoint?.url ?? 'none') : 'embedded';
  }

  /**
   * Ends one device's session for an operator; its broker sees a lost
   * connection (and publishes its will). False when no such device is connected.
   */
  disconnectDevice(clientId: string): boolean {
    const session = this.sessionsByClientId.get(clientId);
    return session?.endByHub(DISCONNECT_REASON.administrativeAction, 'disconnected by an operator', false) ?? false;
  }

  /**
   * Sends an agent's devices elsewhere (MQTT 5 devices are told to use
   * another server) and refuses its new ones until `undrainAgent`. Their
   * brokers see a DISCONNECT, so no will announces devices that are only
   * moving. Returns how many sessions were ended.
   */
  drainAgent(agentId: string): number {
    this.draining.add(agentId);
    let ended = 0;
    for (const session of [...this.sessions]) {
      if (session.agentId === agentId && session.endByHub(DISCONNECT_REASON.useAnotherServer, 'agent drained', true)) ended++;
    }
    this.options.log.info({ agentId, sessions: ended }, 'agent drained');
    return ended;
  }

  /** Lets an agent's devices connect again; false when it was not draining. */
  undrainAgent(agentId: string): boolean {
    const was = this.draining.delete(agentId);
    if (was) this.options.log.info({ agentId }, 'agent drain lifted');
    return was;
  }

  readiness(): HubReadiness {
    const reasons: string[] = [];
    if (!this.tunnelServer.listening) reasons.push('tunnel listener is not listening');
    if (!this.embedded.appServer.listening) reasons.push('application listener is not listening');
    const routes: HubReadiness['routes'] = [];
    for (const route of this.router.routes) {
      if (route.backend.kind !== 'external') continue;
      const brokers = route.backend.group.health();
      routes.push({ route: route.name, brokers });
      if (!brokers.some((broker) => broker.healthy)) {
        reasons.push(`route ${route.name}: no broker reachable (${brokers.map((broker) => broker.url).join(', ')})`);
      }
    }
    return { ready: reasons.length === 0, reasons, routes };
  }

  /**
   * Routes for devices that connect from now on. A session keeps the broker
   * connection it has: a route's group is only consulted when a session opens,
   * and its links hold their own sockets, so the old groups can stop their
   * health checks at once without touching a connected device.
   */
  replaceRoutes(routes: Route[]): void {
    const old = this.router;
    this.router = new Router(routes);
    old.close();
  }

  /** Namespace rules for devices that connect from now on; connected devices were checked on their CONNECT and stay. */
  replaceNamespaces(rules: NamespaceRule[]): void {
    this.namespaces = new Namespaces(rules);
    this.logNamespacePolicy();
  }

  /**
   * Hubs from before namespaces were required let any agent use any client
   * ID; their operators learn here, once, why devices are refused now.
   */
  private logNamespacePolicy(): void {
    const policy = this.namespaces.describe();
    if (this.namespaces.byDefault) {
      this.options.log.warn(
        { policy, allowAll: { namespaces: [{ agentId: '*', clientIds: ['*'] }] } },
        'client ID namespaces: the default per agent; configure namespaces (allowAll lets every agent use every ID, as hubs before did)',
      );
    } else {
      this.options.log.info({ policy, namespaces: this.namespaces.configured }, 'client ID namespaces');
    }
  }

  /** Certificate, key and agent CA for tunnels that connect from now on; tunnels already up keep their session. */
  replaceTls(material: HubOptions['tls']): void {
    this.tunnelServer.setSecureContext(tunnelContext(material));
  }

  /**
   * Ends every session and tunnel of an agent at once, telling it why: its
   * sessions publish their wills, and its agent closes their devices.
   */
  endAgent(agentId: string, reason: string): void {
    for (const record of [...this.agents.values()]) {
      if (record.agentId !== agentId) continue;
      this.agents.delete(record.key);
      for (const stream of [...record.streams.values()]) stream.sink.expire(reason);
      record.streams.clear();
      for (const tunnel of record.tunnels) {
        tunnel.streams.clear();
        void tunnel.goodbye('revoked', reason);
      }
    }
  }

  /**
   * A graceful stop: every session ends now (the broker publishes the wills
   * of devices that did not disconnect), then each agent tunnel says GOODBYE,
   * so agents close their devices at once instead of holding them for the
   * resume grace period as after a network failure.
   */
  async close(): Promise<void> {
    clearInterval(this.sweep);
    this.gate.close();
    this.webSockets?.close();
    const serverClosed = new Promise<void>((resolve) => this.tunnelServer.close(() => resolve()));
    this.reportTraffic();
    for (const session of [...this.sessions]) session.expire('hub shutting down');
    const withHello = new Set<Tunnel>();
    for (const record of this.agents.values()) for (const tunnel of record.tunnels) withHello.add(tunnel);
    for (const tunnel of this.tunnels) {
      if (withHello.has(tunnel)) void tunnel.goodbye('shutdown', 'hub shutting down');
      else tunnel.close('hub shutting down');
    }
    await serverClosed;
    try {
      this.registry?.close();
    } catch (err) {
      // The broker's own state is written next, whatever happened to the registry's.
      this.options.log.error({ reason: (err as { code?: string }).code ?? (err as Error).message }, 'registry not written at stop');
    }
    this.router.close();
    this.options.pki?.store.close();
    await this.embedded.close();
  }

  /**
   * A connection of the tunnel port that the gate admitted, its TLS handshake
   * (and, for a WebSocket, upgrade) done: `duplex` is the TLS socket itself or
   * the WebSocket over it, `tlsSocket` holds the certificate mutual TLS
   * verified. It has counted as unauthenticated since its TCP accept
   * (admitTunnelConnection), until that connection closes.
   */
  private acceptFromTunnelPort(duplex: Duplex, tlsSocket: tls.TLSSocket, transport: 'tls' | 'websocket'): void {
    const peer = tunnelPeer(tlsSocket);
    if (peer === null) {
      this.counters.refused('tunnel-identity');
      this.options.log.warn({ remote: tlsSocket.remoteAddress, reason: 'certificate has no common name' }, 'tunnel refused');
      duplex.destroy();
      tlsSocket.destroy();
      return;
    }
    this.fromTunnelPort.set(duplex, { transport, remote: `${tlsSocket.remoteAddress}:${tlsSocket.remotePort}` });
    this.acceptAuthenticatedConnection(duplex, peer);
  }

  /**
   * Serves a tunnel of `peer` over `duplex`, whatever carried the connection
   * and authenticated the peer: the tunnel port's TLS socket, a WebSocket on
   * it, an in-memory pair in the protocol conformance tests. Everything from
   * HELLO on is the same for all of them. The connection counts as
   * unauthenticated until its HELLO is accepted: one of the tunnel port from
   * its TCP accept, any other from here.
   */
  acceptAuthenticatedConnection(socket: Duplex, peer: TunnelPeer): void {
    let shown = this.fromTunnelPort.get(socket);
    if (shown === undefined) {
      shown = { transport: 'external', remote: peer.remoteAddress ?? '' };
      this.tunnelConnections++;
      socket.once('close', () => this.tunnelConnections--);
    }
    const { agentId, fingerprint = '' } = peer;
    const log = this.options.log.child({ agentId, remote: peer.remoteAddress });
    const tunnel = new Tunnel(socket, {
      maxFramePayload: this.options.maxPacketSize,
      heartbeatMs: this.options.heartbeatMs,
      deadAfterMs: this.options.deadAfterMs,
      highWaterBytes: TUNNEL_DEFAULTS.highWaterBytes,
      log,
    });
    let record: AgentRecord | null = null;
    const helloTimer = setTimeout(() => {
      if (record === null) tunnel.close('no HELLO in time');
    }, TUNNEL_DEFAULTS.helloTimeoutMs);
    this.tunnels.add(tunnel);
    this.tunnelSince.set(tunnel, { since: Date.now(), ...shown });
    tunnel.on('control', (frame) => {
      if (frame.type === FrameType.HELLO) {
        if (record !== null) {
          tunnel.close('protocol violation: second HELLO');
          return;
        }
        clearTimeout(helloTimer);
        const check = checkHello(frame.body, 'agent');
        if (!check.accepted) {
          this.counters.refused('tunnel-protocol');
          log.warn({ helloId: frame.body.id, version: frame.body.version, role: frame.body.role, reason: check.reason }, 'tunnel refused');
          refuseHello(tunnel, check);
          return;
        }
        const admitted = this.registerAgent(agentId, frame.body.worker ?? 0, frame.body.instance, log);
        if (typeof admitted === 'string') {
          this.refusedTunnels++;
          this.counters.refused('tunnel-identity-in-use');
          log.warn({ worker: frame.body.worker ?? 0, instance: frame.body.instance, helloId: frame.body.id, reason: admitted }, 'tunnel refused');
          // The reason goes to the agent in place of HELLO, so its operator sees it there too.
          void tunnel.goodbye('identity-in-use', admitted);
          return;
        }
        applyHello(tunnel, frame.body, check.capabilities);
        record = admitted;
        record.tunnels.add(tunnel);
        this.helloTunnels++;
        this.registry?.agentConnected(agentId, fingerprint, record.tunnels.size);
        tunnel.send(
          buildHello({
            role: 'hub',
            id: this.options.hubId,
            heartbeatMs: this.options.heartbeatMs,
            streamWindow: this.options.streamWindow,
            maxFramePayload: this.options.maxPacketSize,
            instance: this.options.hubId,
          }),
        );
        log.info('agent tunnel up');
        return;
      }
      if (record === null) {
        log.warn({ reason: `frame type ${frame.type} before HELLO` }, 'closing tunnel');
        tunnel.close('protocol violation: frame before HELLO');
        return;
      }
      this.onStreamControl(tunnel, record, frame, log);
    });
    tunnel.on('goodbye', (body) => {
      // An agent refusing our HELLO's version gives up this tunnel, not its sessions.
      if (record === null || body.code === 'unsupported-version') return;
      log.info({ code: body.code, reason: body.reason, sessions: record.streams.size }, 'agent said goodbye; ending its sessions');
      record.departed = true;
      // Detached sessions have no tunnel left to end them; the attached ones end with their tunnel (below).
      for (const stream of [...record.streams.values()]) {
        if (stream.carrier === null) stream.sink.expire(`agent said goodbye: ${body.reason}`);
      }
    });
    tunnel.on('closed', (reason) => {
      clearTimeout(helloTimer);
      this.tunnels.delete(tunnel);
      log.info({ reason, streams: tunnel.streams.size }, 'agent tunnel down');
      const streams = [...tunnel.streams.values()] as SessionStream[];
      tunnel.streams.clear();
      if (record?.departed) {
        // Its GOODBYE came behind this tunnel's last frames (a DISCONNECT among them): the broker has them all.
        for (const stream of streams) stream.sink.expire('agent said goodbye');
      } else {
        const now = Date.now();
        for (const stream of streams) stream.sink.detach(now);
      }
      if (record !== null) {
        this.helloTunnels--;
        record.tunnels.delete(tunnel);
        this.registry?.agentDisconnected(agentId, record.tunnels.size);
        this.pruneAgent(record);
      }
    });
  }

  /**
   * The certificate's CN (with the worker index) is the identity; an
   * instance is one process holding it. A new instance replaces the current
   * one only once the current one has no live tunnel (closed, or declared
   * dead by the heartbeat) or has said goodbye: a second process holding the
   * same certificate is refused rather than allowed to end the sessions of
   * the one that is running. Returns the record, or why the HELLO is refused.
   */
  private registerAgent(agentId: string, worker: number, instance: string, log: Logger): AgentRecord | string {
    const key = `${agentId}#${worker}`;
    const known = this.agents.get(key);
    if (known !== undefined && known.instance === instance) return known;
    if (known !== undefined && known.tunnels.size > 0 && !known.departed) {
      return `agent ${agentId} worker ${worker} is already connected as another instance (${known.tunnels.size} live tunnels); a second process is using its certificate`;
    }
    if (known !== undefined) {
      log.info({ previousInstance: known.instance, sessions: known.streams.size }, 'agent restarted; ending its old sessions');
      for (const stream of [...known.streams.values()]) stream.sink.expire('agent restarted');
      for (const tunnel of known.tunnels) tunnel.close('agent restarted');
    }
    const record: AgentRecord = { key, agentId, worker, instance, streams: new Map(), tunnels: new Set(), departed: false };
    this.agents.set(key, record);
    return record;
  }

  /** An agent with no tunnel and no session left is forgotten. */
  private pruneAgent(record: AgentRecord): void {
    if (record.tunnels.size > 0 || record.streams.size > 0 || this.agents.get(record.key) !== record) return;
    this.agents.delete(record.key);
  }

  private onStreamControl(tunnel: Tunnel, record: AgentRecord, frame: ControlFrame, log: Logger): void {
    switch (frame.type) {
      case FrameType.OPEN:
        this.openSession(tunnel, record, frame.streamId, frame.body, log);
        return;
      case FrameType.RESUME:
        this.resumeSession(tunnel, record, frame.streamId, frame.body, log);
        return;
      case FrameType.CLOSE: {
        const stream = record.streams.get(frame.streamId);
        if (stream === undefined) {
          // Answer, so an agent waiting to hear its CLOSE confirmed can let go.
          tunnel.send({ type: FrameType.CLOSE, streamId: frame.streamId, body: { reason: 'unknown stream', abrupt: false } });
        } else if (stream.carrier === tunnel) {
          stream.sink.closeFromAgent(frame.body.reason, frame.body.abrupt);
        }
        return;
      }
      default:
        log.warn({ streamId: frame.streamId, reason: `unexpected frame type ${frame.type}` }, 'ignoring frame');
    }
  }

  private openSession(tunnel: Tunnel, record: AgentRecord, streamId: number, open: OpenBody, log: Logger): void {
    if (record.streams.has(streamId) || streamId % 2 === 0) {
      tunnel.close(`protocol violation: stream ${streamId} is in use or not an agent stream id`);
      return;
    }
    // Nothing is decided on OPEN: it is a label beside the CONNECT, and the
    // broker acts on the CONNECT. The session waits for it (admitSession).
    const session = new DeviceSession({
      clientId: open.clientId,
      agentId: record.agentId,
      maxPacketSize: this.options.maxPacketSize,
      maxQueuedBytes: this.options.maxQueuedBytes,
      log,
      admit: (admitted, connect) => this.admitSession(admitted, record, open, connect, log),
      onAdmitted: (admitted) => {
        // Only a device the broker accepted is recorded: refused client IDs would grow the registry without bound.
        if (this.sessionsByClientId.get(admitted.clientId) !== admitted) return;
        this.registry?.deviceConnected(admitted.clientId, record.agentId);
        if (this.registry === null) this.deviceClientIds.add(admitted.clientId);
      },
      counters: this.counters,
      onRefused: (refused, reason, detail) => {
        this.counters.refused(reason);
        const clientId = refused.clientId.slice(0, LOGGED_CLIENT_ID_CHARS);
        this.deviceLog.refused.info({ clientId, agentId: refused.agentId, streamId: refused.stream.id, reason, detail });
      },
      onClosed: (closed) => {
        // Only an admitted device was logged as connected; a refused one was logged as refused.
        if (closed.link !== null) {
          this.deviceLog.disconnected.info({ clientId: closed.clientId, agentId: closed.agentId, streamId: closed.stream.id, reason: closed.endReason ?? 'closed' });
        }
        this.sessions.delete(closed);
        this.reportSessionTraffic(closed);
        // After a takeover the newer session owns the client ID.
        if (this.sessionsByClientId.get(closed.clientId) === closed) {
          this.sessionsByClientId.delete(closed.clientId);
          this.releaseDevice(closed.agentId, closed.clientId);
          if (closed.admitted) this.registry?.deviceDisconnected(closed.clientId);
        }
        this.droppedQos0OfClosedSessions += closed.droppedQos0;
        this.droppedOversizedOfClosedSessions += closed.droppedOversized;
        if (record.streams.get(streamId) === closed.stream) record.streams.delete(streamId);
        this.pruneAgent(record);
      },
    });
    const stream: SessionStream = new MuxStream(streamId, tunnel, session, capWindow(open.window), this.options.streamWindow, this.options.maxPacketSize);
    session.bind(stream);
    tunnel.streams.set(streamId, stream);
    record.streams.set(streamId, stream);
    this.sessions.add(session);
    tunnel.send({ type: FrameType.ACCEPT, streamId, body: { window: this.options.streamWindow, received: 0 } });
  }

  /**
   * Checks the CONNECT the broker would read: its client ID and user name
   * must be the ones the OPEN named (routing and the registry use those), the
   * client ID must be no longer than maxClientIdLength and lie in the agent's
   * namespace, the agent must not be drained, the backend must speak the
   * device's protocol version, and the agent must hold fewer than
   * maxDevicesPerAgent devices.
   */
  private admitSession(session: DeviceSession, record: AgentRecord, open: OpenBody, bytes: Buffer, log: Logger): void {
    let connect: IConnectPacket;
    try {
      connect = parseConnect(bytes);
    } catch (err) {
      session.refuse('protocol-violation', isEdgemuxError(err) ? `${err.code}: ${err.message}` : String(err), null);
      return;
    }
    const { clientId, username } = connect;
    const version = connect.protocolVersion ?? 4;
    const notAuthorized = refusalConnack(version, 'not-authorized');
    if (clientId !== open.clientId || username !== open.username) {
      const detail = `CONNECT names client ID ${JSON.stringify(clientId)} but OPEN named ${JSON.stringify(open.clientId)}, or their user names differ`;
      session.refuse('connect-mismatch', detail, notAuthorized);
      return;
    }
    if (clientId.length === 0) {
      session.refuse('connect-mismatch', 'empty client ID in CONNECT (the agent assigns one)', refusalConnack(version, 'identifier-rejected'));
      return;
    }
    const maxClientIdLength = this.options.maxClientIdLength ?? HUB_DEFAULTS.maxClientIdLength;
    if (clientId.length > maxClientIdLength) {
      const detail = `client ID of ${clientId.length} characters is longer than maxClientIdLength (${maxClientIdLength})`;
      session.refuse('client-id-too-long', detail, refusalConnack(version, 'identifier-rejected'));
      return;
    }
    if (!this.namespaces.allows(record.agentId, clientId)) {
      const rule = this.namespaces.byDefault ? ` (no namespaces configured: agent ${record.agentId} may use "${record.agentId}:*")` : '';
      session.refuse('namespace', `client ID outside the namespace of agent ${record.agentId}${rule}`, notAuthorized);
      return;
    }
    if (this.draining.has(record.agentId)) {
      session.refuse('agent-draining', `agent ${record.agentId} is drained`, refusalConnack(version, 'use-another-server'));
      return;
    }
    const route = this.router.pick({ clientId, username, agentId: record.agentId });
    const backend = route?.backend ?? { kind: 'embedded' };
    if (backend.kind === 'embedded' && version === 5) {
      session.refuse('mqtt5-on-embedded', 'MQTT 5 on the embedded 3.1.1 broker', refusalConnack(version, 'unsupported-protocol'));
      return;
    }
    if (!this.holdDevice(record.agentId, clientId, log)) {
      session.refuse('agent-device-limit', `agent ${record.agentId} holds maxDevicesPerAgent devices`, refusalConnack(version, 'quota-exceeded'));
      return;
    }
    const previous = this.sessionsByClientId.get(clientId);
    if (previous !== undefined && previous.agentId !== record.agentId) this.releaseDevice(previous.agentId, clientId);
    if (route !== null) session.route = route.name;
    this.sessionsByClientId.set(clientId, session);
    if (backend.kind === 'embedded') {
      session.connectBroker(connect, (owner) => {
        const pipe = new BrokerPipe(owner);
        this.broker.handle(pipe);
        return pipe;
      });
    } else {
      session.connectBroker(connect, (owner) => backend.group.connect(owner));
    }
    this.deviceLog.connected.info({ clientId, agentId: record.agentId, streamId: session.stream.id, route: session.route, backend: this.backendOf(session) });
  }

  /** Counts `clientId` against the agent's device limit; false when the agent is at it (a takeover within the agent is no new device). */
  private holdDevice(agentId: string, clientId: string, log: Logger): boolean {
    let held = this.devicesByAgent.get(agentId);
    if (held === undefined) {
      held = new Set();
      this.devicesByAgent.set(agentId, held);
    }
    if (held.has(clientId)) return true;
    const limit = this.options.maxDevicesPerAgent ?? HUB_DEFAULTS.maxDevicesPerAgent;
    if (held.size >= limit) {
      this.agentDeviceLimitRefused++;
      if (!this.agentsAtDeviceLimit.has(agentId)) {
        this.agentsAtDeviceLimit.add(agentId);
        log.warn({ devices: held.size, limit, reason: 'maxDevicesPerAgent reached' }, 'refusing new devices of this agent');
      }
      return false;
    }
    held.add(clientId);
    return true;
  }

  private releaseDevice(agentId: string, clientId: string): void {
    const held = this.devicesByAgent.get(agentId);
    if (held === undefined || !held.delete(clientId)) return;
    this.agentsAtDeviceLimit.delete(agentId);
    if (held.size === 0) this.devicesByAgent.delete(agentId);
  }

  private resumeSession(tunnel: Tunnel, record: AgentRecord, streamId: number, resume: ResumeBody, log: Logger): void {
    const stream = record.streams.get(streamId);
    if (stream === undefined || stream.sink.clientId !== resume.clientId || stream.sink.state === 'closed') {
      this.counters.refused('unknown-session');
      this.deviceLog.resumeRefused.info({ agentId: record.agentId, streamId, clientId: resume.clientId, reason: 'no such session on this hub' });
      tunnel.send({ type: FrameType.CLOSE, streamId, body: { reason: 'unknown stream', abrupt: false } });
      return;
    }
    if (resume.attempt <= stream.sink.lastResumeAttempt) {
      log.debug({ streamId, attempt: resume.attempt }, 'stale RESUME ignored');
      return;
    }
    stream.sink.lastResumeAttempt = resume.attempt;
    // The agent may have given up on a tunnel this side still believes in.
    if (stream.carrier !== null && stream.carrier !== tunnel) {
      stream.carrier.streams.delete(streamId);
      stream.sink.detach(Date.now());
    }
    tunnel.streams.set(streamId, stream);
    tunnel.send({ type: FrameType.ACCEPT, streamId, body: { window: this.options.streamWindow, received: stream.receivedOffset } });
    stream.sink.reattach(tunnel, resume.received, capWindow(resume.window));
    this.counters.resumes++;
    log.debug({ streamId, clientId: resume.clientId }, 'stream resumed');
  }

  /** Hands each session's traffic since the last report to the registry, which writes it in batches. */
  private reportTraffic(): void {
    if (this.registry === null) return;
    for (const session of this.sessions) this.reportSessionTraffic(session);
  }

  private reportSessionTraffic(session: DeviceSession): void {
    if (this.registry === null || !session.admitted) return;
    const now = session.traffic;
    const last = this.reportedTraffic.get(session) ?? { bytesToBroker: 0, packetsToBroker: 0, bytesToDevice: 0, packetsToDevice: 0 };
    if (now.packetsToBroker === last.packetsToBroker && now.packetsToDevice === last.packetsToDevice) return;
    if (now.packetsToBroker > last.packetsToBroker) {
      this.registry.countToBroker(session.clientId, now.bytesToBroker - last.bytesToBroker, now.packetsToBroker - last.packetsToBroker);
    }
    if (now.packetsToDevice > last.packetsToDevice) {
      this.registry.countToDevice(session.clientId, now.bytesToDevice - last.bytesToDevice, now.packetsToDevice - last.packetsToDevice);
    }
    this.reportedTraffic.set(session, { ...now });
  }

  private sweepSessions(): void {
    this.reportTraffic();
    const now = Date.now();
    for (const session of this.sessions) {
      if (session.state === 'detached' && now - session.detachedAt > this.options.resumeGraceMs) {
        session.expire();
      } else if (session.awaitingConnect && session.state === 'attached' && now - session.openedAt > CONNECT_TIMEOUT_MS) {
        // The agent sends the CONNECT right behind the OPEN; a stream without one only holds memory.
        session.refuse('connect-timeout', 'no CONNECT in time', null);
      } else {
        session.keepBrokerAlive(now);
      }
    }
  }
}
