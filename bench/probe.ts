import net from 'node:net';
import mqtt, { type MqttClient } from 'mqtt';
import { generate } from 'mqtt-packet';
import { sleep } from './procs.js';

const ATTEMPT_TIMEOUT_MS = 2000;

/** One CONNECT → CONNACK exchange over a raw socket; resolves with the return code, rejects on any failure. */
function connackCode(host: string, port: number, clientId: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    let received = Buffer.alloc(0);
    const finish = (err: Error | null, code = -1): void => {
      clearTimeout(timer);
      socket.removeAllListeners('data');
      if (err === null && code === 0) socket.end(generate({ cmd: 'disconnect' }));
      else socket.destroy();
      if (err !== null) reject(err);
      else resolve(code);
    };
    const timer = setTimeout(() => finish(new Error(`no CONNACK within ${ATTEMPT_TIMEOUT_MS} ms`)), ATTEMPT_TIMEOUT_MS);
    socket.on('error', (err) => finish(err));
    socket.on('close', () => finish(new Error('closed before CONNACK')));
    socket.on('connect', () => socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean: true, keepalive: 0 })));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 4) return;
      if (received[0] !== 0x20) return finish(new Error(`first packet from ${host}:${port} is not a CONNACK (0x${received[0].toString(16)})`));
      finish(null, received[3]);
    });
  });
}

/** Resolves once an MQTT CONNECT to host:port is accepted; polls until `timeoutMs`. */
export async function waitForMqtt(host: string, port: number, timeoutMs: number, isDead: () => string | null = () => null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no attempt';
  let attempt = 0;
  while (Date.now() < deadline) {
    const dead = isDead();
    if (dead !== null) throw new Error(dead);
    try {
      const code = await connackCode(host, port, `bench-probe-${process.pid}-${attempt++}`);
      if (code === 0) return;
      last = `CONNACK return code ${code}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`no MQTT CONNACK from ${host}:${port} within ${timeoutMs} ms (last: ${last})`);
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function connectClient(host: string, port: number, clientId: string): Promise<MqttClient> {
  // allowRetries=false: a refused connection rejects instead of leaving the promise pending.
  return withTimeout(mqtt.connectAsync(`mqtt://${host}:${port}`, { clientId, reconnectPeriod: 0, connectTimeout: ATTEMPT_TIMEOUT_MS }, false), ATTEMPT_TIMEOUT_MS + 500, `connect to ${host}:${port}`);
}

/**
 * Resolves once a message published at `pubPort` arrives at `subPort`:
 * proves a bridge (or any forwarding path) is up end to end.
 */
export async function waitForFlow(host: string, pubPort: number, subPort: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const topic = `bench/probe/${process.pid}/${Date.now()}`;
  const sub = await connectClient(host, subPort, `bench-probe-sub-${process.pid}`);
  let pub: MqttClient | null = null;
  try {
    pub = await connectClient(host, pubPort, `bench-probe-pub-${process.pid}`);
    let arrived = false;
    sub.on('message', () => {
      arrived = true;
    });
    await withTimeout(sub.subscribeAsync(topic, { qos: 1 }), ATTEMPT_TIMEOUT_MS, 'probe subscribe');
    while (!arrived) {
      if (Date.now() > deadline) throw new Error(`nothing published at port ${pubPort} reached port ${subPort} within ${timeoutMs} ms`);
      await withTimeout(pub.publishAsync(topic, 'probe', { qos: 1 }), ATTEMPT_TIMEOUT_MS, 'probe publish');
      await sleep(100);
    }
  } finally {
    sub.end(true);
    pub?.end(true);
  }
}
