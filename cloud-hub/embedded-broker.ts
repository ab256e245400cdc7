import net from 'node:net';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import { EdgemuxError } from '../shared/errors.js';
import { type Logger, quietLogger } from '../shared/logger.js';
import { PacketSizeGauge } from '../shared/mqtt-framing.js';
import { SocketBatcher } from '../shared/socket-batcher.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import type { AclFile } from './acl-file.js';
import { AppAccess, AppRefusalCode, anonymousAccess } from './app-access.js';
import { BrokerAcl } from './broker-acl.js';
import type { SqlitePersistence } from './sqlite-persistence.js';
import { DEFAULT_SUBSCRIPTION_LIMITS, type SubscriptionLimitOptions, SubscriptionLimits } from './subscription-limits.js';

export interface EmbeddedBroker {
  broker: Aedes;
  /** Plain MQTT listener for cloud applications. */
  appServer: net.Server;
  persistence: SqlitePersistence | undefined;
  subscriptionLimits: SubscriptionLimits;
  /** Topic access from the ACL file; allows everything without one. */
  acl: BrokerAcl;
  /** Connections the broker ended for a packet it refuses (a wildcard in a PUBLISH topic, QoS 3, an empty SUBSCRIBE...). */
  readonly stats: { clientErrors: number };
  close(): Promise<void>;
}

