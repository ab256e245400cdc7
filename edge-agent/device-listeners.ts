import http from 'node:http';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import tls, { type TLSSocket } from 'node:tls';
import { WebSocketServer } from 'ws';
import { EdgemuxError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { DeviceIdentity, IdentityAs } from './connect-packet.js';
import { WebSocketDuplex } from './websocket-duplex.js';

export type ListenerType = 'tcp' | 'tls' | 'ws' | 'wss';

export interface DeviceListenerOptions {
  type: ListenerType;
  host: string;
  port: number;
  /** Kernel accept queue; node's own default (511) overflows in connect storms. */
  backlog?: number;
  /** tls and wss: PEM strings. `ca` verifies device certificates. */
  tls?: { cert: string; key: string; ca?: string };
  /** tls and wss: refuse devices without a certificate signed by `tls.ca`. */
  requireClientCert?: boolean;
  /** tls and wss with requireClientCert: the certificate's common name becomes the client ID, the username or both. */
  identityAs?: IdentityAs;
  /** tls, ws, wss: a peer that has not finished its TLS handshake or WebSocket upgrade by then is closed. */
  handshakeTimeoutMs?: number;
  /** ws and wss: the HTTP path of the upgrade. */
  path?: string;
}

/** A device's byte stream and what its listener knows of it. */
export type DeviceSocket = Duplex & { remoteAddress?: string };
export type OnDevice = (socket: DeviceSocket, identity: DeviceIdentity | null) => void;

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
export const DEFAULT_WS_PATH = '/mqtt';
/**
 * A WebSocket message may carry one whole packet of the largest size the
 * agent accepts plus a few small ones gathered with it; anything bigger is
 * refused by ws (close 1009) before it is buffered.
 */
const WS_MESSAGE_HEADROOM = 64 * 1024;
/** MQTT 5 §6.0.0-3 names "mqtt"; "mqttv3.1" is what MQTT 3.1 clients still offer. */
const MQTT_SUBPROTOCOLS = ['mqtt', 'mqttv3.1'];

/** One listening port for devices, of any type, handing each accepted device to `onDevice`. */
export class DeviceListener {
  /** Sockets still in their TLS handshake: closed with the listener instead of waiting out the timeout. */
  private readonly handshaking = new Set<net.Socket>();
  private wss: WebSocketServer | null = null;

  private constructor(
    readonly options: DeviceListenerOptions,
    private readonly server: net.Server,
  ) {}

  static async start(options: DeviceListenerOptions, maxPacketSize: number, onDevice: OnDevice, log: Logger): Promise<DeviceListener> {
    const server = createServer(options);
    const listener = new DeviceListener(options, server);
    listener.wire(maxPacketSize, onDevice, log);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new EdgemuxError('E_CONFIG', `${listener.describe()}: ${err.message}`, { cause: err })));
      server.listen({ port: options.port, host: options.host, backlog: options.backlog }, () => {
        server.removeAllListeners('error');
        server.on('error', (err) => log.error({ listener: listener.describe(), reason: err.message }, 'device listener error'));
        resolve();
      });
    });
    return listener;
  }

  get address(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  describe(): string {
    return `${this.options.type} listener ${this.options.host}:${this.options.port}`;
  }

  async close(): Promise<void> {
    for (const socket of this.handshaking) socket.destroy();
    this.wss?.close();
    // HTTP connections not yet upgraded would otherwise hold close() up.
    if ('closeAllConnections' in this.server) (this.server as http.Server).closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private wire(maxPacketSize: number, onDevice: OnDevice, log: Logger): void {
    const { type } = this.options;
    if (type === 'tcp') {
      this.server.on('connection', (socket: net.Socket) => onDevice(socket, null));
      return;
    }
    if (type === 'tls') {
      this.trackHandshakes();
      this.server.on('secureConnection', (socket: TLSSocket) => {
        this.handshaking.delete(socket);
        socket.setNoDelay(true);
        const identity = this.identityOf(socket, log);
        if (identity === undefined) return;
        onDevice(socket, identity);
      });
    }
    if (type === 'tls' || type === 'wss') {
      this.server.on('tlsClientError', (err: Error, socket: TLSSocket) => {
        log.info({ listener: type, remote: socket.remoteAddress, reason: err.message }, 'device TLS handshake failed');
        // A handshake timeout only reports; the socket would stay open.
        socket.destroy();
      });
    }
    if (type === 'ws' || type === 'wss') this.wireWebSocket(maxPacketSize, onDevice, log);
  }

  private wireWebSocket(maxPacketSize: number, onDevice: OnDevice, log: Logger): void {
    const wss = new WebSocketServer({
      server: this.server as http.Server,
      path: this.options.path ?? DEFAULT_WS_PATH,
      maxPayload: maxPacketSize + WS_MESSAGE_HEADROOM,
      perMessageDeflate: false,
      clientTracking: false,
      handleProtocols: (offered) => MQTT_SUBPROTOCOLS.find((name) => offered.has(name)) ?? false,
    });
    this.wss = wss;
    wss.on('connection', (ws, request) => {
      const identity = this.options.type === 'wss' ? this.identityOf(request.socket as TLSSocket, log) : null;
      if (identity === undefined) {
        ws.terminate();
        return;
      }
      onDevice(new WebSocketDuplex(ws, request.socket.remoteAddress), identity);
    });
    wss.on('error', (err) => log.error({ listener: this.options.type, reason: err.message }, 'device listener error'));
    this.server.on('request', (_request: http.IncomingMessage, response: http.ServerResponse) => {
      response.writeHead(426, { Upgrade: 'websocket', Connection: 'close' }).end('MQTT over WebSocket only\n');
    });
  }

  private trackHandshakes(): void {
    this.server.on('connection', (socket: net.Socket) => {
      this.handshaking.add(socket);
      socket.once('close', () => this.handshaking.delete(socket));
    });
  }

  /**
   * The device's name from its verified certificate, null when the listener
   * takes none, undefined (after closing the socket) when it wants one and
   * the certificate has no usable common name.
   */
  private identityOf(socket: TLSSocket, log: Logger): DeviceIdentity | null | undefined {
    const as = this.options.identityAs;
    if (as === undefined) return null;
    const name = socket.getPeerCertificate().subject?.CN;
    if (typeof name !== 'string' || name.length === 0) {
      log.info({ listener: this.options.type, remote: socket.remoteAddress, reason: 'client certificate has no single common name' }, 'device refused');
      socket.destroy();
      return undefined;
    }
    return { name, as };
  }
}

function createServer(options: DeviceListenerOptions): net.Server {
  const handshakeTimeout = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  const secure = (): tls.TlsOptions => {
    if (options.tls === undefined) throw new EdgemuxError('E_CONFIG', `${options.type} listener ${options.host}:${options.port}: needs cert and key`);
    const requireCert = options.requireClientCert ?? false;
    return {
      cert: options.tls.cert,
      key: options.tls.key,
      ca: options.tls.ca,
      requestCert: requireCert,
      rejectUnauthorized: requireCert,
      handshakeTimeout,
      minVersion: 'TLSv1.2',
    };
  };
  // A peer that sends a request slowly is closed after handshakeTimeout (node
  // checks every connectionsCheckingInterval); one that sends nothing at all
  // is left to the idle timeout set on the server below, which ws clears on upgrade.
  const httpLimits: http.ServerOptions = {
    headersTimeout: handshakeTimeout,
    requestTimeout: handshakeTimeout,
    connectionsCheckingInterval: Math.min(1000, handshakeTimeout),
    noDelay: true,
  };
  switch (options.type) {
    case 'tcp':
      return net.createServer({ noDelay: true });
    case 'tls':
      return tls.createServer(secure());
    case 'ws':
      return http.createServer(httpLimits).setTimeout(handshakeTimeout);
    case 'wss':
      return https.createServer({ ...secure(), ...httpLimits }).setTimeout(handshakeTimeout);
  }
}
