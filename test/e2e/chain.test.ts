import net from 'node:net';
import mqttPacket from 'mqtt-packet';
import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, connectClient, eventually, removePki, startChain } from '../support/chain.js';
import { rawDevice } from '../support/raw-mqtt.js';

function nextMessage(client: MqttClient, topic: string): Promise<{ payload: Buffer; retain: boolean; qos: number }> {
  return new Promise((resolve) => {
    const onMessage = (received: string, payload: Buffer, packet: { retain: boolean; qos: number }): void => {
      if (received !== topic) return;
      client.off('message', onMessage);
      resolve({ payload, retain: packet.retain, qos: packet.qos });
    };
    client.on('message', onMessage);
  });
}

function parsePackets(bytes: Buffer, protocolVersion = 4): mqttPacket.Packet[] {
  const packets: mqttPacket.Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion });
  parser.on('packet', (packet) => packets.push(packet));
  parser.parse(bytes);
  return packets;
}

describe('devices through agent, tunnel and hub to the embedded broker', () => {
  let chain: Chain;
  beforeEach(async () => {
    chain = await startChain();
  });
  afterEach(async () => {
    await chain.close();
  });
  afterAll(removePki);

  for (const qos of [0, 1, 2] as const) {
    it(`carries QoS ${qos} from device to application and back`, async () => {
      const app = await chain.app({ clientId: `app-q${qos}` });
      const device = await chain.device({ clientId: `dev-q${qos}` });
      await app.subscribeAsync('telemetry/#', { qos });
      await device.subscribeAsync(`commands/dev-q${qos}`, { qos });

      const up = nextMessage(app, `telemetry/dev-q${qos}`);
      await device.publishAsync(`telemetry/dev-q${qos}`, `up-${qos}`, { qos });
      const upMessage = await up;
      expect(upMessage.payload.toString()).toBe(`up-${qos}`);
      expect(upMessage.qos).toBe(qos);

      const down = nextMessage(device, `commands/dev-q${qos}`);
      await app.publishAsync(`commands/dev-q${qos}`, `down-${qos}`, { qos });
      const downMessage = await down;
      expect(downMessage.payload.toString()).toBe(`down-${qos}`);
      expect(downMessage.qos).toBe(qos);
    });
  }

  it('delivers a retained message to a subscriber that comes later', async () => {
    const publisher = await chain.device({ clientId: 'retainer' });
    await publisher.publishAsync('state/lamp', 'on', { qos: 1, retain: true });
    const later = await chain.device({ clientId: 'late-subscriber' });
    const retained = nextMessage(later, 'state/lamp');
    await later.subscribeAsync('state/lamp', { qos: 1 });
    const message = await retained;
    expect(message.payload.toString()).toBe('on');
    expect(message.retain).toBe(true);
  });

  it('publishes the will when a device vanishes without DISCONNECT', async () => {
    const app = await chain.app({ clientId: 'will-watcher' });
    await app.subscribeAsync('wills/#', { qos: 1 });
    const device = await chain.device({ clientId: 'doomed', will: { topic: 'wills/doomed', payload: Buffer.from('gone'), qos: 1, retain: false } });
    const will = nextMessage(app, 'wills/doomed');
    (device.stream as net.Socket).destroy();
    expect((await will).payload.toString()).toBe('gone');
  });

  it('does not publish the will after a clean DISCONNECT', async () => {
    const app = await chain.app({ clientId: 'will-watcher-2' });
    await app.subscribeAsync('wills/#', { qos: 1 });
    const wills: string[] = [];
    app.on('message', (topic) => wills.push(topic));
    const device = await chain.device({ clientId: 'polite', will: { topic: 'wills/polite', payload: Buffer.from('gone'), qos: 1, retain: false } });
    await device.endAsync();
    await eventually(() => chain.hub.sessions.size === 0, 5000, 'session to end');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(wills).toEqual([]);
  });

  it('answers PINGREQ at the agent and closes a device silent for 1.5x its keepalive, publishing its will', async () => {
    const app = await chain.app({ clientId: 'keepalive-watcher' });
    await app.subscribeAsync('wills/#', { qos: 1 });
    const device = await rawDevice(chain.devicePort);
    device.socket.write(
      mqttPacket.generate({
        cmd: 'connect',
        clientId: 'sleepy',
        keepalive: 1,
        clean: true,
        protocolVersion: 4,
        will: { topic: 'wills/sleepy', payload: Buffer.from('silent'), qos: 1, retain: false },
      }),
    );
    await eventually(() => Buffer.concat(device.received).length >= 4, 3000, 'CONNACK');
    const tunnelBytesBefore = chain.hub.stats().sessions;
    expect(tunnelBytesBefore).toBe(1);
    device.socket.write(Buffer.from([0xc0, 0x00]));
    await eventually(() => Buffer.concat(device.received).length >= 6, 3000, 'PINGRESP');
    expect(parsePackets(Buffer.concat(device.received)).map((p) => p.cmd)).toEqual(['connack', 'pingresp']);

    const will = nextMessage(app, 'wills/sleepy');
    const startedSilence = Date.now();
    await device.closed;
    const silentFor = Date.now() - startedSilence;
    expect(silentFor).toBeGreaterThanOrEqual(1000);
    expect(silentFor).toBeLessThan(4000);
    expect((await will).payload.toString()).toBe('silent');
  });

  it('gives a device with an empty client ID and clean session a unique ID', async () => {
    const first = await chain.device({ clientId: '', clean: true });
    const second = await chain.device({ clientId: '', clean: true });
    const app = await chain.app({ clientId: 'anon-watcher' });
    await app.subscribeAsync('anon/#', { qos: 1 });
    const a = nextMessage(app, 'anon/1');
    await first.publishAsync('anon/1', 'one', { qos: 1 });
    expect((await a).payload.toString()).toBe('one');
    const b = nextMessage(app, 'anon/2');
    await second.publishAsync('anon/2', 'two', { qos: 1 });
    expect((await b).payload.toString()).toBe('two');
    expect(first.connected && second.connected).toBe(true);
    const ids = [...chain.hub.sessions].map((session) => session.clientId);
    // The application talks to the broker directly; only the two devices have tunnel sessions.
    expect(ids).toHaveLength(2);
    expect(new Set(ids).size).toBe(2);
    for (const id of ids) expect(id).toMatch(/^emx-agent-1-[0-9a-f]{16}$/);
  });

  it('refuses an empty client ID without clean session (MQTT 3.1.1 §3.1.3.1)', async () => {
    const device = await rawDevice(chain.devicePort);
    // mqtt-packet refuses to generate this CONNECT, so it is written by hand:
    // protocol name MQTT, level 4, flags 0 (clean session off), keepalive 30, empty client ID.
    device.socket.write(Buffer.from([0x10, 12, 0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x00, 0, 30, 0, 0]));
    await device.closed;
    const [connack] = parsePackets(Buffer.concat(device.received));
    expect(connack).toMatchObject({ cmd: 'connack', returnCode: 2 });
  });

  it('answers an MQTT 5 device on the embedded 3.1.1 broker with CONNACK 0x84 and closes it', async () => {
    const device = await rawDevice(chain.devicePort);
    device.socket.write(mqttPacket.generate({ cmd: 'connect', clientId: 'v5-device', clean: true, keepalive: 30, protocolVersion: 5 }, { protocolVersion: 5 }));
    await device.closed;
    const [connack] = parsePackets(Buffer.concat(device.received), 5);
    expect(connack).toMatchObject({ cmd: 'connack', reasonCode: 0x84 });
  });

  it('closes a device whose first packet is not CONNECT, and only that device', async () => {
    const neighbour = await chain.device({ clientId: 'neighbour' });
    const device = await rawDevice(chain.devicePort);
    device.socket.write(mqttPacket.generate({ cmd: 'pingreq' }));
    await device.closed;
    expect(Buffer.concat(device.received).length).toBe(0);
    expect(neighbour.connected).toBe(true);
  });

  it('closes a device that sends garbage while the others keep working', async () => {
    const app = await chain.app({ clientId: 'garbage-watcher' });
    await app.subscribeAsync('ok/#', { qos: 1 });
    const good = await chain.device({ clientId: 'good' });
    const bad = await rawDevice(chain.devicePort);
    bad.socket.write(mqttPacket.generate({ cmd: 'connect', clientId: 'bad', clean: true, keepalive: 30, protocolVersion: 4 }));
    await eventually(() => Buffer.concat(bad.received).length >= 4, 3000, 'CONNACK for the bad device');
    // A remaining length whose continuation bit never ends is malformed (MQTT 3.1.1 §2.2.3).
    bad.socket.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]));
    await bad.closed;
    const message = nextMessage(app, 'ok/good');
    await good.publishAsync('ok/good', 'still here', { qos: 1 });
    expect((await message).payload.toString()).toBe('still here');
    expect(good.connected).toBe(true);
  });

  it('refuses CONNECTs whose body is malformed and still admits the next device', async () => {
    // Well framed (type and remaining length agree) but unparseable inside:
    // a protocol name cut short, and a protocol name that is not MQTT.
    const truncated = Buffer.from([0x10, 0x02, 0x00, 0x04]);
    const wrongName = Buffer.from([0x10, 0x0c, 0x00, 0x04, 0x58, 0x58, 0x58, 0x58, 0x04, 0x02, 0x00, 0x1e, 0x00, 0x00]);
    for (const bytes of [truncated, wrongName]) {
      const bad = await rawDevice(chain.devicePort);
      bad.socket.write(bytes);
      await bad.closed;
      // No CONNACK 0 (accepted) for either.
      const reply = Buffer.concat(bad.received);
      expect(reply.length === 0 || reply[3] !== 0).toBe(true);
    }
    const good = await chain.device({ clientId: 'after-bad-connects' });
    expect(good.connected).toBe(true);
  });

  it('takes a burst of 20 000 QoS 1 publishes from one device into the embedded broker without harm', async () => {
    const app = await chain.app({ clientId: 'burst-watcher' });
    await app.subscribeAsync('burst/#', { qos: 1 });
    let received = 0;
    app.on('message', () => received++);
    const device = await rawDevice(chain.devicePort);
    device.socket.write(mqttPacket.generate({ cmd: 'connect', clientId: 'burster', clean: true, keepalive: 30, protocolVersion: 4 }));
    await eventually(() => Buffer.concat(device.received).length >= 4, 3000, 'CONNACK');
    const burst = Array.from({ length: 20_000 }, (_, i) =>
      mqttPacket.generate({ cmd: 'publish', topic: 'burst/x', payload: Buffer.from('0123456789'), qos: 1, messageId: i + 1, retain: false, dup: false }),
    );
    device.socket.write(Buffer.concat(burst));
    await eventually(() => received === 20_000, 20_000, 'all 20 000 publishes at the application');
    expect(chain.hub.stats().sessions).toBe(1);
  });

  it('closes a device that never sends CONNECT within the connect timeout', async () => {
    const device = await rawDevice(chain.devicePort);
    const started = Date.now();
    await device.closed;
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
  });

  it('lets the same client ID take over: the old connection is closed', async () => {
    const first = await chain.device({ clientId: 'twin' });
    const firstClosed = new Promise<void>((resolve) => first.once('close', () => resolve()));
    const second = await chain.device({ clientId: 'twin' });
    await firstClosed;
    expect(second.connected).toBe(true);
    const app = await chain.app({ clientId: 'twin-watcher' });
    await app.subscribeAsync('twin/#', { qos: 1 });
    const message = nextMessage(app, 'twin/x');
    await second.publishAsync('twin/x', 'second', { qos: 1 });
    expect((await message).payload.toString()).toBe('second');
  });
});

