import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import type { GoodbyeBody } from '../../shared/frame-codec.js';
import { quietLogger } from '../../shared/logger.js';
import { Tunnel } from '../../shared/tunnel.js';
import { removePki, testPki } from '../support/chain.js';

const options = (name: string) => ({
  maxFramePayload: 1024 * 1024,
  heartbeatMs: 10_000,
  deadAfterMs: 60_000,
  highWaterBytes: 1024 * 1024,
  log: quietLogger(name),
});

/** Two Tunnels over real mutual TLS on loopback. */
async function tunnelPair(): Promise<{ sender: Tunnel; receiver: Tunnel; receiverSocket: tls.TLSSocket; close: () => void }> {
  const { pki } = await testPki();
  const server = tls.createServer({ ca: pki.ca, cert: pki.hub.cert, key: pki.hub.key, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' });
  const accepted = new Promise<tls.TLSSocket>((resolve) => server.once('secureConnection', resolve));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const client = tls.connect({
    host: '127.0.0.1',
    port: (server.address() as AddressInfo).port,
    ca: pki.ca,
    cert: pki.agents['agent-1'].cert,
    key: pki.agents['agent-1'].key,
    minVersion: 'TLSv1.3',
  });
  await new Promise<void>((resolve, reject) => {
    client.once('secureConnect', () => resolve());
    client.once('error', reject);
  });
  const receiverSocket = await accepted;
  return {
    sender: new Tunnel(client, options('sender')),
    receiver: new Tunnel(receiverSocket, options('receiver')),
    receiverSocket,
    close: () => {
      client.destroy();
      receiverSocket.destroy();
      server.close();
    },
  };
}

describe('closing a tunnel', () => {
  afterAll(() => removePki());

  it('delivers the frames still queued behind a backlog, GOODBYE last, before the socket goes', async () => {
    const { sender, receiver, receiverSocket, close } = await tunnelPair();
    try {
      // The peer stops reading, so what follows piles up in the sender's socket.
      receiverSocket.pause();
      const payload = Buffer.alloc(256 * 1024, 7);
      for (let i = 0; i < 64; i++) sender.sendData(1, payload);
      await new Promise((resolve) => setImmediate(resolve));
      expect(sender.socket.writableLength).toBeGreaterThan(0);

      const heard = new Promise<GoodbyeBody>((resolve) => receiver.once('goodbye', resolve));
      const senderDone = sender.goodbye('shutdown', 'stopping for maintenance');
      receiverSocket.resume();
      expect(await heard).toEqual({ code: 'shutdown', reason: 'stopping for maintenance' });
      expect(receiver.traffic.dataFramesIn).toBe(64);
      await senderDone;
      expect(receiver.closedReason).toBe('peer said goodbye (shutdown): stopping for maintenance');
    } finally {
      close();
    }
  });
});
