import net from 'node:net';
import tls from 'node:tls';
import { Backoff } from '../shared/backoff.js';
import type { Logger } from '../shared/logger.js';
import { PacketType } from '../shared/mqtt-framing.js';
import type { BrokerLink, BrokerLinkOwner } from './broker-link.js';
import { BrokerPacketScanner } from './broker-packet-scanner.js';
import { BrokerSessionKeeper, MAX_INFLIGHT_BYTES } from './broker-session-keeper.js';

export interface ExternalBrokerEndpoint {
  /** For logs and metrics, e.g. mqtts://broker-1:8883. */
  url: string;
  host: string;
  port: number;
  /** Present for mqtts: PEM material and verification settings. */
  tls?: { ca?: string; cert?: string; key?: string; rejectUnauthorized: boolean; servername?: string };
}

/** How long a broker may take to accept a TCP/TLS connection before the next one is tried. */
const CONNECT_TIMEOUT_MS = 5000;
/** How long a reconnected broker may take to answer the device's CONNECT. */
const CONNACK_TIMEOUT_MS = 5000;
/** How long the check whether a broker still accepts connections may take; no answer counts as away. */
const PROBE_TIMEOUT_MS = 1000;
/**
 * Device bytes kept while the broker connection is being dialled above which
 * the session holds back stream credit, as for the embedded broker: the agent
 * then stops reading the device, and at most one stream window more arrives.
 */
export const MAX_PENDING_BYTES = 64 * 1024;

