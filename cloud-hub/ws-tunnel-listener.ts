import http from 'node:http';
import type tls from 'node:tls';
import { WebSocketServer } from 'ws';
import type { Logger } from '../shared/logger.js';
import { WebSocketDuplex, wsMaxPayload } from '../shared/transports/ws-duplex.js';


export interface WsTunnelListenerOptions {
  path: string;
  maxFramePayload: number;
  /** Time an authenticated connection has to send its upgrade request. */
  requestTimeoutMs: number;
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

  constructor(private readonly options: WsTunnelListenerOptions) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: wsMaxPayload(options.maxFramePayload), perMessageDeflate: false });
    this.http = http.createServer((request, response) => {
      // Anything but an upgrade on the tunnel path is not for us; a certificate holder gets told so, once.
      response.writeHead(request.url === options.path ? 426 : 404, { Connection: 'close', Upgrade: 'websocket' }).end();
    });
    this.http.headersTimeout = options.requestTimeoutMs;
    this.http.requestTimeout = options.requestTimeoutMs;
    this.http.on('upgrade', (request: http.IncomingMessage, socket: tls.TLSSocket, head: Buffer) => {
      const path = (request.url ?? '').split('?')[0];
      if (path !== options.path) {
        options.log.warn({ remote: socket.remoteAddress, path, reason: 'unknown WebSocket path' }, 'tunnel refused');
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      this.wss.handleUpgrade(request, socket, head, (ws) => options.accept(new WebSocketDuplex(ws), socket));
    });
    this.http.on('clientError', (err, socket) => {
      options.log.debug({ reason: err.message }, 'WebSocket tunnel request refused');
      socket.destroy();
    });
  }

  /** Serves HTTP (the WebSocket upgrade) on a connection whose TLS handshake chose it. */
  handle(socket: tls.TLSSocket): void {
    this.http.emit('connection', socket);
  }

  close(): void {
    this.wss.close();
    this.http.close();
  }
}
