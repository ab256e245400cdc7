import http from 'node:http';
import type tls from 'node:tls';
import { WebSocketServer } from 'ws';
import type { Logger } from '../shared/logger.js';
import { WebSocketDuplex, wsMaxPayload } from '../shared/transports/ws-duplex.js';

export interface WsTunnelListenerOptions {
  path: string;
  maxFramePayload: number;
  /** Time a connection has, after its TLS handshake, to complete the WebSocket upgrade. */
  upgradeTimeoutMs: number;
  /** A connection was closed for not completing its upgrade in time. */
  onUpgradeTimeout: () => void;
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

  constructor(private readonly options: WsTunnelListenerOptions) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: wsMaxPayload(options.maxFramePayload), perMessageDeflate: false });
    this.http = http.createServer((request, response) => {
      // Anything but an upgrade on the tunnel path is not for us; a certificate holder gets told so, once.
      response.writeHead(request.url === options.path ? 426 : 404, { Connection: 'close', Upgrade: 'websocket' }).end();
    });
    this.http.on('upgrade', (request: http.IncomingMessage, socket: tls.TLSSocket, head: Buffer) => {
      const path = (request.url ?? '').split('?')[0];
      if (path !== options.path) {
        options.log.warn({ remote: socket.remoteAddress, path, reason: 'unknown WebSocket path' }, 'tunnel refused');
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      this.wss.handleUpgrade(request, socket, head, (ws) => {
        this.stopUpgradeTimer(socket);
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
      this.options.onUpgradeTimeout();
      this.options.log.warn({ remote: socket.remoteAddress, reason: `no WebSocket upgrade within ${this.options.upgradeTimeoutMs} ms` }, 'tunnel refused');
      socket.destroy();
    }, this.options.upgradeTimeoutMs);
    this.awaitingUpgrade.set(socket, timer);
    socket.once('close', () => this.stopUpgradeTimer(socket));
    this.http.emit('connection', socket);
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
