import net from 'node:net';
import { once } from 'node:events';
import { Aedes } from 'aedes';
import { generate, parser, type Packet } from 'mqtt-packet';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DeviceFleet,
  FleetConfigError,
  TELEMETRY_HEADER_BYTES,
  decodeTelemetry,
  encodeTelemetry,
  nowMs,
} from '../../firmware-sim/index.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check() && Date.now() < deadline) await sleep(20);
}

async function listen(server: net.Server): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as net.AddressInfo).port;
}

describe('telemetry payload', () => {
  it('round-trips the header and zero-pads to the requested size', () => {
    const sentAt = nowMs();
    const buf = encodeTelemetry(4_000_000_000, 123_456, sentAt, 64);
    expect(buf.length).toBe(64);
    expect(decodeTelemetry(buf)).toEqual({ sentAtMs: sentAt, deviceIndex: 4_000_000_000, seq: 123_456 });
    expect(buf.subarray(TELEMETRY_HEADER_BYTES).every((b) => b === 0)).toBe(true);
  });

  it('never makes a payload shorter than the header', () => {
    expect(encodeTelemetry(1, 1, 0, 3).length).toBe(TELEMETRY_HEADER_BYTES);
  });

  it('decodes views into larger buffers and rejects short input', () => {
    const inner = encodeTelemetry(7, 9, 1234.5, 16);
    const outer = Buffer.concat([Buffer.from([1, 2, 3]), inner]);
    expect(decodeTelemetry(outer.subarray(3))).toEqual({ sentAtMs: 1234.5, deviceIndex: 7, seq: 9 });
    expect(decodeTelemetry(Buffer.alloc(15))).toBeNull();
  });

  it('uses a clock comparable across processes', () => {
    expect(Math.abs(nowMs() - Date.now())).toBeLessThan(1000);
  });
});

describe('fleet options', () => {
  it('names the bad key', () => {
    expect(() => new DeviceFleet({ port: 1883, devices: 1, qos: 3 as 0 })).toThrow(FleetConfigError);
    expect(() => new DeviceFleet({ port: 1883, devices: 1, payloadSize: 8 })).toThrow(/payloadSize/);
  });
});

