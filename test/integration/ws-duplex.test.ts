import { createHash } from 'node:crypto';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type tls from 'node:tls';
import { type ClientOptions, WebSocket, WebSocketServer } from 'ws';
import { WebSocketDuplex, WS_MESSAGE_BYTES } from '../../shared/transports/ws-duplex.js';
import { eventually, removePki, testPki } from '../support/chain.js';

/** A WebSocket over real TLS on loopback, both ends wrapped as the tunnel wraps them. */
async function pair(): Promise<{ sender: WebSocketDuplex; receiver: WebSocketDuplex; close: () => Promise<void> }> {
  const { pki } = await testPki();
  const server = https.createServer({ cert: pki.hub.cert, key: pki.hub.key });
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<WebSocketDuplex>((resolve) => wss.once('connection', (ws) => resolve(new WebSocketDuplex(ws))));
  const options: ClientOptions & tls.ConnectionOptions = { ca: pki.ca, perMessageDeflate: false };
  const client = new WebSocket(`wss://127.0.0.1:${(server.address() as AddressInfo).port}/`, options);
  await new Promise<void>((resolve, reject) => client.once('open', () => resolve()).once('error', reject));
  const sender = new WebSocketDuplex(client);
  const receiver = await accepted;
  return {
    sender,
    receiver,
    close: async () => {
      sender.destroy();
      receiver.destroy();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('the WebSocket duplex under a tunnel', () => {
  let close: (() => Promise<void>) | null = null;
  afterEach(async () => {
    await close?.();
    close = null;
  });
  afterAll(removePki);

  it('reports what the socket under it holds while the peer does not read, and drains once it does', async () => {
    const link = await pair();
    close = link.close;
    link.receiver.pause();
    const ws = (link.receiver as unknown as { ws: WebSocket }).ws;
    // Stop reading at the TCP level too, so the kernel buffers fill and the sender's TLS socket holds the rest.
    (ws as unknown as { _socket: import('node:net').Socket })._socket.pause();

    const sent = createHash('sha256');
    const chunk = Buffer.alloc(48 * 1024);
    let accepted = true;
    let written = 0;
    for (let i = 0; i < 320; i++) {
      chunk.fill(i % 251);
      sent.update(chunk);
      accepted = link.sender.write(Buffer.from(chunk)) && accepted;
      written += chunk.length;
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(accepted).toBe(false);
    // 15 MiB written; the kernel takes a few MiB on loopback, the rest is counted, wherever it waits.
    expect(link.sender.writableLength).toBeGreaterThan(4 * 1024 * 1024);
    expect(link.sender.writableLength).toBeLessThanOrEqual(written + (written / WS_MESSAGE_BYTES + 1) * 14);

    const drained = new Promise<void>((resolve) => link.sender.once('drain', () => resolve()));
    const received = createHash('sha256');
    let receivedBytes = 0;
    link.receiver.on('data', (data: Buffer) => {
      received.update(data);
      receivedBytes += data.length;
    });
    link.receiver.resume();
    (ws as unknown as { _socket: import('node:net').Socket })._socket.resume();
    await drained;
    await eventually(() => receivedBytes === written, 10_000, 'every byte to arrive');
    expect(link.sender.writableLength).toBe(0);
    expect(received.digest('hex')).toBe(sent.digest('hex'));
  });

  it('ends with a close the peer reads after the last message', async () => {
    const link = await pair();
    close = link.close;
    const chunks: Buffer[] = [];
    link.receiver.on('data', (data: Buffer) => chunks.push(data));
    const ended = new Promise<void>((resolve) => link.receiver.once('close', () => resolve()));
    link.sender.write(Buffer.from('last words'));
    link.sender.end();
    await ended;
    expect(Buffer.concat(chunks).toString()).toBe('last words');
  });
});
