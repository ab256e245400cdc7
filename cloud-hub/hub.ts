import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import type { Aedes } from 'aedes';
import { type RefusalKind, refusalConnack } from '../shared/connack.js';
import { type ControlFrame, FrameType, type OpenBody, PROTOCOL_VERSION, type ResumeBody } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { MuxStream } from '../shared/mux-stream.js';
import { Tunnel } from '../shared/tunnel.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import { ENROLL_ALPN } from '../shared/enrollment-wire.js';
import type { CertificateAndKey } from '../shared/pki.js';
import { AgentGate } from './agent-gate.js';
import { BrokerPipe } from './broker-pipe.js';
import { DeviceSession, type SessionStream } from './device-session.js';
import { type EmbeddedBroker, startEmbeddedBroker } from './embedded-broker.js';
import { EnrollmentServer } from './enrollment-server.js';
import type { PkiStore } from './pki-store.js';
import { Registry } from './registry.js';
import { SqlitePersistence } from './sqlite-persistence.js';
import { Namespaces, type NamespaceRule, type Route, Router } from './routes.js';

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
  /** Enrollment, renewal and revocation (docs/pki.md); without it the agent CA alone decides who connects. */
  pki?: {
    store: PkiStore;
    ca: CertificateAndKey;
    certValidityMs: number;
    revocationPollMs?: number;
  };
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
}

/** What the hub knows of one agent process (one worker of it): its streams outlive any one tunnel. */
interface AgentRecord {
  key: string;
  agentId: string;
  instance: string;
  /** Earlier instances of this agent worker: a late HELLO from one must not end the current sessions. */
  retired: string[];
  streams: Map<number, SessionStream>;
  tunnels: Set<Tunnel>;
}

const SWEEP_INTERVAL_MS = 1000;
const RETIRED_INSTANCES_KEPT = 8;
/** An agent may ask for a large window, but the hub's replay memory per stream stays bounded. */
const MAX_STREAM_WINDOW = 16 * 1024 * 1024;

