import { Duplex } from 'node:stream';

/**
 * Two connected in-memory Duplex ends, like a socket pair: bytes written to
 * one are read from the other, end() reaches the peer as end of stream, and
 * destroy() as a connection that went away. A write completes only once the
 * peer has room for it, so backpressure works as on a socket.
 */
export function duplexPair(): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  const waitingWrite: ((() => void) | null)[] = [null, null];
  const peerEnded = [false, false];
  const endPeer = (side: number): void => {
    const peer = 1 - side;
    if (peerEnded[peer] || ends[peer].destroyed) return;
    peerEnded[peer] = true;
    ends[peer].push(null);
  };
  for (const side of [0, 1]) {
    const peer = 1 - side;
    ends.push(
      new Duplex({
        allowHalfOpen: false,
        read() {
          // The peer's write waiting for room here may complete now.
          const resume = waitingWrite[peer];
          waitingWrite[peer] = null;
          resume?.();
        },
        write(chunk: Buffer, _encoding, callback) {
          if (peerEnded[peer] || ends[peer].destroyed) {
            callback();
            return;
          }
          if (ends[peer].push(chunk)) callback();
          else waitingWrite[side] = () => callback();
        },
        final(callback) {
          endPeer(side);
          callback();
        },
        destroy(err, callback) {
          endPeer(side);
          const resume = waitingWrite[peer];
          waitingWrite[peer] = null;
          resume?.();
          callback(err);
        },
      }),
    );
  }
  return [ends[0], ends[1]];
}
