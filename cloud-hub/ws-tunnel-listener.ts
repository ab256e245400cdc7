import http from 'node:http';
import type tls from 'node:tls';
import { type WebSocket, WebSocketServer } from 'ws';
import type { Logger } from '../shared/logger.js';
import { WebSocketDuplex, wsMaxPayload } from '../shared/transports/ws-duplex.js';

export interface WsTunnelListenerOptions {
  path: string;
  maxFramePayload: number;
  /** Time a connection has, after its TLS handshake, to complete the WebSocket upgrade. */
  upgradeTimeoutMs: number;
  /** A connection was closed for not completing its upgrade in time. */
  onUpgradeTimeout: () => void;
  /** A connection was refused for asking to upgrade on another path. */
  onUnknownPath: () => void;
  log: Logger;
  /** Takes the upgraded connection, its TLS socket holding the peer's certificate. */
  accept: (duplex: WebSocketDuplex, tlsSocket: tls.TLSSocket) => void;
}

/**
 * WebSocket tunnels on TLS connections that the tunnel port has already
 * authenticated (mutual TLS) and that chose HTTP by ALPN. There is no
 * listening socket of its own: the hub hands each such connection over.
 */
export class WsTunnelListener {
  private readonly http: http.Server;
  private readonly wss: WebSocketServer;
  /** Connections handed over and not yet upgraded, with the timer that closes them. */
  private readonly awaitingUpgrade = new Map<tls.TLSSocket, NodeJS.Timeout>();
  private readonly upgraded = new WeakMap<tls.TLSSocket, WebSocket>();
  /** Connections to refuse: the GOODBYE each gets as its WebSocket's one message. */
  private readonly refusals = new WeakMap<tls.TLSSocket, Buffer>();

  constructor(private readonly options: WsTunnelListenerOptions) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: wsMaxPayload(options.maxFramePayload), perMessageDeflate: false });
    this.http = http.createServer((request, response) => {
      // Anything but an upgrade on the tunnel path is not for us; a certificate holder gets told so, once.
      response.writeHead(request.url === options.path ? 426 : 404, { Connection: 'close', Upgrade: 'websocket' }).end();
    });
    this.http.on('upgrade', (request: http.IncomingMessage, socket: tls.TLSSocket, head: Buffer) => {
      const path = (request.url ?? '').split('?')[0];
      if (path !== options.path) {
        options.onUnknownPath();
        options.log.warn({ remote: socket.remoteAddress, path, reason: 'unknown WebSocket path' }, 'tunnel refused');
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      this.wss.handleUpgrade(request, socket, head, (ws) => {
        this.stopUpgradeTimer(socket);
        const refusal = this.refusals.get(socket);
        if (refusal !== undefined) {
          sendAndClose(ws, refusal);
          return;
        }
        this.upgraded.set(socket, ws);
        options.accept(new WebSocketDuplex(ws), socket);
      });
    });
    this.http.on('clientError', (err, socket) => {
      options.log.debug({ reason: err.message }, 'WebSocket tunnel request refused');
      socket.destroy();
    });
  }

  /** Serves HTTP (the WebSocket upgrade) on a connection whose TLS handshake chose it. */
  handle(socket: tls.TLSSocket): void {
    // http.Server enforces its own request timeouts only once it listens, which this one never does.
    const timer = setTimeout(() => {
      this.awaitingUpgrade.delete(socket);
      // A refused connection was counted and logged when it was refused.
      if (!this.refusals.has(socket)) {
        this.options.onUpgradeTimeout();
        this.options.log.warn({ remote: socket.remoteAddress, reason: `no WebSocket upgrade within ${this.options.upgradeTimeoutMs} ms` }, 'tunnel refused');
      }
      socket.destroy();
    }, this.options.upgradeTimeoutMs);
    this.awaitingUpgrade.set(socket, timer);
    socket.once('close', () => this.stopUpgradeTimer(socket));
    this.http.emit('connection', socket);
  }

  /**
   * Refuses a connection that chose WebSocket with `goodbye`, a GOODBYE frame:
   * sent as the one message of the WebSocket (upgraded for it if need be),
   * which then closes. The agent reads it as it would on a raw tunnel; written
   * on the TLS socket, it would see only a broken HTTP response.
   */
  refuse(socket: tls.TLSSocket, goodbye: Buffer): void {
    const ws = this.upgraded.get(socket);
    if (ws !== undefined) {
      sendAndClose(ws, goodbye);
      return;
    }
    this.refusals.set(socket, goodbye);
    if (!this.awaitingUpgrade.has(socket)) this.handle(socket);
  }

  close(): void {
    for (const [socket, timer] of this.awaitingUpgrade) {
      clearTimeout(timer);
      socket.destroy();
    }
    this.awaitingUpgrade.clear();
    this.wss.close();
    this.http.close();
  }

  private stopUpgradeTimer(socket: tls.TLSSocket): void {
    const timer = this.awaitingUpgrade.get(socket);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.awaitingUpgrade.delete(socket);
  }
}

function sendAndClose(ws: WebSocket, message: Buffer): void {
  if (ws.readyState !== ws.OPEN) return;
  ws.send(message, { binary: true, compress: false });
  // 1008, policy violation: RFC 6455 section 7.4.1's code for a peer refused by the endpoint's policy.
  ws.close(1008);
}
