import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Aedes } from 'aedes';
import { type Clock, systemClock, type Timer } from '../shared/clock.js';
import { EndCounts } from '../shared/end-reasons.js';
import { EdgemuxError } from '../shared/errors.js';
import { type ControlFrame, FrameType } from '../shared/frame-codec.js';
import { applyHello, buildHello, checkHello, refuseHello } from '../shared/hello.js';
import { RateLimitedLog } from '../shared/log-rate-limit.js';
import type { Logger } from '../shared/logger.js';
import { Tunnel } from '../shared/tunnel.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import { type AgentRecord, AgentRecords } from './agent-records.js';
import { ENROLL_ALPN } from '../shared/enrollment-wire.js';
import type { CertificateAndKey } from '../shared/pki.js';
import { ALPN_HTTP, ALPN_TUNNEL, DEFAULT_WS_PATH } from '../shared/transports/tunnel-port.js';
import type { AclFile } from './acl-file.js';
import { AgentGate } from './agent-gate.js';
import type { AclAction } from './broker-acl.js';
import { AppAccess, anonymousAccess, isLoopbackHost } from './app-access.js';
import { HUB_DEFAULTS } from './config.js';
import { type DeviceSession, DISCONNECT_REASON } from './device-session.js';
import { type EmbeddedBroker, startEmbeddedBroker } from './embedded-broker.js';
import { ExternalBrokerLink } from './external-broker.js';
import { HubCounters, type RefusalReason } from './hub-counters.js';
import { EnrollmentServer } from './enrollment-server.js';
import type { PasswordFile } from './password-file.js';
import type { PkiStore } from './pki-store.js';
import { Registry } from './registry.js';
import type { NamespaceRule, Route } from './routes.js';
import { SessionAdmission } from './session-admission.js';
import { SessionIndex } from './session-index.js';
import { SessionStreams } from './session-streams.js';
import { type OfflineQueueLimits, SqlitePersistence } from './sqlite-persistence.js';
import type { SubscriptionLimitOptions } from './subscription-limits.js';
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
  /** Topic access on the embedded broker for devices and applications (acl.file); everything is allowed without it. */
  acl?: AclFile | null;
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
  /** Time for the stream rules: grace periods, CONNECT timeouts, broker keepalives, tunnel heartbeats; the system clock when absent. */
  clock?: Clock;
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
  /** PUBLISHes dropped, filters refused and deliveries withheld by the ACL file. */
  aclDenied: Readonly<Record<AclAction, number>>;
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

function tunnelContext(material: HubOptions['tls']): tls.SecureContextOptions {
  return { ca: material.ca, cert: material.cert, key: material.key, minVersion: 'TLSv1.3' };
}

/** An agent that offers no ALPN (older agents) gets a raw tunnel, as before ALPN was used. */
function tunnelAlpn(options: HubOptions): string[] {
  return options.webSocketPath === null ? [ALPN_TUNNEL, ENROLL_ALPN] : [ALPN_TUNNEL, ALPN_HTTP, ENROLL_ALPN];
}

/**
 * The cloud side: accepts agent tunnels over mutual TLS, takes their streams
 * apart into one session per device and hands each to the embedded broker.
 */