describe('firmware-sim against aedes', () => {
  let broker: Aedes;
  let server: net.Server;
  let port: number;
  const clients: MqttClient[] = [];
  const fleets: DeviceFleet[] = [];

  beforeAll(async () => {
    broker = await Aedes.createBroker();
    server = net.createServer(broker.handle);
    port = await listen(server);
  });

  afterAll(async () => {
    await Promise.all(fleets.map((f) => f.stop()));
    await Promise.all(clients.map((c) => c.endAsync(true)));
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  async function client(): Promise<MqttClient> {
    const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0 });
    clients.push(c);
    return c;
  }

  it('publishes contiguous QoS 1 telemetry and answers a command', async () => {
    const DEVICES = 50;
    const observer = await client();
    const seqsByDevice = new Map<number, number[]>();
    const strays: string[] = [];
    let observed = 0;
    observer.on('message', (topic, payload) => {
      const record = decodeTelemetry(payload);
      // Assertions here would throw inside MQTT.js; collect and check later.
      if (record === null || topic !== `devices/sim-${record.deviceIndex}/telemetry`) {
        strays.push(topic);
        return;
      }
      const seqs = seqsByDevice.get(record.deviceIndex) ?? [];
      seqs.push(record.seq);
      seqsByDevice.set(record.deviceIndex, seqs);
      observed++;
    });
    await observer.subscribeAsync('devices/+/telemetry', { qos: 1 });

    const fleet = new DeviceFleet({ port, devices: DEVICES, ratePerDevice: 20, qos: 1, payloadSize: 64 });
    fleets.push(fleet);
    const disconnects: string[] = [];
    fleet.on('disconnect', (id, reason) => disconnects.push(`${id}: ${reason}`));
    const startedAt = performance.now();
    await fleet.start();
    expect(fleet.stats().connected).toBe(DEVICES);

    await sleep(1000);

    const commander = await client();
    await commander.subscribeAsync('devices/sim-7/replies', { qos: 1 });
    const command = encodeTelemetry(999, 1, nowMs(), 32);
    const reply = new Promise<Buffer>((resolve) => {
      commander.on('message', (topic, payload) => {
        if (topic === 'devices/sim-7/replies') resolve(payload);
      });
    });
    await commander.publishAsync('devices/sim-7/commands', command, { qos: 1 });
    expect((await reply).equals(command)).toBe(true);

    await sleep(500);
    await fleet.stop();
    const ranSeconds = (performance.now() - startedAt) / 1000;
    const stats = fleet.stats();
    // Everything the devices wrote was ahead of their DISCONNECT, so the broker delivers it all.
    await waitFor(() => observed >= stats.sent, 2000);

    await observer.unsubscribeAsync('devices/+/telemetry');

    expect(strays).toEqual([]);
    expect(disconnects).toEqual([]);
    expect(stats.connected).toBe(0);
    expect(stats.malformed).toBe(0);
    expect(stats.received).toBe(1);
    expect(stats.replies).toBe(1);
    expect(stats.commandP99Ms).toBeGreaterThanOrEqual(0);
    // 50 devices × 20/s for at least 1.5 s; never faster than the rate allows,
    // however long a loaded machine stretched the run.
    expect(stats.sent).toBeGreaterThan(800);
    expect(stats.sent).toBeLessThanOrEqual(DEVICES * 20 * ranSeconds + DEVICES);
    // Acks still in flight at stop() are the only gap between sent and acked.
    expect(stats.acked).toBeLessThanOrEqual(stats.sent);
    expect(stats.sent - stats.acked).toBeLessThanOrEqual(DEVICES * 10);
    expect(stats.publishAckP99Ms).toBeGreaterThan(0);
    expect(observed).toBeGreaterThanOrEqual(stats.acked);
    expect(observed).toBeLessThanOrEqual(stats.sent);

    expect(seqsByDevice.size).toBe(DEVICES);
    let total = 0;
    for (const [device, seqs] of seqsByDevice) {
      const sorted = [...seqs].sort((a, b) => a - b);
      expect(sorted, `device ${device}`).toEqual(Array.from({ length: sorted.length }, (_, i) => i + 1));
      total += sorted.length;
    }
    expect(total).toBe(observed);
  }, 10_000);

  it('completes QoS 2 both ways', async () => {
    const fleet = new DeviceFleet({ port, devices: 5, ratePerDevice: 20, qos: 2, clientIdPrefix: 'q2-' });
    fleets.push(fleet);
    await fleet.start();
    const commander = await client();
    await commander.subscribeAsync('devices/q2-3/replies', { qos: 1 });
    const reply = new Promise<Buffer>((resolve) => commander.on('message', (_t, payload) => resolve(payload)));
    await commander.publishAsync('devices/q2-3/commands', Buffer.from('reboot'), { qos: 2 });
    expect((await reply).toString()).toBe('reboot');
    await sleep(300);
    await fleet.stop();
    const stats = fleet.stats();
    expect(stats.received).toBe(1);
    expect(stats.sent).toBeGreaterThan(10);
    expect(stats.acked).toBeGreaterThan(0);
    expect(stats.sent - stats.acked).toBeLessThanOrEqual(5 * 10);
    expect(stats.malformed + stats.rejected + stats.disconnects).toBe(0);
  }, 10_000);
});