describe('client-ID namespaces', () => {
  let chain: Chain;
  afterEach(async () => {
    await chain.close();
  });

  it('refuses a client ID outside the agent’s namespace with CONNACK 5 and accepts one inside it', async () => {
    chain = await startChain({ hub: { namespaces: [{ agentId: 'agent-1', clientIds: ['plant-a-*'] }] } });
    const inside = await chain.device({ clientId: 'plant-a-pump-1' });
    expect(inside.connected).toBe(true);
    const outside = await rawDevice(chain.devicePort);
    outside.socket.write(mqttPacket.generate({ cmd: 'connect', clientId: 'plant-b-pump-1', clean: true, keepalive: 30, protocolVersion: 4 }));
    await outside.closed;
    const [connack] = parsePackets(Buffer.concat(outside.received));
    expect(connack).toMatchObject({ cmd: 'connack', returnCode: 5 });
    // IDs the agent assigns itself are its own.
    const anonymous = await chain.device({ clientId: '', clean: true });
    expect(anonymous.connected).toBe(true);
  });
});

describe('many devices on one tunnel', () => {
  let chain: Chain;
  afterEach(async () => {
    await chain.close();
  });

  it('carries 200 devices over a single tunnel, each publishing QoS 1 and receiving a command', async () => {
    chain = await startChain({ agent: { tunnels: 1 } });
    const app = await chain.app({ clientId: 'fleet-app' });
    await app.subscribeAsync('fleet/+/up', { qos: 1 });
    const seen = new Set<string>();
    app.on('message', (topic) => seen.add(topic));

    const devices: MqttClient[] = [];
    for (let batch = 0; batch < 200; batch += 50) {
      devices.push(...(await Promise.all(Array.from({ length: 50 }, (_, i) => connectClient(chain.devicePort, { clientId: `fleet-${batch + i}` })))));
    }
    expect(chain.hub.stats()).toMatchObject({ tunnels: 1, sessions: 200 });

    await Promise.all(devices.map((device, i) => device.subscribeAsync(`fleet/${i}/down`, { qos: 1 })));
    await Promise.all(devices.map((device, i) => device.publishAsync(`fleet/${i}/up`, `hello ${i}`, { qos: 1 })));
    await eventually(() => seen.size === 200, 10_000, 'all 200 publishes');

    const commands = devices.map((device, i) => nextMessage(device, `fleet/${i}/down`));
    await Promise.all(devices.map((_, i) => app.publishAsync(`fleet/${i}/down`, `cmd ${i}`, { qos: 1 })));
    const received = await Promise.all(commands);
    received.forEach((message, i) => expect(message.payload.toString()).toBe(`cmd ${i}`));
    for (const device of devices) device.end(true);
  });
});