export class CloudHub {
  readonly broker: Aedes;
  readonly counters = new HubCounters();
  private readonly index: SessionIndex;
  private readonly admission: SessionAdmission;
  private readonly agents: AgentRecords;
  private readonly streams: SessionStreams<AgentRecord>;
  private readonly tunnels = new Set<Tunnel>();
  /** Agent tunnels closed since start, by why. */
  readonly tunnelEnds = new EndCounts();
  private readonly tunnelSince = new WeakMap<Tunnel, { since: number; transport: TunnelView['transport']; remote: string }>();
  /** Agents whose devices are sent elsewhere: new ones are refused until the drain is lifted. */
  private readonly draining = new Set<string>();
  private readonly deviceLog: { connected: RateLimitedLog; disconnected: RateLimitedLog; refused: RateLimitedLog; resumeRefused: RateLimitedLog };
  private readonly clock: Clock;
  private readonly sweep: Timer;
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
    this.clock = options.clock ?? systemClock;
    const limit = options.deviceLogLimit ?? DEFAULT_DEVICE_LOG_LIMIT;
    this.deviceLog = {
      connected: new RateLimitedLog(options.log, { msg: 'device connected', plural: 'device connects', ...limit }),
      disconnected: new RateLimitedLog(options.log, { msg: 'device disconnected', plural: 'device disconnects', ...limit }),
      refused: new RateLimitedLog(options.log, { msg: 'device refused', plural: 'device refusals', ...limit }),
      // After a hub restart every stream of every agent asks to resume at once.
      resumeRefused: new RateLimitedLog(options.log, { msg: 'resume refused', plural: 'refused resumes', ...limit }),
    };
    this.index = new SessionIndex(registry);
    this.admission = new SessionAdmission(
      {
        routes: options.routes ?? [],
        namespaces: options.namespaces ?? [],
        maxClientIdLength: options.maxClientIdLength ?? HUB_DEFAULTS.maxClientIdLength,
        maxDevicesPerAgent: options.maxDevicesPerAgent ?? HUB_DEFAULTS.maxDevicesPerAgent,
        isDraining: (agentId) => this.draining.has(agentId),
        connected: (session) => {
          this.deviceLog.connected.info({ clientId: session.clientId, agentId: session.agentId, streamId: session.stream.id, route: session.route, backend: this.backendOf(session) });
        },
      },
      embedded.broker,
      this.index,
    );
    this.streams = new SessionStreams({
      streamWindow: options.streamWindow,
      maxPacketSize: options.maxPacketSize,
      maxQueuedBytes: options.maxQueuedBytes,
      resumeGraceMs: options.resumeGraceMs,
      connectTimeoutMs: CONNECT_TIMEOUT_MS,
      clock: this.clock,
      counters: this.counters,
      log: options.log,
      opened: (session) => this.index.opened(session),
      admit: (session, agent, open, connect, log) => this.admission.admit(session, agent.agentId, open, connect, log),
      admitted: (session) => this.index.brokerAccepted(session),
      refused: (session, reason, detail) => {
        this.counters.refused(reason);
        const clientId = session.clientId.slice(0, LOGGED_CLIENT_ID_CHARS);
        this.deviceLog.refused.info({ clientId, agentId: session.agentId, streamId: session.stream.id, reason, detail });
      },
      resumeRefused: (agent, streamId, clientId) => {
        this.counters.refused('unknown-session');
        this.deviceLog.resumeRefused.info({ agentId: agent.agentId, streamId, clientId, reason: 'unknown-session', detail: 'no such session on this hub' });
      },
      resumed: () => this.counters.resumes++,
      closed: (session, agent) => {
        // Only an admitted device was logged as connected; a refused one was logged as refused.
        if (session.link !== null) {
          const end = session.endReason ?? { code: 'closed', detail: 'closed' };
          this.deviceLog.disconnected.info({ clientId: session.clientId, agentId: session.agentId, streamId: session.stream.id, reason: end.code, detail: end.detail });
        }
        if (this.index.closed(session)) this.admission.releaseDevice(session.agentId, session.clientId);
        this.agents.prune(agent);
      },
    });
    this.agents = new AgentRecords((retired) => {
      this.streams.endAll(retired, 'agent-restarted', 'agent restarted');
      for (const tunnel of retired.tunnels) tunnel.close('agent-restarted', 'agent restarted');
    });
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
      acl: options.acl ?? null,
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
    return {
      agents: this.agents.connectedAgents,
      tunnels: this.tunnels.size,
      sessions: this.sessions.size,
      detached,
      queuedBytes,
      replayBytes,
      brokerHeldBytes,
      droppedQos0: this.index.droppedQos0,
      droppedOversized: this.index.droppedOversized,
      offlineDropped: this.embedded.persistence?.stats.offlineDropped ?? 0,
      offlineQueued: this.embedded.persistence?.stats.queuedMessages ?? 0,
      subscriptionsRefused: this.embedded.subscriptionLimits.refused,
      aclDenied: { ...this.embedded.acl.denied },
      brokerClientErrors: this.embedded.stats.clientErrors,
      agentDeviceLimitRefused: this.admission.agentDeviceLimitRefused,
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
    return this.index.owners();
  }

  device(clientId: string): DeviceSession | undefined {
    return this.index.owner(clientId);
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
    const session = this.index.owner(clientId);
    return session?.endByHub('operator-disconnected', DISCONNECT_REASON.administrativeAction, false) ?? false;
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
      if (session.agentId === agentId && session.endByHub('drained', DISCONNECT_REASON.useAnotherServer, true)) ended++;
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
    for (const route of this.admission.routes) {
      if (route.backend.kind !== 'external') continue;
      const brokers = route.backend.group.health();
      routes.push({ route: route.name, brokers });
      if (!brokers.some((broker) => broker.healthy)) {
        reasons.push(`route ${route.name}: no broker reachable (${brokers.map((broker) => broker.url).join(', ')})`);
      }
    }
    return { ready: reasons.length === 0, reasons, routes };
  }

