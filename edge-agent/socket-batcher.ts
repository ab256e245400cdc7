import type { Socket } from 'node:net';

/**
 * Gathers writes to device sockets made during one turn of the event loop:
 * a socket is corked at its first write and uncorked once, so a burst of
 * packets for one device leaves as one writev instead of one syscall each.
 */
export class SocketBatcher {
  private readonly corked = new Set<Socket>();
  private flushScheduled = false;

  write(socket: Socket, bytes: Buffer): boolean {
    if (!this.corked.has(socket)) {
      socket.cork();
      this.corked.add(socket);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    }
    return socket.write(bytes);
  }

  flush(): void {
    this.flushScheduled = false;
    for (const socket of this.corked) socket.uncork();
    this.corked.clear();
  }
}
