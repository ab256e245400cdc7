import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * Gathers writes to sockets made during one turn of the event loop: a socket
 * is corked at its first write and uncorked once, so a burst of packets for
 * one peer leaves as one writev instead of one syscall each.
 */
export class SocketBatcher {
  private readonly corked = new Set<Duplex>();
  private flushScheduled = false;

  write(socket: Duplex, bytes: Buffer): boolean {
    this.holdForTurn(socket);
    return socket.write(bytes);
  }

  /**
   * Routes every later `socket.write`, whoever calls it, through the batch.
   * For sockets handed to code that writes packet by packet on its own (aedes
   * uncorks after every packet), so its writes can only be gathered from here.
   */
  gather(socket: Socket): void {
    const ownWrite = socket.write;
    const batcher = this;
    socket.write = function gatheredWrite(this: Socket, ...args: unknown[]): boolean {
      batcher.holdForTurn(this);
      return (ownWrite as (...a: unknown[]) => boolean).apply(this, args);
    } as Socket['write'];
  }

  flush(): void {
    this.flushScheduled = false;
    for (const socket of this.corked) socket.uncork();
    this.corked.clear();
  }

  private holdForTurn(socket: Duplex): void {
    if (this.corked.has(socket)) return;
    socket.cork();
    this.corked.add(socket);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }
}