/** Timers and clock of the reconnect logic, injected so tests can drive them. */
export interface LinkTimers {
  now(): number;
  setTimeout(run: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const REAL_TIMERS: LinkTimers = {
  now: () => Date.now(),
  setTimeout: (run, ms) => setTimeout(run, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface BrokerReconnectOptions {
  /**
   * How long a device stays attached while its broker is away; past it, or
   * when the broker refuses the device's CONNECT again, the device is
   * disconnected. 0 ends the device with its broker connection.
   */
  graceMs: number;
  /** The first attempt after a drop comes at random within this time, so a broker restart is not met by every device at once. */
  firstAttemptSpreadMs: number;
  /** Later attempts: exponential backoff with full jitter between these ceilings. */
  backoffInitialMs: number;
  backoffMaxMs: number;
  random: () => number;
  timers: LinkTimers;
  /** Whether the broker accepts TCP connections now; a broker that does closed this one device on purpose. */
  probe: (endpoint: ExternalBrokerEndpoint) => Promise<boolean>;
}

export const BROKER_RECONNECT_DEFAULTS = {
  graceMs: 30_000,
  firstAttemptSpreadMs: 1000,
  backoffInitialMs: 1000,
  backoffMaxMs: 8000,
} as const;

function dial(endpoint: ExternalBrokerEndpoint): net.Socket {
  if (endpoint.tls === undefined) return net.connect({ host: endpoint.host, port: endpoint.port, noDelay: true });
  return tls.connect({
    host: endpoint.host,
    port: endpoint.port,
    ca: endpoint.tls.ca,
    cert: endpoint.tls.cert,
    key: endpoint.tls.key,
    rejectUnauthorized: endpoint.tls.rejectUnauthorized,
    servername: endpoint.tls.servername ?? (net.isIP(endpoint.host) ? undefined : endpoint.host),
  });
}

function connectedEvent(endpoint: ExternalBrokerEndpoint): 'connect' | 'secureConnect' {
  return endpoint.tls === undefined ? 'connect' : 'secureConnect';
}

/** A plain TCP connect: enough to tell a broker that is listening from one that is gone or restarting. */
function acceptsConnections(endpoint: ExternalBrokerEndpoint): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: endpoint.host, port: endpoint.port });
    const finish = (up: boolean): void => {
      clearTimeout(timeout);
      socket.destroy();
      resolve(up);
    };
    const timeout = setTimeout(() => finish(false), PROBE_TIMEOUT_MS);
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

/**
 * The brokers of one route, in order of preference. A health check keeps
 * track of which answer; a device connection goes to the first healthy one
 * and falls through to the next when it cannot connect.
 */
export class ExternalBrokerGroup {
  private readonly healthy: boolean[];
  private readonly timer: NodeJS.Timeout | null;
  readonly reconnect: BrokerReconnectOptions;

  constructor(
    readonly name: string,
    readonly endpoints: ExternalBrokerEndpoint[],
    healthCheckMs: number,
    readonly log: Logger,
    reconnect: Partial<BrokerReconnectOptions> = {},
  ) {
    this.reconnect = {
      graceMs: reconnect.graceMs ?? BROKER_RECONNECT_DEFAULTS.graceMs,
      firstAttemptSpreadMs: reconnect.firstAttemptSpreadMs ?? BROKER_RECONNECT_DEFAULTS.firstAttemptSpreadMs,
      backoffInitialMs: reconnect.backoffInitialMs ?? BROKER_RECONNECT_DEFAULTS.backoffInitialMs,
      backoffMaxMs: reconnect.backoffMaxMs ?? BROKER_RECONNECT_DEFAULTS.backoffMaxMs,
      random: reconnect.random ?? Math.random,
      timers: reconnect.timers ?? REAL_TIMERS,
      probe: reconnect.probe ?? acceptsConnections,
    };
    this.healthy = endpoints.map(() => true);
    // A route's only broker is checked too: the hub's readiness reports a route none of whose brokers answer.
    this.timer = healthCheckMs > 0 ? setInterval(() => this.checkHealth(), healthCheckMs) : null;
    this.timer?.unref();
    if (this.timer !== null) this.checkHealth();
  }

  /** Each broker as the last health check or device connection found it. */
  health(): { url: string; healthy: boolean }[] {
    return this.endpoints.map((endpoint, index) => ({ url: endpoint.url, healthy: this.healthy[index] }));
  }

  /** Endpoints to try for a new device: healthy ones first, in configured order. */
  candidates(): ExternalBrokerEndpoint[] {
    const up = this.endpoints.filter((_, index) => this.healthy[index]);
    const down = this.endpoints.filter((_, index) => !this.healthy[index]);
    return [...up, ...down];
  }

  markHealth(endpoint: ExternalBrokerEndpoint, healthy: boolean): void {
    const index = this.endpoints.indexOf(endpoint);
    if (index < 0 || this.healthy[index] === healthy) return;
    this.healthy[index] = healthy;
    this.log.warn({ broker: endpoint.url, route: this.name, healthy }, healthy ? 'broker is back' : 'broker unreachable');
  }

  connect(owner: BrokerLinkOwner): ExternalBrokerLink {
    return new ExternalBrokerLink(this, owner);
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
  }

  /**
   * Dials the route's brokers in order until one accepts a connection;
   * `onUnreachable` when none did. Returns a function that abandons the dial.
   */
  dialFirst(onOpen: (socket: net.Socket, endpoint: ExternalBrokerEndpoint) => void, onUnreachable: () => void): () => void {
    const candidates = this.candidates();
    let attempt = 0;
    let current: net.Socket | null = null;
    let abandoned = false;
    const next = (): void => {
      const endpoint = candidates[attempt++];
      if (endpoint === undefined) {
        onUnreachable();
        return;
      }
      const socket = dial(endpoint);
      current = socket;
      const timeout = setTimeout(() => socket.destroy(new Error('connect timeout')), CONNECT_TIMEOUT_MS);
      const failed = (): void => {
        clearTimeout(timeout);
        if (abandoned) return;
        this.markHealth(endpoint, false);
        next();
      };
      socket.once('error', failed);
      socket.once(connectedEvent(endpoint), () => {
        clearTimeout(timeout);
        socket.off('error', failed);
        if (abandoned) {
          socket.destroy();
          return;
        }
        this.markHealth(endpoint, true);
        onOpen(socket, endpoint);
      });
    };
    next();
    return () => {
      abandoned = true;
      current?.destroy();
    };
  }

  private checkHealth(): void {
    for (const endpoint of this.endpoints) {
      const socket = dial(endpoint);
      const finish = (healthy: boolean): void => {
        clearTimeout(timeout);
        socket.destroy();
        this.markHealth(endpoint, healthy);
      };
      const timeout = setTimeout(() => finish(false), CONNECT_TIMEOUT_MS);
      socket.once(connectedEvent(endpoint), () => finish(true));
      socket.once('error', () => finish(false));
    }
  }
}

/**
 * dialling: the first connection is being made; the device's bytes wait.
 * open: connected; bytes pass both ways.
 * away: the connection dropped without the device or the broker ending it; the device stays, its bytes wait.
 * handshaking: a new connection carries the device's CONNECT again; its CONNACK decides.
 * closed: over, for good.
 */
type LinkState = 'dialling' | 'open' | 'away' | 'handshaking' | 'closed';

/** MQTT 5 §3.14.2.1 reason codes a server may put in DISCONNECT. */
const DISCONNECT_CODES = new Set([
  0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8b, 0x8d, 0x8e, 0x8f, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e,
  0x9f, 0xa0, 0xa1, 0xa2,
]);
const UNSPECIFIED_ERROR = 0x80;
const NOT_AUTHORIZED = 0x87;
const SERVER_SHUTTING_DOWN = 0x8b;

/**
 * The DISCONNECT reason for a device whose CONNACK refusal came from a
 * reconnection: CONNACK codes of identity and credentials (§3.2.2.2: 0x85,
 * 0x86, 0x8A, 0x8C) have no DISCONNECT counterpart; the nearest is Not authorized.
 */
function disconnectReasonFor(connackCode: number): number {
  if (DISCONNECT_CODES.has(connackCode)) return connackCode;
  if (connackCode === 0x85 || connackCode === 0x86 || connackCode === 0x8a || connackCode === 0x8c) return NOT_AUTHORIZED;
  return UNSPECIFIED_ERROR;
}

const NO_OP = (): void => {};

/**
 * One device's own connection to an external broker: the device's CONNECT
 * and everything after it go through unchanged, so the broker sees the
 * device (client ID, credentials, will, properties), not the hub. Bytes
 * pushed before the connection is up wait and go to the next broker of the
 * route if this one cannot be reached.
 *
 * When an accepted connection drops without the device leaving, the broker
 * refusing or disconnecting it, and the broker no longer accepts connections
 * (it is restarting, not closing this one device), the link stays and
 * reconnects with the device's own CONNECT; the new CONNACK is swallowed and
 * what the broker may have missed is sent again (BrokerSessionKeeper). The
 * device sees nothing unless the broker stays away past `graceMs` or refuses
 * it: then it is disconnected.
 *
 * Bounds: waiting bytes past MAX_PENDING_BYTES, messages in flight past
 * MAX_INFLIGHT_BYTES, and a full socket make `push` return false, and the
 * session holds back credit until `brokerReadable`.
 */
export class ExternalBrokerLink implements BrokerLink {
  private state: LinkState = 'dialling';
  private socket: net.Socket | null = null;
  private scanner = new BrokerPacketScanner();
  private keeper: BrokerSessionKeeper | null = null;
  private held: Buffer[] = [];
  private heldSize = 0;
  private endAfterHeld = false;
  /** The broker accepted the device (CONNACK 0) on the first connection. */
  private accepted = false;
  /** The device sent DISCONNECT or its session is ending: the broker closing next is the end. */
  private deviceLeaving = false;
  /** The broker refused the device or sent it DISCONNECT: its close is deliberate. */
  private brokerEnded = false;
  /** An MQTT 5 broker said it is shutting down (§3.14.2.1, 0x8B): it will be back. */
  private brokerShuttingDown = false;
  private creditHeldForInflight = false;
  private awaySince = 0;
  private retryTimer: unknown = null;
  private graceTimer: unknown = null;
  private handshakeTimer: unknown = null;
  private abandonDial: () => void = NO_OP;
  private readonly backoff: Backoff;
  private readonly options: BrokerReconnectOptions;
  /** The broker being dialled or connected to. */
  endpoint: ExternalBrokerEndpoint | null = null;
  /** Connections to the broker made again after a drop; for logs and tests. */
  reconnects = 0;

  constructor(
    private readonly group: ExternalBrokerGroup,
    private readonly owner: BrokerLinkOwner,
  ) {
    this.options = group.reconnect;
    this.backoff = new Backoff({ initialMs: this.options.backoffInitialMs, maxMs: this.options.backoffMaxMs, random: this.options.random });
    this.abandonDial = group.dialFirst(
      (socket, endpoint) => this.opened(socket, endpoint),
      () => {
        this.state = 'closed';
        this.dropHeld();
        this.owner.brokerUnavailable(`no broker of route ${this.group.name} could be reached`);
      },
    );
  }

  get destroyed(): boolean {
    return this.state === 'closed';
  }

  /** Device bytes accepted but not yet handed to the kernel. */
  get heldBytes(): number {
    return this.state === 'open' ? this.socket!.writableLength : this.heldSize;
  }

  push(bytes: Buffer | null): boolean {
    if (this.state === 'closed') return true;
    if (bytes === null) {
      this.deviceLeaving = true;
      if (this.state === 'open') this.socket!.end();
      else if (this.state === 'dialling') this.endAfterHeld = true;
      // Nobody to tell: the session that ends it is already closed.
      else this.close();
      return true;
    }
    if (this.keeper === null) {
      // The stream's first packet is the CONNECT; it is kept whole, to be sent again on each reconnection.
      this.keeper = new BrokerSessionKeeper(Buffer.from(bytes));
      if (this.state === 'open') this.socket!.write(this.keeper.connect);
      return true;
    }
    const type = bytes[0] >> 4;
    if (type === PacketType.DISCONNECT) {
      this.deviceLeaving = true;
      if (this.state === 'away' || this.state === 'handshaking') {
        // The device leaves while its broker is away: there is nothing to reconnect for.
        this.giveUp('device sent DISCONNECT while its broker was away', null);
        return true;
      }
    }
    if (this.state === 'open') return this.send(bytes) && this.inflightRoom();
    // No broker to keep alive while it is away; the agent answers the device's own PINGREQs.
    if (type === PacketType.PINGREQ && this.state !== 'dialling') return true;
    // Kept past this call: the caller's buffer is a view of a tunnel read.
    this.held.push(Buffer.from(bytes));
    this.heldSize += bytes.length;
    return this.heldSize < MAX_PENDING_BYTES && this.inflightRoom();
  }

  destroy(): void {
    if (this.state === 'closed') return;
    this.close();
    this.owner.brokerClosed();
  }

  private inflightRoom(): boolean {
    if (this.keeper!.inflightBytes < MAX_INFLIGHT_BYTES) return true;
    this.creditHeldForInflight = true;
    return false;
  }

  /** Writes one device packet to the broker as the keeper says: as it is, completed, swallowed, or answered here. */
  private send(packet: Buffer): boolean {
    const action = this.keeper!.fromDevice(packet);
    if (action.kind === 'send') return this.socket!.write(action.packet);
    if (action.kind === 'answer') this.owner.fromBroker(action.packet, NO_OP);
    return true;
  }

  private opened(socket: net.Socket, endpoint: ExternalBrokerEndpoint): void {
    this.abandonDial = NO_OP;
    if (this.state === 'closed') {
      socket.destroy();
      return;
    }
    this.endpoint = endpoint;
    this.socket = socket;
    this.scanner = new BrokerPacketScanner();
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.fromBroker(socket, chunk));
    socket.on('drain', () => {
      if (this.socket === socket && this.state === 'open') this.owner.brokerReadable();
    });
    socket.on('error', () => {
      // 'close' follows and decides.
    });
    socket.on('close', () => this.socketClosed(socket));
    if (this.state === 'away') {
      this.state = 'handshaking';
      socket.write(this.keeper!.connect);
      this.handshakeTimer = this.options.timers.setTimeout(() => socket.destroy(), CONNACK_TIMEOUT_MS);
      return;
    }
    this.state = 'open';
    socket.cork();
    if (this.keeper !== null) socket.write(this.keeper.connect);
    this.flushHeld();
    socket.uncork();
    if (this.endAfterHeld) socket.end();
    // Credit held back while dialling is returned once the socket takes more; 'drain' does it otherwise.
    if (!socket.writableNeedDrain) this.owner.brokerReadable();
  }

  private flushHeld(): void {
    const held = this.held;
    this.held = [];
    this.heldSize = 0;
    for (const packet of held) this.send(packet);
  }

  private fromBroker(socket: net.Socket, chunk: Buffer): void {
    if (this.socket !== socket || this.state === 'closed') return;
    try {
      this.scanner.push(chunk, {
        forward: (bytes) => this.owner.fromBroker(bytes, NO_OP),
        control: (packet) => this.brokerControl(packet),
        publish: (_qos, packetId) => this.keeper?.brokerPublished(packetId),
      });
    } catch (err) {
      this.group.log.error({ clientId: this.keeper?.clientId, broker: this.endpoint?.url, err }, 'broker wrote an unframeable packet');
      this.destroy();
    }
  }

  /** A whole control packet from the broker; false swallows it. */
  private brokerControl(packet: Buffer): boolean {
    const type = packet[0] >> 4;
    if (type === PacketType.CONNACK) {
      // MQTT 3.1.1 §3.2.2.3, MQTT 5 §3.2.2.2: the code follows the acknowledge flags in both.
      const code = packet.length >= 4 ? packet[3] : UNSPECIFIED_ERROR;
      if (this.state === 'handshaking') {
        this.handshaken(code, (packet[2] & 0x01) === 1);
        return false;
      }
      if (code === 0) this.accepted = true;
      else this.brokerEnded = true;
      return true;
    }
    if (type === PacketType.DISCONNECT) {
      const reason = packet.length >= 3 ? packet[2] : 0;
      if (reason === SERVER_SHUTTING_DOWN && this.accepted && this.options.graceMs > 0) {
        this.brokerShuttingDown = true;
        return false;
      }
      this.brokerEnded = true;
      return true;
    }
    if (this.keeper === null) return true;
    const forward = this.keeper.fromBroker(packet);
    if (this.creditHeldForInflight && this.keeper.inflightBytes < MAX_INFLIGHT_BYTES) {
      this.creditHeldForInflight = false;
      this.owner.brokerReadable();
    }
    return forward;
  }

  private socketClosed(socket: net.Socket): void {
    if (this.socket !== socket || this.state === 'closed') return;
    this.socket = null;
    if (this.state === 'handshaking') {
      this.options.timers.clearTimeout(this.handshakeTimer);
      this.state = 'away';
      this.scheduleAttempt(this.backoff.nextDelayMs());
      return;
    }
    if (this.deviceLeaving || this.brokerEnded || !this.accepted || this.options.graceMs === 0 || this.keeper === null) {
      this.destroy();
      return;
    }
    this.state = 'away';
    this.awaySince = this.options.timers.now();
    this.graceTimer = this.options.timers.setTimeout(
      () => this.giveUp(`broker did not take the device back within ${this.options.graceMs} ms`, this.brokerShuttingDown ? SERVER_SHUTTING_DOWN : UNSPECIFIED_ERROR),
      this.options.graceMs,
    );
    if (this.brokerShuttingDown) {
      this.awayConfirmed();
      return;
    }
    // MQTT 3.1.1 gives no reason for a close: a broker that still accepts
    // connections closed this one on purpose (another connection took over
    // the client ID, an administrator), and reconnecting would fight it.
    const endpoint = this.endpoint!;
    void this.options.probe(endpoint).then((up) => {
      if (this.state !== 'away') return;
      if (up) this.giveUp('broker closed the connection while accepting others', null, true);
      else this.awayConfirmed();
    });
  }

  private awayConfirmed(): void {
    this.group.log.debug({ clientId: this.keeper!.clientId, broker: this.endpoint?.url }, 'broker connection lost; reconnecting on the device’s behalf');
    this.backoff.reset();
    this.scheduleAttempt(Math.floor(this.options.random() * this.options.firstAttemptSpreadMs));
  }

  private scheduleAttempt(delayMs: number): void {
    this.retryTimer = this.options.timers.setTimeout(() => {
      this.retryTimer = null;
      if (this.state !== 'away') return;
      this.abandonDial = this.group.dialFirst(
        (socket, endpoint) => this.opened(socket, endpoint),
        () => {
          this.abandonDial = NO_OP;
          if (this.state === 'away') this.scheduleAttempt(this.backoff.nextDelayMs());
        },
      );
    }, delayMs);
  }

  /**
   * The CONNACK of a reconnection. Accepted: what the broker may have missed
   * goes first, then what the device sent meanwhile, and the device never
   * sees a second CONNACK. Refused (credentials changed, the device banned):
   * the device is disconnected with the broker's reason.
   */
  private handshaken(code: number, sessionPresent: boolean): void {
    this.options.timers.clearTimeout(this.handshakeTimer);
    const keeper = this.keeper!;
    if (code !== 0) {
      this.giveUp(`broker refused the device on reconnection (code ${code})`, disconnectReasonFor(code));
      return;
    }
    if (!sessionPresent && !keeper.canRestoreSubscriptions) {
      this.giveUp('broker lost the session and the device holds too many subscriptions to restore', UNSPECIFIED_ERROR);
      return;
    }
    const socket = this.socket!;
    this.options.timers.clearTimeout(this.graceTimer);
    this.state = 'open';
    this.reconnects++;
    this.brokerShuttingDown = false;
    const again = keeper.reconnected(sessionPresent);
    const resubscribed = again.filter((packet) => packet[0] >> 4 === PacketType.SUBSCRIBE && !keeper.isDevicePacket(packet)).length;
    socket.cork();
    for (const packet of again) socket.write(packet);
    this.flushHeld();
    socket.uncork();
    this.group.log.debug(
      {
        clientId: keeper.clientId,
        broker: this.endpoint?.url,
        sessionPresent,
        awayMs: this.options.timers.now() - this.awaySince,
        resent: again.length - resubscribed,
        resubscribed,
      },
      'broker connection restored',
    );
    if (!socket.writableNeedDrain) this.owner.brokerReadable();
  }

  /**
   * Ends the device: MQTT 5 devices first get a DISCONNECT with `reasonCode`
   * (§3.14.2.1); MQTT 3.1.1 has no DISCONNECT from the server (§3.14), so
   * those are simply closed. `quiet`: a broker that closed the device on
   * purpose already decided; this is no news worth a warning.
   */
  private giveUp(reason: string, reasonCode: number | null, quiet = false): void {
    if (this.state === 'closed') return;
    const keeper = this.keeper!;
    const line = { clientId: keeper.clientId, broker: this.endpoint?.url, route: this.group.name, reason };
    if (quiet) this.group.log.debug(line, 'device disconnected with its broker connection');
    else this.group.log.warn(line, 'device disconnected with its broker connection');
    this.close();
    if (reasonCode !== null && keeper.protocolVersion === 5) this.owner.fromBroker(Buffer.from([0xe0, 2, reasonCode, 0]), NO_OP);
    this.owner.brokerClosed();
  }

  private close(): void {
    this.state = 'closed';
    this.abandonDial();
    this.abandonDial = NO_OP;
    this.options.timers.clearTimeout(this.retryTimer);
    this.options.timers.clearTimeout(this.graceTimer);
    this.options.timers.clearTimeout(this.handshakeTimer);
    this.dropHeld();
    this.socket?.destroy();
    this.socket = null;
  }

  private dropHeld(): void {
    this.held = [];
    this.heldSize = 0;
  }
}
