import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { type EmbeddedBroker, startEmbeddedBroker } from '../../cloud-hub/embedded-broker.js';
import { connectClient, eventually } from '../support/chain.js';

type CountedSocket = Socket & { _write: (...args: unknown[]) => void; _writev?: (...args: unknown[]) => void };

describe('embedded broker app port', () => {
  let embedded: EmbeddedBroker | null = null;
  afterEach(async () => {
    await embedded?.close();
    embedded = null;
  });

  it('gathers a burst of deliveries to one application into a few socket writes', async () => {
    embedded = await startEmbeddedBroker({ appHost: '127.0.0.1', appPort: 0 });
    let socketWrites = 0;
    embedded.appServer.on('connection', (raw: Socket) => {
      // Count what reaches the socket's own write path: one call per write or writev syscall.
      const socket = raw as CountedSocket;
      const write = socket._write.bind(socket);
      socket._write = (...args: unknown[]) => {
        socketWrites++;
        write(...args);
      };
      if (socket._writev !== undefined) {
        const writev = socket._writev.bind(socket);
        socket._writev = (...args: unknown[]) => {
          socketWrites++;
          writev(...args);
        };
      }
    });
    const port = (embedded.appServer.address() as import('node:net').AddressInfo).port;
    const app = await connectClient(port, { clientId: 'burst-watcher' });
    await app.subscribeAsync('burst/#', { qos: 0 });
    const received: number[] = [];
    app.on('message', (_topic, payload) => received.push(payload.readUInt32BE(0)));

    const count = 2000;
    const writesBefore = socketWrites;
    for (let i = 0; i < count; i++) {
      const payload = Buffer.alloc(64);
      payload.writeUInt32BE(i, 0);
      embedded.broker.publish({ cmd: 'publish', topic: `burst/${i % 10}`, payload, qos: 0, retain: false, dup: false }, () => {});
    }
    await eventually(() => received.length === count, 10_000, `all ${count} deliveries (got ${received.length})`);
    expect(received).toEqual(Array.from({ length: count }, (_, i) => i));
    // aedes writes each delivery on its own; one syscall each would be 2000.
    expect(socketWrites - writesBefore).toBeLessThan(count / 20);
    await app.endAsync(true);
  });
});
