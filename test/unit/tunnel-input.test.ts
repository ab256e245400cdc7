import { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeFrame, FrameType } from '../../shared/frame-codec.js';
import { quietLogger } from '../../shared/logger.js';
import { Tunnel } from '../../shared/tunnel.js';

const tunnels: Tunnel[] = [];

function tunnel(): { tunnel: Tunnel; socket: Duplex } {
  const socket = new Duplex({ read() {}, write: (_chunk, _encoding, done) => done() });
  const created = new Tunnel(socket, { maxFramePayload: 1024, heartbeatMs: 60_000, deadAfterMs: 120_000, highWaterBytes: 1 << 20, log: quietLogger('test') });
  tunnels.push(created);
  return { tunnel: created, socket };
}

afterEach(() => {
  for (const open of tunnels.splice(0)) open.close('shutdown');
});

describe('tunnel input', () => {
  it('closes the tunnel on a malformed frame, as a protocol error', () => {
    const { tunnel: under, socket } = tunnel();
    socket.emit('data', Buffer.from([200, 0, 0, 0, 0, 0, 0, 0, 0]));
    expect(under.closedCode).toBe('protocol-error');
    expect(under.closedReason).toContain('E_FRAME_BAD_TYPE');
  });

  it('does not pass a bug off as bad input: it propagates and the tunnel stays open', () => {
    const { tunnel: under, socket } = tunnel();
    under.routeStreams(() => {
      throw new TypeError('a bug in a stream table');
    });
    const data = encodeFrame({ type: FrameType.DATA, streamId: 1, payload: Buffer.from([0xc0, 0x00]) });
    expect(() => socket.emit('data', data)).toThrow(TypeError);
    expect(under.isOpen).toBe(true);
  });
});