export async function startEmbeddedBroker(options: {
  appHost: string;
  appPort: number;
  /**
   * Who may connect on the application port. Without it: anonymous clients on
   * loopback, and start-up refused on any other address.
   */
  appAccess?: AppAccess;
  /** Largest packet an application may send, checked at its fixed header. */
  appMaxPacketSize?: number;
  /** Longest client ID; longer IDs than aedes' own default of 23 are common in fleets (MQTT 3.1.1 §3.1.3.1 allows them). */
  maxClientIdLength?: number;
  /** Per client of the broker, devices and applications alike. */
  subscriptionLimits?: SubscriptionLimitOptions;
  /** Who may publish and subscribe to what (Mosquitto's acl_file format); everything when absent. */
  acl?: AclFile | null;
  /** Durable sessions, retained messages and offline queues; in memory when absent. */
  persistence?: SqlitePersistence;
  log?: Logger;
}): Promise<EmbeddedBroker> {
  const log = options.log ?? quietLogger('embedded-broker');
  const access = options.appAccess ?? defaultAccess(options.appHost);
  const maxPacketSize = options.appMaxPacketSize ?? TUNNEL_DEFAULTS.maxFramePayload;
  // Devices reach the broker through BrokerPipes the hub hands over after
  // their agent's mutual TLS and namespace checks; only these sockets are
  // strangers that must prove who they are. The set also lets a stop end
  // them: server.close() would wait for the longest-connected application.
  const appSockets = new Set<net.Socket>();
  const subscriptionLimits = new SubscriptionLimits(options.subscriptionLimits ?? DEFAULT_SUBSCRIPTION_LIMITS, log);
  const acl = new BrokerAcl(options.acl ?? null, log);
  const broker = await Aedes.createBroker({
    maxClientsIdLength: options.maxClientIdLength ?? 256,
    // aedes' default of 100 messages in flight queues the rest in mqemitter,
    // which drains its queue recursively (and with Array.shift): under a
    // sustained load it spent a third of the hub's CPU there and overflowed
    // the stack. Each publisher still waits for its own publish to complete
    // before aedes reads its next packet, so in-flight work stays bounded by
    // the number of sessions.
    concurrency: 0,
    authenticate: (client, username, password, done) => {
      acl.remember(client, username);
      if (!appSockets.has(client.conn as net.Socket)) {
        done(null, true);
        return;
      }
      const refuse = (returnCode: number, reason: string): void => {
        log.info({ clientId: client.id, username, remote: remoteOf(client), reason }, 'application refused');
        done(Object.assign(new Error(reason), { returnCode }) as AuthenticateError, false);
      };
      access.admit(client.id, username, password).then(
        (refusal) => (refusal === null ? done(null, true) : refuse(refusal.returnCode, refusal.reason)),
        (err: unknown) => refuse(AppRefusalCode.SERVER_UNAVAILABLE, `cannot check the client: ${(err as Error).message}`),
      );
    },
    // Both must grant a filter. The ACL goes first so that a filter it refuses
    // does not count against the client's subscription limit.
    authorizeSubscribe: (client, sub, done) => acl.authorizeSubscribe(client, sub, done, () => subscriptionLimits.authorize(client, sub, done)),
    authorizeForward: (client, packet) => acl.authorizeForward(client, packet),
    ...(options.persistence !== undefined ? { persistence: options.persistence } : {}),
  });
  broker.on('unsubscribe', (topics, client) => subscriptionLimits.forget(client, topics));
  const stats = { clientErrors: 0 };
  logClientErrors(broker, stats, log);
  acl.enforceOnPublish(broker);
  keepClientIdsOutOfSys(broker);
  // aedes writes every delivery with its own writev: a cloud application
  // subscribed to a fleet would cost the hub one syscall per message.
  const appWrites = new SocketBatcher();
  const appServer = net.createServer((socket) => {
    appSockets.add(socket);
    socket.once('close', () => appSockets.delete(socket));
    limitPacketSize(socket, maxPacketSize, log);
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
    persistence: options.persistence,
    subscriptionLimits,
    acl,
    stats,
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

/** Refusals logged per interval, hub-wide: a device can reconnect and offend again as fast as it likes. */
const CLIENT_ERROR_LINES = 20;
const CLIENT_ERROR_INTERVAL_MS = 10_000;

/**
 * aedes closes a client whose packet it refuses (a wildcard or empty topic
 * in PUBLISH, QoS 3, a SUBSCRIBE without filters) and says so only in a
 * 'clientError' event: without this the device would just be gone, and
 * neither the hub's log nor the agent's say why.
 */
function logClientErrors(broker: Aedes, stats: { clientErrors: number }, log: Logger): void {
  let windowStart = -Infinity;
  let lines = 0;
  let suppressed = 0;
  // The first error is the reason; a client being closed for it may report more ("connection closed").
  const reported = new WeakSet<Client>();
  broker.on('clientError', (client, err) => {
    if (reported.has(client)) return;
    reported.add(client);
    stats.clientErrors++;
    const now = Date.now();
    if (now - windowStart >= CLIENT_ERROR_INTERVAL_MS) {
      windowStart = now;
      lines = 0;
    }
    if (lines >= CLIENT_ERROR_LINES) {
      suppressed++;
      return;
    }
    lines++;
    log.warn({ clientId: client.id, reason: err.message, ...(suppressed > 0 ? { suppressedLines: suppressed } : {}) }, 'broker closed a client for a packet it refuses');
    suppressed = 0;
  });
}

function defaultAccess(host: string): AppAccess {
  const anonymous = anonymousAccess({ host, passwordFile: false, allowAnonymous: undefined });
  if (!('allow' in anonymous)) throw new EdgemuxError('E_CONFIG', `app.${anonymous.key}: ${anonymous.problem} (got ${JSON.stringify(host)})`);
  return new AppAccess({ passwords: null, allowAnonymous: anonymous.allow, isDeviceClientId: () => false });
}

function remoteOf(client: Client): string | undefined {
  return (client.conn as Partial<net.Socket>).remoteAddress;
}

/**
 * Checks each packet's size at its fixed header as bytes arrive, before aedes'
 * parser sees them: that parser buffers a whole packet whatever its announced
 * length, so one connection could otherwise hold up to 256 MiB, before CONNECT
 * and without credentials. Bytes are checked where the socket hands them to its
 * readable buffer, so an oversized packet's body is never buffered at all.
 */
function limitPacketSize(socket: net.Socket, maxPacketSize: number, log: Logger): void {
  const gauge = new PacketSizeGauge(maxPacketSize);
  const push = socket.push;
  socket.push = function checkedPush(this: net.Socket, chunk: unknown, encoding?: BufferEncoding): boolean {
    if (Buffer.isBuffer(chunk)) {
      try {
        gauge.check(chunk);
      } catch (err) {
        log.warn({ remote: socket.remoteAddress, reason: (err as Error).message }, 'application connection closed');
        socket.destroy();
        return false;
      }
    }
    return push.call(this, chunk, encoding);
  };
}

/**
 * aedes announces every connect, disconnect, subscribe and unsubscribe on
 * `$SYS/<broker id>/...` with the client's ID in it: any application could
 * list the fleet's client IDs by subscribing. Only the broker's own heartbeat
 * and birth are kept, which name no client (aedes needs its heartbeat to know
 * its own wills are not orphaned).
 */
function keepClientIdsOutOfSys(broker: Aedes): void {
  const kept = new Set([`$SYS/${broker.id}/heartbeat`, `$SYS/${broker.id}/birth`]);
  const publish = broker.publish;
  broker.publish = function publishWithoutClientIds(this: Aedes, packet, ...rest: unknown[]): void {
    if (packet.topic.charCodeAt(0) === 0x24 /* $ */ && packet.topic.startsWith('$SYS/') && !kept.has(packet.topic)) {
      const done = rest.find((arg) => typeof arg === 'function') as ((err?: Error) => void) | undefined;
      done?.();
      return;
    }
    (publish as (...args: unknown[]) => void).call(this, packet, ...rest);
  } as Aedes['publish'];
}
