import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { WebSocket } from 'ws';
import type { DialFailure } from '../shared/backoff.js';
import { bypassesProxy, type HttpProxy, ProxyConnectError, proxyConnect } from '../shared/http-proxy.js';
import { ALPN_HTTP, ALPN_TUNNEL } from '../shared/transports/tunnel-port.js';
import { WebSocketDuplex, wsMaxPayload } from '../shared/transports/ws-duplex.js';

/**
 * How a tunnel reaches its hub. `tls`: TLS straight on TCP. `websocket`:
 * WebSocket over TLS, for paths that let only HTTPS through. `proxy`:
 * WebSocket over TLS inside an HTTP CONNECT tunnel of the site's proxy.
 */
export type TunnelTransport = 'tls' | 'websocket' | 'proxy';

/** The order transports are tried in when none is known to work (docs/protocol.md, section 12). */
export const TRANSPORT_ORDER: readonly TunnelTransport[] = ['tls', 'websocket', 'proxy'];


/**
 * A TCP connect that has not completed by then counts as the link being down.
 * Long enough for a SYN and one retransmit (Linux sends it after 1 s) on a slow
 * satellite or LTE link; probes overlap meanwhile, so it does not set how soon
 * a returning link is noticed.
 */
export const TCP_CONNECT_TIMEOUT_MS = 3000;

export interface HubAddress {
  host: string;
  port: number;
}

export interface TunnelDialerOptions {
  tls: { ca: string; cert: string; key: string };
  /** Name the hub certificate must carry; defaults to the host being dialled. */
  serverName?: string;
  webSocketPath: string;
  /** This side's frame limit, which bounds the WebSocket messages it takes. */
  maxFramePayload: number;
  proxy: HttpProxy | null;
  /** NO_PROXY rules: hubs they match are never dialled through the proxy. */
  noProxy?: string;
  /** Time for TLS (and the WebSocket upgrade) once connected, and for a proxy's CONNECT answer. */
  handshakeTimeoutMs: number;
}

/** A dial that did not produce a tunnel connection, and whether the hub (or path) was reached at all. */
export class DialError extends Error {
  constructor(
    message: string,
    readonly failure: DialFailure,
    /** The TLS or socket error code behind it, which names a failed certificate check. */
    readonly code?: string,
  ) {
    super(message);
    this.name = 'DialError';
  }
}

export interface Connecting {
  /** Destroying it abandons the attempt. */
  socket: net.Socket;
  /** Resolves once the socket carries bytes to the hub; rejects with a DialError. */
  connected: Promise<void>;
}

/**
 * Opens connections to hubs over each transport and brings them to a
 * mutually authenticated byte stream the tunnel protocol runs on. The tunnel
 * pool decides what to dial and when; this knows only how.
 */
export class TunnelDialer {
  constructor(private options: TunnelDialerOptions) {}

  /** Certificate, key, hub CA and server name for connections from now on. */
  useTls(material: TunnelDialerOptions['tls'], serverName: string | undefined): void {
    this.options = { ...this.options, tls: material, serverName };
  }

  /** Those of `wanted` that can reach this hub: the proxy only when there is one and NO_PROXY does not exclude the hub. */
  transportsFor(hub: HubAddress, wanted: readonly TunnelTransport[]): TunnelTransport[] {
    const proxyUsable = this.options.proxy !== null && !bypassesProxy(hub.host, hub.port, this.options.noProxy);
    return wanted.filter((transport) => transport !== 'proxy' || proxyUsable);
  }

