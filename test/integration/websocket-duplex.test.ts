import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { WebSocketDuplex } from '../../edge-agent/websocket-duplex.js';
import { eventually } from '../support/chain.js';

describe('a WebSocket as a device byte stream', () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0).reverse()) cleanup();
  });

  async function pair(): Promise<{ duplex: WebSocketDuplex; client: WebSocket }> {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    cleanups.push(() => server.close());
    await new Promise((resolve) => server.once('listening', resolve));
    const accepted = new Promise<WebSocketDuplex>((resolve) =>
      server.once('connection', (ws, request) => resolve(new WebSocketDuplex(ws, request.socket.remoteAddress))),
    );
    const client = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`, { perMessageDeflate: false });
    client.on('error', () => {});
    cleanups.push(() => client.terminate());
    const duplex = await accepted;
    duplex.on('error', () => {});
    cleanups.push(() => duplex.destroy());
    return { duplex, client };
  }

  it('stops reading the TCP socket while paused, so a flooding device waits in its own buffer, not in ours', async () => {
    const { duplex, client } = await pair();
    let received = 0;
    duplex.on('data', (chunk: Buffer) => (received += chunk.length));
    duplex.pause();
    await new Promise((resolve) => client.once('open', resolve));

    // 32 MiB: several times what loopback socket buffers take.
    const message = Buffer.alloc(64 * 1024, 7);
    const total = 512 * message.length;
    for (let i = 0; i < 512; i++) client.send(message);
    await eventually(() => duplex.ws.isPaused, 10_000, 'the WebSocket to stop reading its socket');
    // The read buffer's high-water mark, overshot by the message that crossed it.
    expect(duplex.readableLength).toBeLessThanOrEqual(duplex.readableHighWaterMark + message.length);
    expect(received).toBe(0);
    // The rest waits at the device: far more than the kernel buffers in between hold.
    expect(client.bufferedAmount).toBeGreaterThan(16 * 1024 * 1024);

    duplex.resume();
    await eventually(() => received === total, 10_000, 'every byte once resumed');
  });

  it('completes a write only when its socket has taken it, so a device that does not read makes write() return false', async () => {
    const { duplex, client } = await pair();
    client.pause();
    const chunk = Buffer.alloc(64 * 1024, 1);
    let writes = 0;
    while (duplex.write(chunk)) {
      writes++;
      if (writes > 1024) throw new Error('64 MiB accepted by a device that reads nothing');
      if (writes % 16 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    const drained = new Promise((resolve) => duplex.once('drain', resolve));
    let delivered = 0;
    client.on('message', (data: Buffer) => (delivered += data.length));
    client.resume();
    await drained;
    await eventually(() => delivered === (writes + 1) * chunk.length, 10_000, 'everything written to arrive');
  });
});
