/**
 * Plain TCP in, mutual TLS 1.3 out, one TLS connection per incoming
 * connection: lets firmware-sim devices (plain MQTT) stand in for devices
 * that speak MQTT over TLS straight to a cloud broker. The TLS bytes are
 * what a relay placed after this process counts.
 */
import net, { type AddressInfo } from 'node:net';
import tls from 'node:tls';
import { serveRpc } from './rpc.js';

export interface TlsWrapParams {
  host: string;
  targetHost: string;
  targetPort: number;
  ca: string;
  cert: string;
  key: string;
}

let open = 0;

function wrap(plain: net.Socket, params: TlsWrapParams): void {
  open++;
  plain.setNoDelay(true);
  const secure = tls.connect({
    host: params.targetHost,
    port: params.targetPort,
    ca: params.ca,
    cert: params.cert,
    key: params.key,
    minVersion: 'TLSv1.3',
  });
  secure.setNoDelay(true);
  plain.pipe(secure);
  secure.pipe(plain);
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    open--;
    plain.destroy();
    secure.destroy();
  };
  for (const s of [plain, secure]) {
    s.on('error', close);
    s.on('close', close);
  }
}

serveRpc({
  listen(params: TlsWrapParams): Promise<number> {
    const server = net.createServer((socket) => wrap(socket, params));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, params.host, () => resolve((server.address() as AddressInfo).port));
    });
  },
  open(): number {
    return open;
  },
});