  /** The TCP connection the transport runs on: to the hub itself, or a CONNECT tunnel through the proxy. */
  connect(hub: HubAddress, transport: TunnelTransport): Connecting {
    const proxy = transport === 'proxy' ? this.options.proxy : null;
    const socket = net.connect({ host: proxy?.host ?? hub.host, port: proxy?.port ?? hub.port, noDelay: true });
    const connected = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => socket.destroy(new Error(`no TCP connection within ${TCP_CONNECT_TIMEOUT_MS} ms`)), TCP_CONNECT_TIMEOUT_MS);
      const onError = (err: Error): void => {
        clearTimeout(timer);
        reject(new DialError(proxy !== null ? `proxy ${proxy.host}:${proxy.port}: ${err.message}` : err.message, 'unreachable'));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        if (proxy === null) {
          resolve();
          return;
        }
        const answerTimer = setTimeout(() => socket.destroy(), this.options.handshakeTimeoutMs);
        proxyConnect(socket, proxy, hub).then(
          () => {
            clearTimeout(answerTimer);
            resolve();
          },
          (err: ProxyConnectError) => {
            clearTimeout(answerTimer);
            // The proxy answering 502 is the hub being out of reach from there: probe, do not back off.
            reject(new DialError(`proxy ${proxy.host}:${proxy.port}: ${err.message}`, err.hubUnreachable ? 'unreachable' : 'refused'));
          },
        );
      });
    });
    return { socket, connected };
  }

  /** Mutual TLS on a connected socket, and for WebSocket transports the upgrade: the tunnel's byte stream. */
  secure(tcp: net.Socket, hub: HubAddress, transport: TunnelTransport): Promise<Duplex> {
    // Failures of the wrapped socket reach us through the TLS socket; this only keeps them from being uncaught.
    tcp.on('error', () => {});
    const secureOptions = (alpn: string): tls.ConnectionOptions => ({
      socket: tcp,
      ca: this.options.tls.ca,
      cert: this.options.tls.cert,
      key: this.options.tls.key,
      servername: this.options.serverName ?? (net.isIP(hub.host) === 0 ? hub.host : undefined),
      minVersion: 'TLSv1.3',
      ALPNProtocols: [alpn],
    });
    const timeoutMs = this.options.handshakeTimeoutMs;
    if (transport === 'tls') {
      return new Promise((resolve, reject) => {
        const socket = tls.connect(secureOptions(ALPN_TUNNEL));
        const timer = setTimeout(() => socket.destroy(new Error(`TLS handshake not done within ${timeoutMs} ms`)), timeoutMs);
        const onError = (err: NodeJS.ErrnoException): void => {
          clearTimeout(timer);
          reject(new DialError(`TLS: ${err.message}`, 'refused', err.code));
        };
        socket.once('error', onError);
        socket.once('close', () => onError(new Error('connection closed during the handshake')));
        socket.once('secureConnect', () => {
          clearTimeout(timer);
          socket.removeAllListeners('error');
          socket.removeAllListeners('close');
          resolve(socket);
        });
      });
    }
    return new Promise((resolve, reject) => {
      let tlsSocket: tls.TLSSocket | null = null;
      const authority = hub.host.includes(':') ? `[${hub.host}]:${hub.port}` : `${hub.host}:${hub.port}`;
      const ws = new WebSocket(`wss://${authority}${this.options.webSocketPath}`, {
        createConnection: () => {
          tlsSocket = tls.connect(secureOptions(ALPN_HTTP));
          return tlsSocket;
        },
        perMessageDeflate: false,
        maxPayload: wsMaxPayload(this.options.maxFramePayload),
      });
      const timer = setTimeout(() => fail(`WebSocket handshake not done within ${timeoutMs} ms`), timeoutMs);
      const fail = (reason: string, code?: string): void => {
        clearTimeout(timer);
        ws.removeAllListeners();
        ws.on('error', () => {});
        ws.terminate();
        (tlsSocket as tls.TLSSocket | null)?.destroy();
        reject(new DialError(`WebSocket: ${reason}`, 'refused', code));
      };
      ws.once('unexpected-response', (_request, response) => fail(`hub answered the upgrade with HTTP ${response.statusCode}`));
      ws.once('error', (err: NodeJS.ErrnoException) => fail(err.message, err.code));
      ws.once('close', () => fail('connection closed during the handshake'));
      ws.once('open', () => {
        clearTimeout(timer);
        ws.removeAllListeners();
        resolve(new WebSocketDuplex(ws));
      });
    });
  }
}
