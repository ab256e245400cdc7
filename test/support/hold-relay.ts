import net from 'node:net';

export interface RelayedConnection {
  agent: net.Socket;
  hub: net.Socket;
  /** Hub → agent bytes are held back while set. */
  holdDown: boolean;
  /** Agent → hub bytes are held back while set; a closing agent side then does not reach the hub. */
  holdUp: boolean;
  heldDown: Buffer[];
  heldUp: Buffer[];
  agentGone: boolean;
  /** The hub's leg was cut by `sever`: the agent's leg stays open and hears nothing more. */
  severed: boolean;
}

/**
 * A TCP relay between agent and hub whose directions can be held back and
 * released later: a slow or stalled WAN path, for resume races.
 */
export class HoldRelay {
  readonly connections: RelayedConnection[] = [];
  private server!: net.Server;
  port = 0;

  static async start(hubPort: number): Promise<HoldRelay> {
    const relay = new HoldRelay();
    relay.server = net.createServer((agent) => {
      const hub = net.connect(hubPort, '127.0.0.1');
      const connection: RelayedConnection = { agent, hub, holdDown: false, holdUp: false, heldDown: [], heldUp: [], agentGone: false, severed: false };
      relay.connections.push(connection);
      agent.on('data', (chunk: Buffer) => {
        if (connection.severed) return;
        if (connection.holdUp) connection.heldUp.push(chunk);
        else hub.write(chunk);
      });
      hub.on('data', (chunk: Buffer) => {
        if (connection.holdDown) connection.heldDown.push(chunk);
        else if (!connection.agentGone) agent.write(chunk);
      });
      const agentClosed = (): void => {
        connection.agentGone = true;
        if (!connection.holdUp) hub.destroy();
      };
      agent.on('close', agentClosed);
      agent.on('error', agentClosed);
      hub.on('close', () => connection.severed || agent.destroy());
      hub.on('error', () => connection.severed || agent.destroy());
    });
    await new Promise<void>((resolve) => relay.server.listen(0, '127.0.0.1', () => resolve()));
    relay.port = (relay.server.address() as net.AddressInfo).port;
    return relay;
  }

  /** The relayed connection carrying the agent socket whose local port is `localPort`. */
  byAgentPort(localPort: number | undefined): RelayedConnection {
    const found = this.connections.find((connection) => connection.agent.remotePort === localPort);
    if (found === undefined) throw new Error(`no relayed connection from agent port ${localPort}`);
    return found;
  }

  /**
   * Cuts the path at the hub's end only: the hub sees its tunnel close, the
   * agent sees a silent tunnel it still believes in (until its dead-peer limit).
   */
  sever(connection: RelayedConnection): void {
    connection.severed = true;
    connection.hub.destroy();
  }

  /** Delivers what was held; an agent side that closed meanwhile is then closed at the hub too (FIN after the data). */
  release(connection: RelayedConnection): void {
    connection.holdDown = false;
    connection.holdUp = false;
    for (const chunk of connection.heldDown.splice(0)) if (!connection.agentGone) connection.agent.write(chunk);
    for (const chunk of connection.heldUp.splice(0)) connection.hub.write(chunk);
    if (connection.agentGone) connection.hub.end();
  }

  async close(): Promise<void> {
    for (const connection of this.connections) {
      connection.agent.destroy();
      connection.hub.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