describe('firmware-sim against a misbehaving server', () => {
  it('counts connect failures and still resolves start()', async () => {
    const closed = net.createServer();
    const port = await listen(closed);
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const fleet = new DeviceFleet({ port, devices: 3 });
    const reasons: string[] = [];
    fleet.on('connect-failure', (_id, reason) => reasons.push(reason));
    await fleet.start();
    await fleet.stop();
    expect(fleet.stats().connectFailures).toBe(3);
    expect(reasons).toEqual(['ECONNREFUSED', 'ECONNREFUSED', 'ECONNREFUSED']);
  });

  it('drops a connection that sends garbage after SUBACK and reports it', async () => {
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      let step = 0;
      socket.on('data', () => {
        // CONNACK for the CONNECT, then SUBACK (id 1) for the SUBSCRIBE, then bytes
        // with a reserved packet type.
        if (step++ === 0) socket.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
        else socket.write(Buffer.from([0x90, 0x03, 0x00, 0x01, 0x01, 0x00, 0x01, 0x02]));
      });
    });
    const port = await listen(server);
    const fleet = new DeviceFleet({ port, devices: 1, ratePerDevice: 0 });
    const lost = once(fleet, 'disconnect');
    await fleet.start();
    const [clientId, reason] = (await lost) as [string, string];
    expect(clientId).toBe('sim-0');
    expect(reason).toMatch(/^malformed input/);
    await fleet.stop();
    expect(fleet.stats()).toMatchObject({ malformed: 1, disconnects: 1, connected: 0 });
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('speaks MQTT 5: receive maximum, server keep alive, QoS 2 commands delivered once', async () => {
    // aedes 1.x speaks MQTT 3.1.1 only, so a scripted MQTT 5 server stands in.
    const v5 = { protocolVersion: 5 };
    const seen: Packet[] = [];
    const sockets = new Set<net.Socket>();
    const command = encodeTelemetry(1, 1, nowMs(), 24);
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      const send = (p: Packet): void => {
        socket.write(generate(p, v5));
      };
      const decode = parser();
      decode.on('packet', (packet: Packet) => {
        seen.push(packet);
        switch (packet.cmd) {
          case 'connect':
            return send({
              cmd: 'connack',
              reasonCode: 0,
              sessionPresent: false,
              properties: { receiveMaximum: 2, serverKeepAlive: 1 },
            });
          case 'subscribe': {
            send({ cmd: 'suback', messageId: packet.messageId, granted: [1] });
            const publish = { cmd: 'publish', topic: 'devices/v5-0/commands', payload: command, qos: 2, messageId: 10, retain: false } as const;
            send({ ...publish, dup: false });
            // A retransmission before PUBREL must not be delivered again (MQTT 5 §4.3.3).
            return send({ ...publish, dup: true });
          }
          case 'pubrec':
            return send({ cmd: 'pubrel', messageId: packet.messageId, reasonCode: 0 });
          case 'publish':
            // Replies are acknowledged; telemetry never is, so the window fills.
            if (packet.topic === 'devices/v5-0/replies') send({ cmd: 'puback', messageId: packet.messageId, reasonCode: 0 });
            return;
          case 'pingreq':
            return send({ cmd: 'pingresp' });
          default:
            return;
        }
      });
      socket.on('data', (chunk) => decode.parse(chunk));
    });
    const port = await listen(server);
    const fleet = new DeviceFleet({ port, devices: 1, ratePerDevice: 50, qos: 2, protocolVersion: 5, clientIdPrefix: 'v5-' });
    await fleet.start();
    await sleep(1300);
    await fleet.stop();
    const stats = fleet.stats();
    const count = (cmd: string): number => seen.filter((p) => p.cmd === cmd).length;

    expect(stats).toMatchObject({ received: 1, replies: 1, sent: 2, acked: 0, malformed: 0, disconnects: 0 });
    expect(stats.skipped).toBeGreaterThan(20);
    expect(count('pubrec')).toBe(2);
    // The server answers each PUBREC with a PUBREL, and every PUBREL gets a PUBCOMP.
    expect(count('pubcomp')).toBe(2);
    expect(count('pingreq')).toBeGreaterThanOrEqual(1);
    expect(count('disconnect')).toBe(1);
    const reply = seen.find((p) => p.cmd === 'publish' && p.topic === 'devices/v5-0/replies');
    expect(reply && reply.cmd === 'publish' && Buffer.from(reply.payload).equals(command)).toBe(true);
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('skips telemetry instead of queueing when the server stops reading', async () => {
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.once('data', () => {
        socket.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
        socket.once('data', () => {
          socket.write(Buffer.from([0x90, 0x03, 0x00, 0x01, 0x00]));
          socket.pause();
        });
      });
    });
    const port = await listen(server);
    const payloadSize = 256 * 1024;
    // The server never reads again, so an orderly close cannot finish; do not wait for it.
    const fleet = new DeviceFleet({ port, devices: 1, ratePerDevice: 200, payloadSize, stopTimeoutMs: 100 });
    await fleet.start();
    await sleep(1000);
    const stats = fleet.stats();
    await fleet.stop();
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    // ~200 owed in a second; kernel buffers take a few MB, the rest must be skipped.
    expect(stats.skipped).toBeGreaterThan(50);
    expect(stats.sent + stats.skipped).toBeGreaterThan(150);
  });
});
