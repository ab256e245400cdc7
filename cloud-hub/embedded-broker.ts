import net from 'node:net';
import { Aedes } from 'aedes';
import { SocketBatcher } from '../shared/socket-batcher.js';
import type { SqlitePersistence } from './sqlite-persistence.js';

export interface EmbeddedBroker {
  broker: Aedes;
  /** Plain MQTT listener for cloud applications. */
  appServer: net.Server;
  close(): Promise<void>;
}

/** Client IDs longer than aedes' default of 23 are common in fleets (MQTT 3.1.1 §3.1.3.1 allows it). */
const MAX_CLIENT_ID_LENGTH = 256;

export async function startEmbeddedBroker(options: {
  appHost: string;
  appPort: number;
  /** Durable sessions, retained messages and offline queues; in memory when absent. */
  persistence?: SqlitePersistence;
}): Promise<EmbeddedBroker> {
  const broker = await Aedes.createBroker({
    maxClientsIdLength: MAX_CLIENT_ID_LENGTH,
    // aedes' default of 100 messages in flight queues the rest in mqemitter,
    // which drains its queue recursively (and with Array.shift): under a
    // sustained load it spent a third of the hub's CPU there and overflowed
    // the stack. Each publisher still waits for its own publish to complete
    // before aedes reads its next packet, so in-flight work stays bounded by
    // the number of sessions.
    concurrency: 0,
    ...(options.persistence !== undefined ? { persistence: options.persistence } : {}),
  });
  // aedes writes every delivery with its own writev: a cloud application
  // subscribed to a fleet would cost the hub one syscall per message.
  const appWrites = new SocketBatcher();
  // server.close() waits for every open connection: the hub keeps them so a
  // stop does not last as long as the longest-connected application.
  const appSockets = new Set<net.Socket>();
  const appServer = net.createServer((socket) => {
    appSockets.add(socket);
    socket.once('close', () => appSockets.delete(socket));
    appWrites.gather(socket);
    broker.handle(socket);
  });
  await new Promise<void>((resolve, reject) => {
    appServer.once('error', reject);
    appServer.listen(options.appPort, options.appHost, () => {
      appServer.off('error', reject);
      resolve();
    });
  });
  return {
    broker,
    appServer,
    close: async () => {
      const listenerClosed = new Promise<void>((resolve) => appServer.close(() => resolve()));
      // aedes closes the connections of the clients it knows, publishing their
      // wills and saving their sessions before the persistence is closed.
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      // Left: connections that never completed a CONNECT.
      for (const socket of appSockets) socket.destroy();
      await listenerClosed;
      options.persistence?.close();
    },
  };
}
