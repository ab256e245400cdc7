import net, { type AddressInfo } from 'node:net';

interface ProxiedConnection {
  client: net.Socket;
  upstream: net.Socket;
  /** Half-open: still connected, but nothing is forwarded either way. */
  frozen: boolean;
}

/**
 * A TCP relay between agent and hub that can break the connections through
 * it: destroy them (the peers see a close) or freeze them (the peers see
 * silence and must find out by heartbeat). Loopback only.
 */
export class ChaosProxy {
  readonly connections = new Set<ProxiedConnection>();
  kills = 0;
  freezes = 0;
  private readonly server: net.Server;

  private constructor(
    private readonly target: { host: string; port: number },
    private readonly random: () => number,
  ) {
    this.server = net.createServer((client) => this.relay(client));
  }

  static async start(target: { host: string; port: number }, random: () => number = Math.random): Promise<ChaosProxy> {
    const proxy = new ChaosProxy(target, random);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Breaks one live connection at random; half of the time it freezes it instead of closing it. */
  breakOne(halfOpenShare = 0.5): 'killed' | 'frozen' | null {
    const live = [...this.connections].filter((connection) => !connection.frozen);
    if (live.length === 0) return null;
    const victim = live[Math.floor(this.random() * live.length)];
    if (this.random() < halfOpenShare) {
      victim.frozen = true;
      victim.client.pause();
      victim.upstream.pause();
      this.freezes++;
      return 'frozen';
    }
    this.destroy(victim);
    this.kills++;
    return 'killed';
  }

  async close(): Promise<void> {
    for (const connection of this.connections) this.destroy(connection);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private relay(client: net.Socket): void {
    const upstream = net.connect(this.target.port, this.target.host);
    const connection: ProxiedConnection = { client, upstream, frozen: false };
    this.connections.add(connection);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const forward = (from: net.Socket, to: net.Socket): void => {
      from.on('data', (chunk: Buffer) => {
        if (connection.frozen) return;
        if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => {
            if (!connection.frozen) from.resume();
          });
        }
      });
    };
    forward(client, upstream);
    forward(upstream, client);
    for (const socket of [client, upstream]) {
      socket.on('error', () => {});
      socket.on('close', () => {
        // A frozen link is a partition: one side giving up must not tell the
        // other, which has to notice the silence by itself.
        if (!connection.frozen) this.destroy(connection);
        else if (client.destroyed && upstream.destroyed) this.connections.delete(connection);
      });
    }
  }

  private destroy(connection: ProxiedConnection): void {
    if (!this.connections.delete(connection)) return;
    connection.client.destroy();
    connection.upstream.destroy();
  }
}
