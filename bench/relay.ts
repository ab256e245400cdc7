/**
 * A TCP relay that counts the bytes it carries each way: put between two
 * parties it measures what crosses the WAN (TCP payload bytes: TLS records
 * included, TCP/IP headers not).
 */
import net, { type AddressInfo } from 'node:net';
import { serveRpc } from './rpc.js';

export interface RelayParams {
  host: string;
  targetHost: string;
  targetPort: number;
}

export interface RelayCounters {
  /** Bytes from the connecting side (device or agent) to the target (broker or hub). */
  up: number;
  down: number;
  connections: number;
  open: number;
}

const counters: RelayCounters = { up: 0, down: 0, connections: 0, open: 0 };

function relay(client: net.Socket, target: { host: string; port: number }): void {
  counters.connections++;
  counters.open++;
  client.setNoDelay(true);
  const server = net.connect({ host: target.host, port: target.port, noDelay: true });
  client.on('data', (chunk: Buffer) => {
    counters.up += chunk.length;
    if (!server.write(chunk)) client.pause();
  });
  server.on('data', (chunk: Buffer) => {
    counters.down += chunk.length;
    if (!client.write(chunk)) server.pause();
  });
  server.on('drain', () => client.resume());
  client.on('drain', () => server.resume());
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    counters.open--;
    client.destroy();
    server.destroy();
  };
  for (const s of [client, server]) {
    s.on('error', close);
    s.on('close', close);
    s.on('end', () => (s === client ? server : client).end());
  }
}

serveRpc({
  listen(params: RelayParams): Promise<number> {
    const server = net.createServer((socket) => relay(socket, { host: params.targetHost, port: params.targetPort }));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, params.host, () => resolve((server.address() as AddressInfo).port));
    });
  },
  counters(): RelayCounters {
    return { ...counters };
  },
});
