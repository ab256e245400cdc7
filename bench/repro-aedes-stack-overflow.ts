/**
 * Reproduces a crash of aedes 1.2.0 (mqemitter 7.1.0) that takes the whole
 * hub down, embedded broker included:
 *
 *   node dist/bench/repro-aedes-stack-overflow.js [publishers=200] [payloadBytes=4096]
 *
 * A subscriber stops reading, so deliveries to it wait for 'drain' and
 * mqemitter reaches its concurrency (100) and queues further messages. When
 * that subscriber goes away, every queued message matches nobody;
 * fastparallel then calls back synchronously and mqemitter's `released`
 * starts the next queued message from inside the previous one's callback
 * (released → _do → parallel → released ...), one stack level per queued
 * message: "RangeError: Maximum call stack size exceeded", process exit.
 * The same happens in the bench whenever the subscriber closes while the
 * broker still queues telemetry for it.
 */
import net, { type AddressInfo } from 'node:net';
import { Aedes } from 'aedes';
import { generate } from 'mqtt-packet';

const publishers = Number(process.argv[2] ?? 200);
const payloadBytes = Number(process.argv[3] ?? 4096);
const MESSAGES_EACH = 50;

const broker = await Aedes.createBroker();
const server = net.createServer((socket) => broker.handle(socket));
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address() as AddressInfo;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function client(id: string): Promise<net.Socket> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: id, clean: true, keepalive: 0 }));
      resolve(socket);
    });
    socket.on('error', () => undefined);
  });
}

const subscriber = await client('slow-subscriber');
subscriber.write(generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 't/#', qos: 0 }] }));
await sleep(200);
subscriber.pause();
const sockets: net.Socket[] = [];
for (let i = 0; i < publishers; i++) sockets.push(await client(`publisher-${i}`));
await sleep(300);
const publish = generate({ cmd: 'publish', topic: 't/x', payload: Buffer.alloc(payloadBytes), qos: 0, retain: false, dup: false });
for (const socket of sockets) for (let i = 0; i < MESSAGES_EACH; i++) socket.write(publish);
await sleep(2000);
const mq = (broker as unknown as { mq: { length: number; current: number } }).mq;
process.stdout.write(`messages queued in mqemitter: ${mq.length} (in progress: ${mq.current})\n`);
subscriber.destroy();
await sleep(2000);
process.stdout.write(`survived: queue now ${mq.length}\n`);
process.exit(0);