function tunnelContext(material: HubOptions['tls']): tls.SecureContextOptions {
  return { ca: material.ca, cert: material.cert, key: material.key, minVersion: 'TLSv1.3' };
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
  private router: Router;
  private namespaces: Namespaces;
  private droppedQos0OfClosedSessions = 0;
  private readonly sessionsByClientId = new Map<string, DeviceSession>();
  private readonly reportedTraffic = new WeakMap<DeviceSession, DeviceSession['traffic']>();
  private readonly agents = new Map<string, AgentRecord>();
  private readonly tunnels = new Set<Tunnel>();
  private readonly sweep: NodeJS.Timeout;
  private readonly gate: AgentGate;

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
    const pki = options.pki;
    this.gate = new AgentGate({
      store: pki?.store,
      enrollment: pki && new EnrollmentServer({ store: pki.store, ca: pki.ca, certValidityMs: pki.certValidityMs, log: options.log }),
      revocationPollMs: pki?.revocationPollMs,
      log: options.log,
    });
    this.gate.on('revoked', (agentId, reason) => this.endAgent(agentId, `agent revoked: ${reason}`));
    tunnelServer.on('secureConnection', (socket) => {
      if (this.gate.admit(socket)) this.acceptTunnel(socket);
    });
    tunnelServer.on('tlsClientError', (err, socket) => this.gate.handshakeFailed(err, socket));
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
  }

  static async start(options: HubOptions): Promise<CloudHub> {
    const persistence = options.statePath !== undefined ? new SqlitePersistence({ path: options.statePath }) : undefined;
    const embedded = await startEmbeddedBroker({ appHost: options.appHost, appPort: options.appPort, persistence });
    const registry = persistence !== undefined ? new Registry(persistence.db) : null;
    // The gate rejects what the handshake would have, but with a reason the agent can read.
    const tunnelServer = tls.createServer({ ...tunnelContext(options.tls), requestCert: true, rejectUnauthorized: false, ALPNProtocols: [ENROLL_ALPN] });
    await new Promise<void>((resolve, reject) => {
      tunnelServer.once('error', reject);
      tunnelServer.listen(options.tunnelPort, options.tunnelHost, () => {
        tunnelServer.off('error', reject);
        resolve();
      });
    });
    const hub = new CloudHub(options, embedded, tunnelServer, registry);
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
    let detached = 0;
    let queuedBytes = 0;
    let replayBytes = 0;
    let brokerHeldBytes = 0;
    let droppedQos0 = this.droppedQos0OfClosedSessions;
    for (const session of this.sessions) {
      if (session.state === 'detached') detached++;
      queuedBytes += session.queuedBytes;
      replayBytes += session.stream.replayBytes;
      brokerHeldBytes += session.link.heldBytes;
      droppedQos0 += session.droppedQos0;
    }
    const agents = new Set<string>();
    for (const record of this.agents.values()) if (record.tunnels.size > 0) agents.add(record.agentId);
    return { agents: agents.size, tunnels: this.tunnels.size, sessions: this.sessions.size, detached, queuedBytes, replayBytes, brokerHeldBytes, droppedQos0 };
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
  }

  /** Certificate, key and agent CA for tunnels that connect from now on; tunnels already up keep their session. */
  replaceTls(material: HubOptions['tls']): void {
    this.tunnelServer.setSecureContext(tunnelContext(material));
  }

  /** Ends every session and tunnel of an agent at once, telling it why: its sessions publish their wills. */
  endAgent(agentId: string, reason: string): void {
    for (const record of [...this.agents.values()]) {
      if (record.agentId !== agentId) continue;
      this.agents.delete(record.key);
      for (const stream of [...record.streams.values()]) stream.sink.expire();
      record.streams.clear();
      for (const tunnel of record.tunnels) {
        tunnel.streams.clear();
        tunnel.goodbye({ code: 'revoked', reason }, reason);
      }
    }
  }

  async close(): Promise<void> {
    clearInterval(this.sweep);
    this.gate.close();
    await new Promise<void>((resolve) => {
      this.tunnelServer.close(() => resolve());
      for (const tunnel of this.tunnels) tunnel.close('hub shutting down');
    });
    for (const session of [...this.sessions]) session.expire();
    this.reportTraffic();
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
      log,
    });
    let record: AgentRecord | null = null;
    const helloTimer = setTimeout(() => {
      if (record === null) tunnel.close('no HELLO in time');
    }, TUNNEL_DEFAULTS.helloTimeoutMs);
    this.tunnels.add(tunnel);
    tunnel.on('control', (frame) => {
      if (frame.type === FrameType.HELLO) {
        if (record !== null) {
          tunnel.close('protocol violation: second HELLO');
          return;
        }
        clearTimeout(helloTimer);
        if (frame.body.version !== PROTOCOL_VERSION || frame.body.role !== 'agent') {
          log.warn({ reason: `HELLO version ${frame.body.version} role ${frame.body.role}` }, 'tunnel refused');
          tunnel.close(`unsupported protocol version ${frame.body.version} or role ${frame.body.role}`);
          return;
        }
        tunnel.peerMaxFramePayload = frame.body.maxFramePayload;
        record = this.registerAgent(agentId, frame.body.worker ?? 0, frame.body.instance, log);
        if (record === null) {
          tunnel.close('HELLO from a retired agent instance');
          return;
        }
        record.tunnels.add(tunnel);
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
        tunnel.close('protocol violation: frame before HELLO');
        return;
      }
      this.onStreamControl(tunnel, record, frame, log);
    });
    tunnel.on('closed', (reason) => {
      clearTimeout(helloTimer);
      this.tunnels.delete(tunnel);
      if (record !== null) {
        record.tunnels.delete(tunnel);
        this.registry?.agentDisconnected(agentId, record.tunnels.size);
        this.pruneAgent(record);
      }
      log.info({ reason, streams: tunnel.streams.size }, 'agent tunnel down');
      const now = Date.now();
      for (const stream of tunnel.streams.values()) (stream as SessionStream).sink.detach(now);
      tunnel.streams.clear();
    });
  }

  /** A new instance of a known agent worker means the old process is gone: its sessions cannot resume. */
  private registerAgent(agentId: string, worker: number, instance: string, log: Logger): AgentRecord | null {
    const key = `${agentId}#${worker}`;
    const known = this.agents.get(key);
    if (known !== undefined && known.instance === instance) return known;
    if (known !== undefined && known.retired.includes(instance)) return null;
    if (known !== undefined) {
      log.info({ previousInstance: known.instance, sessions: known.streams.size }, 'agent restarted; ending its old sessions');
      for (const stream of [...known.streams.values()]) stream.sink.expire();
      for (const tunnel of known.tunnels) tunnel.close('agent restarted');
    }
    const retired = known === undefined ? [] : [known.instance, ...known.retired].slice(0, RETIRED_INSTANCES_KEPT);
    const record: AgentRecord = { key, agentId, instance, retired, streams: new Map(), tunnels: new Set() };
    this.agents.set(key, record);
    return record;
  }

  /** An agent with no tunnel and no session left is forgotten, except for the instances it retired. */
  private pruneAgent(record: AgentRecord): void {
    if (record.tunnels.size > 0 || record.streams.size > 0 || this.agents.get(record.key) !== record) return;
    if (record.retired.length === 0) this.agents.delete(record.key);
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
    const session = new DeviceSession({
      clientId: open.clientId,
      agentId: record.agentId,
      keepaliveSeconds: open.keepalive,
      protocolVersion: open.protocolVersion,
      maxPacketSize: this.options.maxPacketSize,
      maxQueuedBytes: this.options.maxQueuedBytes,
      log,
      onClosed: (closed) => {
        this.sessions.delete(closed);
        this.reportSessionTraffic(closed);
        // After a takeover the newer session owns the client ID.
        if (this.sessionsByClientId.get(closed.clientId) === closed) {
          this.sessionsByClientId.delete(closed.clientId);
          this.registry?.deviceDisconnected(closed.clientId);
        }
        this.droppedQos0OfClosedSessions += closed.droppedQos0;
        if (record.streams.get(streamId) === closed.stream) record.streams.delete(streamId);
        this.pruneAgent(record);
      },
    });
    const stream: SessionStream = new MuxStream(streamId, tunnel, session, capWindow(open.window), this.options.streamWindow, this.options.maxPacketSize);
    session.bind(stream);
    tunnel.send({ type: FrameType.ACCEPT, streamId, body: { window: this.options.streamWindow, received: 0 } });
    const refuse = (reason: string, kind: RefusalKind): void => {
      log.info({ clientId: open.clientId, streamId, reason }, 'device refused');
      stream.write(refusalConnack(open.protocolVersion, kind));
      tunnel.send({ type: FrameType.CLOSE, streamId, body: { reason, abrupt: false } });
      stream.close();
    };
    if (!this.namespaces.allows(record.agentId, open.clientId)) {
      refuse(`client ID outside the namespace of agent ${record.agentId}`, 'not-authorized');
      return;
    }
    const backend = this.router.backendFor({ clientId: open.clientId, username: open.username, agentId: record.agentId });
    if (backend.kind === 'embedded' && open.protocolVersion === 5) {
      refuse('MQTT 5 on the embedded 3.1.1 broker', 'unsupported-protocol');
      return;
    }
    tunnel.streams.set(streamId, stream);
    record.streams.set(streamId, stream);
    this.sessions.add(session);
    this.sessionsByClientId.set(open.clientId, session);
    this.registry?.deviceConnected(open.clientId, record.agentId);
    if (backend.kind === 'embedded') {
      session.connectBroker((owner) => {
        const pipe = new BrokerPipe(owner);
        this.broker.handle(pipe);
        return pipe;
      });
    } else {
      session.connectBroker((owner) => backend.group.connect(owner));
    }
  }

  private resumeSession(tunnel: Tunnel, record: AgentRecord, streamId: number, resume: ResumeBody, log: Logger): void {
    const stream = record.streams.get(streamId);
    if (stream === undefined || stream.sink.clientId !== resume.clientId || stream.sink.state === 'closed') {
      log.info({ streamId, clientId: resume.clientId, reason: 'no such session on this hub' }, 'resume refused');
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
    log.debug({ streamId, clientId: resume.clientId }, 'stream resumed');
  }

  /** Hands each session's traffic since the last report to the registry, which writes it in batches. */
  private reportTraffic(): void {
    if (this.registry === null) return;
    for (const session of this.sessions) this.reportSessionTraffic(session);
  }

  private reportSessionTraffic(session: DeviceSession): void {
    if (this.registry === null) return;
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
      if (session.state === 'detached' && now - session.detachedAt > this.options.resumeGraceMs) session.expire();
      else session.keepBrokerAlive(now);
    }
  }
}
