import net from 'node:net';

/**
 * The ALPN protocols a TLS ClientHello offers, null while more bytes are
 * needed, [] when it offers none. Reads the record and handshake headers, the
 * fixed fields and the extensions (RFC 8446 §4.1.2, RFC 7301 §3.1).
 */
export function clientHelloAlpn(bytes: Buffer): string[] | null {
  if (bytes.length < 5) return null;
  if (bytes[0] !== 0x16) return [];
  const recordEnd = 5 + bytes.readUInt16BE(3);
  if (bytes.length < recordEnd) return null;
  let at = 5 + 4 + 2 + 32; // handshake header, legacy_version, random
  at += 1 + bytes[at]; // session id
  at += 2 + bytes.readUInt16BE(at); // cipher suites
  at += 1 + bytes[at]; // compression methods
  if (at + 2 > recordEnd) return [];
  const extensionsEnd = at + 2 + bytes.readUInt16BE(at);
  at += 2;
  while (at + 4 <= extensionsEnd) {
    const type = bytes.readUInt16BE(at);
    const length = bytes.readUInt16BE(at + 2);
    if (type === 16) {
      const names: string[] = [];
      let name = at + 6;
      while (name < at + 4 + length) {
        names.push(bytes.subarray(name + 1, name + 1 + bytes[name]).toString('latin1'));
        name += 1 + bytes[name];
      }
      return names;
    }
    at += 4 + length;
  }
  return [];
}

/**
 * A TCP relay in front of the hub that behaves like a firewall letting only
 * HTTPS out: it reads each ClientHello and passes the connection on only when
 * it offers HTTP/1.1 by ALPN, resetting the others. `open` lets everything through.
 */
export class AlpnFilterRelay {
  /** Connections reset for not offering HTTP. */
  blocked = 0;
  passed = 0;
  open = false;
  private readonly sockets = new Set<net.Socket>();
  private server!: net.Server;

  static async start(hubPort: number): Promise<AlpnFilterRelay> {
    const relay = new AlpnFilterRelay();
    relay.server = net.createServer((agent) => relay.relay(agent, hubPort));
    await new Promise<void>((resolve) => relay.server.listen(0, '127.0.0.1', () => resolve()));
    return relay;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** Cuts every relayed connection: the tunnels on them die. */
  breakAll(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private relay(agent: net.Socket, hubPort: number): void {
    this.track(agent);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      const alpn = clientHelloAlpn(head);
      if (alpn === null) return;
      agent.off('data', onData);
      if (!this.open && !alpn.includes('http/1.1')) {
        this.blocked++;
        agent.resetAndDestroy();
        return;
      }
      this.passed++;
      agent.pause();
      const hub = this.track(net.connect(hubPort, '127.0.0.1'));
      hub.write(head);
      agent.pipe(hub).pipe(agent);
      agent.resume();
      agent.on('close', () => hub.destroy());
      hub.on('close', () => agent.destroy());
    };
    agent.on('data', onData);
  }

  private track(socket: net.Socket): net.Socket {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    return socket;
  }
}
