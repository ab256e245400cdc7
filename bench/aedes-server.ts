/**
 * The baseline broker: aedes alone in its own process, configured like the
 * hub's embedded one, on plain TCP and optionally behind a node:tls server
 * (mutual TLS 1.3, like the tunnel) for the WAN-cost comparison.
 */
import net, { type AddressInfo } from 'node:net';
import tls from 'node:tls';
import { Aedes } from 'aedes';
import { serveRpc } from './rpc.js';

/**
 * The options of cloud-hub/embedded-broker.ts, so the only difference is the
 * chain in front: client ids up to 256 characters, and `concurrency: 0`
 * (aedes' default of 100 queues the rest in mqemitter, which drains its
 * queue recursively: see repro-aedes-stack-overflow.ts).
 */
const MAX_CLIENT_ID_LENGTH = 256;
const CONCURRENCY = Number(process.env.BENCH_AEDES_CONCURRENCY ?? 0);

export interface AedesListenParams {
  host: string;
  tls?: { ca: string; cert: string; key: string };
}

export interface AedesListening {
  port: number;
  tlsPort: number | null;
}

export interface AedesStats {
  clients: number;
  pings: number;
}

const broker = await Aedes.createBroker({ maxClientsIdLength: MAX_CLIENT_ID_LENGTH, concurrency: CONCURRENCY });
let pings = 0;
broker.on('ping', () => {
  pings++;
});

function listen(server: net.Server, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve((server.address() as AddressInfo).port));
  });
}

serveRpc({
  async listen(params: AedesListenParams): Promise<AedesListening> {
    const plain = net.createServer({ noDelay: true }, (socket) => broker.handle(socket));
    const port = await listen(plain, params.host);
    let tlsPort: number | null = null;
    if (params.tls !== undefined) {
      const secure = tls.createServer(
        { ...params.tls, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' },
        (socket) => {
          socket.setNoDelay(true);
          broker.handle(socket);
        },
      );
      tlsPort = await listen(secure, params.host);
    }
    return { port, tlsPort };
  },
  stats(): AedesStats {
    return { clients: broker.connectedClients, pings };
  },
});
