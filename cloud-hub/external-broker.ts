import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from '../shared/logger.js';
import type { BrokerLink, BrokerLinkOwner } from './broker-link.js';

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
/**
 * Device bytes kept while the broker connection is being dialled above which
 * the session holds back stream credit, as for the embedded broker: the agent
 * then stops reading the device, and at most one stream window more arrives.
 */
export const MAX_PENDING_BYTES = 64 * 1024;

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

/**
 * The brokers of one route, in order of preference. A health check keeps
 * track of which answer; a device connection goes to the first healthy one
 * and falls through to the next when it cannot connect.
 */
export class ExternalBrokerGroup {
  private readonly healthy: boolean[];
  private readonly timer: NodeJS.Timeout | null;

  constructor(
    readonly name: string,
    readonly endpoints: ExternalBrokerEndpoint[],
    healthCheckMs: number,
    private readonly log: Logger,
  ) {
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
 * One device's own connection to an external broker: the device's CONNECT
 * and everything after it go through unchanged, so the broker sees the
 * device (client ID, credentials, will, properties), not the hub. Bytes
 * pushed before the connection is up are kept so they can be sent to the
 * next broker of the route if this one cannot be reached; past
 * MAX_PENDING_BYTES, and while the socket's buffer is full, `push` returns
 * false and the session holds back credit until `brokerReadable`.
 */
export class ExternalBrokerLink implements BrokerLink {
  destroyed = false;
  private socket: net.Socket | null = null;
  private connected = false;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private endAfterPending = false;
  private readonly candidates: ExternalBrokerEndpoint[];
  private attempt = 0;
  /** The broker being dialled or connected to. */
  endpoint: ExternalBrokerEndpoint | null = null;

  constructor(
    private readonly group: ExternalBrokerGroup,
    private readonly owner: BrokerLinkOwner,
  ) {
    this.candidates = group.candidates();
    this.dialNext();
  }

  /** Device bytes accepted but not yet handed to the kernel. */
  get heldBytes(): number {
    return this.connected ? this.socket!.writableLength : this.pendingBytes;
  }

  push(bytes: Buffer | null): boolean {
    if (this.destroyed) return true;
    if (!this.connected) {
      if (bytes === null) {
        this.endAfterPending = true;
      } else {
        // Kept past this call: the caller's buffer is a view of a tunnel read.
        this.pending.push(Buffer.from(bytes));
        this.pendingBytes += bytes.length;
      }
      return this.pendingBytes < MAX_PENDING_BYTES;
    }
    if (bytes === null) {
      this.socket!.end();
      return true;
    }
    return this.socket!.write(bytes);
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.pending = [];
    this.pendingBytes = 0;
    this.socket?.destroy();
    this.owner.brokerClosed();
  }

  private dialNext(): void {
    const endpoint = this.candidates[this.attempt++];
    if (endpoint === undefined) {
      this.destroyed = true;
      this.pending = [];
      this.pendingBytes = 0;
      this.owner.brokerUnavailable(`no broker of route ${this.group.name} could be reached`);
      return;
    }
    this.endpoint = endpoint;
    const socket = dial(endpoint);
    this.socket = socket;
    const timeout = setTimeout(() => socket.destroy(new Error('connect timeout')), CONNECT_TIMEOUT_MS);
    socket.once(connectedEvent(endpoint), () => {
      clearTimeout(timeout);
      if (this.destroyed) {
        socket.destroy();
        return;
      }
      this.connected = true;
      this.group.markHealth(endpoint, true);
      socket.cork();
      for (const bytes of this.pending) socket.write(bytes);
      socket.uncork();
      this.pending = [];
      this.pendingBytes = 0;
      if (this.endAfterPending) socket.end();
      // Credit held back while dialling is returned once the socket takes more; 'drain' does it otherwise.
      if (!socket.writableNeedDrain) this.owner.brokerReadable();
    });
    socket.on('data', (chunk: Buffer) => {
      this.owner.fromBroker(chunk, () => {});
    });
    socket.on('drain', () => this.owner.brokerReadable());
    socket.on('error', () => {
      // 'close' follows: before the connection is up it means try the next broker.
    });
    socket.on('close', () => {
      clearTimeout(timeout);
      if (this.socket !== socket || this.destroyed) return;
      if (!this.connected) {
        this.group.markHealth(endpoint, false);
        this.dialNext();
        return;
      }
      this.destroyed = true;
      this.owner.brokerClosed();
    });
  }
}