  /** Routes for devices that connect from now on; connected devices keep their broker connections. */
  replaceRoutes(routes: Route[]): void {
    this.admission.replaceRoutes(routes);
  }

  /** Namespace rules for devices that connect from now on; connected devices were checked on their CONNECT and stay. */
  /** A reloaded ACL file (or none): applies to the next packet of every client of the embedded broker. */
  replaceAcl(acl: AclFile | null): void {
    this.embedded.acl.replace(acl);
    this.options.log.info({ rules: acl?.ruleCount ?? null }, acl === null ? 'acl: none, every topic allowed' : 'acl file in effect');
  }

  replaceNamespaces(rules: NamespaceRule[]): void {
    this.admission.replaceNamespaces(rules);
    this.logNamespacePolicy();
  }

  /**
   * Hubs from before namespaces were required let any agent use any client
   * ID; their operators learn here, once, why devices are refused now.
   */
  private logNamespacePolicy(): void {
    const namespaces = this.admission.namespaces;
    const policy = namespaces.describe();
    if (namespaces.byDefault) {
      this.options.log.warn(
        { policy, allowAll: { namespaces: [{ agentId: '*', clientIds: ['*'] }] } },
        'client ID namespaces: the default per agent; configure namespaces (allowAll lets every agent use every ID, as hubs before did)',
      );
    } else {
      this.options.log.info({ policy, namespaces: namespaces.configured }, 'client ID namespaces');
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
      // Marked as gone first, so a tunnel closing under it cannot leave its streams waiting to resume.
      record.departed = true;
      this.streams.endAll(record, 'revoked', reason);
      for (const tunnel of record.tunnels) void tunnel.goodbye('revoked', reason);
      this.agents.forget(record);
    }
  }


  /**
   * A graceful stop: every session ends now (the broker publishes the wills
   * of devices that did not disconnect), then each agent tunnel says GOODBYE,
   * so agents close their devices at once instead of holding them for the
   * resume grace period as after a network failure.
   */
  async close(): Promise<void> {
    this.sweep.cancel();
    this.gate.close();
    this.webSockets?.close();
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
      clock: this.clock,
      log,
    });
    let record: AgentRecord | null = null;
    // DATA and ACK count once HELLO has named the agent, and only for its streams attached here.
    tunnel.routeStreams((id) => record?.streams.attachedTo(tunnel, id)?.stream);
    const helloTimer = this.clock.setTimeout(() => {
      if (record === null) tunnel.close('hello-timeout', 'no HELLO in time');
    }, TUNNEL_DEFAULTS.helloTimeoutMs);
    this.tunnels.add(tunnel);
    this.tunnelSince.set(tunnel, { since: this.clock.now(), ...shown });
    tunnel.on('control', (frame) => {
      if (frame.type === FrameType.HELLO) {
        if (record !== null) {
          tunnel.close('protocol-error', 'protocol violation: second HELLO');
          return;
        }
        helloTimer.cancel();
        const check = checkHello(frame.body, 'agent');
        if (!check.accepted) {
          this.counters.refused('tunnel-protocol');
          log.warn({ helloId: frame.body.id, version: frame.body.version, role: frame.body.role, reason: 'tunnel-protocol', detail: check.reason }, 'tunnel refused');
          refuseHello(tunnel, check);
          return;
        }
        const admitted = this.agents.register(agentId, frame.body.worker ?? 0, frame.body.instance, log);
        if (typeof admitted === 'string') {
          this.refusedTunnels++;
          this.counters.refused('tunnel-identity-in-use');
          log.warn({ worker: frame.body.worker ?? 0, instance: frame.body.instance, helloId: frame.body.id, reason: 'tunnel-identity-in-use', detail: admitted }, 'tunnel refused');
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
        tunnel.close('protocol-error', 'protocol violation: frame before HELLO');
        return;
      }
      this.onStreamControl(tunnel, record, frame, log);
    });
    tunnel.on('goodbye', (body) => {
      // An agent refusing our HELLO's version gives up this tunnel, not its sessions.
      if (record === null || body.code === 'unsupported-version') return;
      log.info({ code: body.code, reason: body.reason, sessions: record.streams.size }, 'agent said goodbye; ending its sessions');
      this.streams.departed(record, `agent said goodbye: ${body.reason}`);
    });
    tunnel.on('closed', (reason, detail) => {
      helloTimer.cancel();
      this.tunnels.delete(tunnel);
      this.tunnelEnds.add(reason);
      log.info({ reason, detail, streams: record?.streams.heldCount(tunnel) ?? 0 }, 'agent tunnel down');
      if (record !== null) {
        this.streams.tunnelClosed(tunnel, record);
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
