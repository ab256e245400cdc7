import net from 'node:net';
import mqttPacket from 'mqtt-packet';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveRoute } from '../../cloud-hub/main.js';
import type { RouteConfig } from '../../cloud-hub/config.js';
import type { Route } from '../../cloud-hub/routes.js';
import { quietLogger } from '../../shared/logger.js';
import { type Chain, connectClient, eventually, removePki, startChain } from '../support/chain.js';
import { describeWithMosquitto, Mosquitto } from '../support/mosquitto.js';

function routes(...configs: Partial<RouteConfig>[]): Route[] {
  return configs.map((config, index) =>
    resolveRoute({ match: {}, backend: 'embedded', ...config } as RouteConfig, index, quietLogger('routes')),
  );
}

function toBroker(...urls: string[]): Exclude<RouteConfig['backend'], 'embedded'> {
  return { brokers: urls.map((url) => ({ url, rejectUnauthorized: true })), healthCheckMs: 500 };
}

function nextMessage(client: MqttClient, topic: string): Promise<{ payload: Buffer; packet: mqttPacket.IPublishPacket }> {
  return new Promise((resolve) => {
    const onMessage = (received: string, payload: Buffer, packet: mqttPacket.IPublishPacket): void => {
      if (received !== topic) return;
      client.off('message', onMessage);
      resolve({ payload, packet });
    };
    client.on('message', onMessage);
  });
}

/** Sends one CONNECT over a raw socket and returns the CONNACK the device got. */
async function connackFor(port: number, connect: mqttPacket.IConnectPacket): Promise<mqttPacket.IConnackPacket> {
  const socket = net.connect(port, '127.0.0.1');
  const version = connect.protocolVersion ?? 4;
  const parser = mqttPacket.parser({ protocolVersion: version });
  const connack = new Promise<mqttPacket.IConnackPacket>((resolve, reject) => {
    parser.on('packet', (packet) => (packet.cmd === 'connack' ? resolve(packet) : reject(new Error(`got ${packet.cmd}`))));
    socket.on('data', (chunk) => parser.parse(chunk));
    socket.on('close', () => reject(new Error('closed without CONNACK')));
    socket.on('error', () => {});
  });
  socket.write(mqttPacket.generate(connect, { protocolVersion: version }));
  try {
    return await connack;
  } finally {
    socket.destroy();
  }
}

describeWithMosquitto('devices on an external Mosquitto, each with its own connection', () => {
  let mosquitto: Mosquitto;
  let chain: Chain;
  const opened: MqttClient[] = [];
  const direct = async (options: IClientOptions = {}): Promise<MqttClient> => {
    const client = await connectClient(mosquitto.port, options);
    opened.push(client);
    return client;
  };

  beforeAll(async () => {
    mosquitto = await Mosquitto.start({ passwords: { alice: 'secret', app: 'app-pass' } });
    chain = await startChain({ hub: { routes: routes({ match: { clientId: '*' }, backend: toBroker(mosquitto.url) }) } });
  });
  afterEach(() => {
    for (const client of opened.splice(0)) client.end(true);
  });
  afterAll(async () => {
    await chain.close();
    await mosquitto.remove();
    await removePki();
  });

  it('carries an MQTT 3.1.1 device to Mosquitto and back, as itself', async () => {
    const app = await direct({ clientId: 'app-311', username: 'app', password: 'app-pass' });
    await app.subscribeAsync('site/#', { qos: 1 });
    const device = await chain.device({ clientId: 'meter-311', username: 'alice', password: 'secret', protocolVersion: 4 });
    const up = nextMessage(app, 'site/meter-311');
    await device.publishAsync('site/meter-311', 'reading', { qos: 1 });
    expect((await up).payload.toString()).toBe('reading');

    await device.subscribeAsync('cmd/meter-311', { qos: 2 });
    const down = nextMessage(device, 'cmd/meter-311');
    await app.publishAsync('cmd/meter-311', 'reset', { qos: 2 });
    expect((await down).payload.toString()).toBe('reset');

    // Mosquitto enforces client-ID uniqueness on the device's own ID: a direct
    // connection with it takes the session over and the tunnelled device is closed.
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    await direct({ clientId: 'meter-311', username: 'alice', password: 'secret' });
    await closed;
  });

  it('passes MQTT 5 properties, user properties and topic aliases through unchanged', async () => {
    const app = await direct({ clientId: 'app-v5', username: 'app', password: 'app-pass', protocolVersion: 5 });
    await app.subscribeAsync('v5/#', { qos: 1 });
    const device = await chain.device({
      clientId: 'meter-v5',
      username: 'alice',
      password: 'secret',
      protocolVersion: 5,
      properties: { sessionExpiryInterval: 30, receiveMaximum: 10, topicAliasMaximum: 5 },
    });
    const up = nextMessage(app, 'v5/meter');
    await device.publishAsync('v5/meter', 'with props', {
      qos: 1,
      properties: { userProperties: { site: 'berlin', unit: 'kWh' }, contentType: 'text/plain', topicAlias: 1, messageExpiryInterval: 60 },
    });
    const { payload, packet } = await up;
    expect(payload.toString()).toBe('with props');
    expect(packet.properties?.userProperties).toEqual({ site: 'berlin', unit: 'kWh' });
    expect(packet.properties?.contentType).toBe('text/plain');

    // The alias set by the first publish is honoured by Mosquitto on the second.
    const aliased = nextMessage(app, 'v5/meter');
    await device.publishAsync('', 'by alias', { qos: 1, properties: { topicAlias: 1 } });
    expect((await aliased).payload.toString()).toBe('by alias');
  });

  it('tells an MQTT 5 device with an empty client ID the ID the agent gave it, beside Mosquitto’s own properties', async () => {
    // What Mosquitto alone answers a named MQTT 5 device: the chain may add only the identifier to it.
    const reference = await connackFor(mosquitto.port, {
      cmd: 'connect',
      clientId: 'reference-v5',
      username: 'alice',
      password: Buffer.from('secret'),
      protocolVersion: 5,
      clean: true,
      keepalive: 30,
    });
    const device = mqtt.connect({ host: '127.0.0.1', port: chain.devicePort, clientId: '', username: 'alice', password: 'secret', protocolVersion: 5, reconnectPeriod: 0 });
    const connack = await new Promise<mqttPacket.IConnackPacket>((resolve, reject) => {
      device.once('connect', resolve);
      device.once('error', reject);
    });
    opened.push(device);
    const assigned = connack.properties?.assignedClientIdentifier;
    expect(assigned).toMatch(/^emx-agent-1-[0-9a-f]{16}$/);
    expect(connack.properties).toEqual({ ...reference.properties, assignedClientIdentifier: assigned });

    // The name is the one Mosquitto knows the device by: taking it over closes the device.
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    await direct({ clientId: assigned, username: 'alice', password: 'secret' });
    await closed;
  });

  it('gives a device the broker’s own refusal for bad credentials, in 3.1.1 and 5.0', async () => {
    for (const protocolVersion of [4, 5] as const) {
      const connect: mqttPacket.IConnectPacket = {
        cmd: 'connect',
        clientId: `intruder-${protocolVersion}`,
        username: 'alice',
        password: Buffer.from('wrong'),
        protocolVersion,
        clean: true,
        keepalive: 30,
      };
      const fromBroker = await connackFor(mosquitto.port, connect);
      const throughChain = await connackFor(chain.devicePort, connect);
      expect(fromBroker.returnCode ?? fromBroker.reasonCode).not.toBe(0);
      expect(throughChain.returnCode ?? throughChain.reasonCode).toBe(fromBroker.returnCode ?? fromBroker.reasonCode);
    }
  });

  it('accepts good credentials and publishes the device’s own will when it vanishes', async () => {
    const app = await direct({ clientId: 'app-will', username: 'app', password: 'app-pass' });
    await app.subscribeAsync('wills/#', { qos: 1 });
    const device = await chain.device({
      clientId: 'meter-will',
      username: 'alice',
      password: 'secret',
      will: { topic: 'wills/meter-will', payload: Buffer.from('offline'), qos: 1, retain: false },
    });
    const will = nextMessage(app, 'wills/meter-will');
    (device.stream as net.Socket).destroy();
    expect((await will).payload.toString()).toBe('offline');
  });
});

describeWithMosquitto('Mosquitto restarts and several brokers', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(removePki);

  it('with reconnectGraceMs 0, ends devices with the broker connection; their persistent sessions carry them across a Mosquitto restart', async () => {
    const mosquitto = await Mosquitto.start({ persistence: true });
    cleanups.push(() => mosquitto.remove());
    const chain = await startChain({ hub: { routes: routes({ backend: { ...toBroker(mosquitto.url), reconnectGraceMs: 0 } }) } });
    cleanups.push(() => chain.close());

    const received: number[] = [];
    const subscriber = await connectClient(chain.devicePort, { clientId: 'persistent-sub', clean: false, reconnectPeriod: 200 });
    cleanups.push(() => subscriber.endAsync(true));
    subscriber.on('message', (_topic, payload) => received.push(Number(payload.toString())));
    await subscriber.subscribeAsync('restart/#', { qos: 1 });
    const publisher = await connectClient(chain.devicePort, { clientId: 'persistent-pub', clean: false, reconnectPeriod: 200 });
    cleanups.push(() => publisher.endAsync(true));
    let publisherReconnects = 0;
    publisher.on('reconnect', () => publisherReconnects++);

    // Publishing goes on while the broker restarts: messages in flight at the
    // restart are resent by the device after it reconnects (clean session off).
    const published: Promise<unknown>[] = [];
    const restarted = (async () => {
      await new Promise((resolve) => setTimeout(resolve, 150));
      await mosquitto.restart();
    })();
    for (let i = 0; i < 100; i++) {
      published.push(publisher.publishAsync('restart/x', String(i), { qos: 1 }));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await restarted;
    await Promise.all(published);
    expect(publisher.connected && subscriber.connected).toBe(true);
    expect(publisherReconnects).toBeGreaterThan(0);
    await eventually(() => new Set(received).size === 100, 15_000, 'all 100 QoS 1 messages');
    expect([...new Set(received)].sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i));
  });

  it('routes devices to two brokers by client ID', async () => {
    const east = await Mosquitto.start();
    const west = await Mosquitto.start();
    cleanups.push(() => east.remove(), () => west.remove());
    const chain = await startChain({
      hub: {
        routes: routes(
          { match: { clientId: 'east-*' }, backend: toBroker(east.url) },
          { match: { clientId: 'west-*' }, backend: toBroker(west.url) },
        ),
      },
    });
    cleanups.push(() => chain.close());
    const eastApp = await connectClient(east.port, { clientId: 'east-app-direct' });
    const westApp = await connectClient(west.port, { clientId: 'west-app-direct' });
    cleanups.push(() => eastApp.endAsync(true), () => westApp.endAsync(true));
    await eastApp.subscribeAsync('#', { qos: 1 });
    await westApp.subscribeAsync('#', { qos: 1 });
    const seenEast: string[] = [];
    const seenWest: string[] = [];
    eastApp.on('message', (topic) => seenEast.push(topic));
    westApp.on('message', (topic) => seenWest.push(topic));

    const eastDevice = await chain.device({ clientId: 'east-1' });
    const westDevice = await chain.device({ clientId: 'west-1' });
    await eastDevice.publishAsync('from/east-1', 'e', { qos: 1 });
    await westDevice.publishAsync('from/west-1', 'w', { qos: 1 });
    await eventually(() => seenEast.includes('from/east-1') && seenWest.includes('from/west-1'), 5000, 'both messages');
    expect(seenEast).not.toContain('from/west-1');
    expect(seenWest).not.toContain('from/east-1');
  });

  it('fails over to the next broker of a route when the first is down', async () => {
    const primary = await Mosquitto.start();
    const secondary = await Mosquitto.start();
    cleanups.push(() => primary.remove(), () => secondary.remove());
    await primary.stop();
    const chain = await startChain({ hub: { routes: routes({ backend: toBroker(primary.url, secondary.url) }) } });
    cleanups.push(() => chain.close());
    const app = await connectClient(secondary.port, { clientId: 'failover-app' });
    cleanups.push(() => app.endAsync(true));
    await app.subscribeAsync('fo/#', { qos: 1 });
    const device = await chain.device({ clientId: 'fo-device' });
    const message = nextMessage(app, 'fo/x');
    await device.publishAsync('fo/x', 'via secondary', { qos: 1 });
    expect((await message).payload.toString()).toBe('via secondary');
  });

  it('honours an MQTT 5 Server Keep Alive: the hub pings the broker at its rate and the agent enforces it', async () => {
    // Mosquitto answers a longer keepalive with Server Keep Alive = max_keepalive
    // (MQTT 5 §3.2.2.3.14); 10 s is the smallest value it accepts.
    const strict = await Mosquitto.start({ extraConfig: ['max_keepalive 10'] });
    cleanups.push(() => strict.remove());
    const chain = await startChain({ hub: { routes: routes({ backend: toBroker(strict.url) }) } });
    cleanups.push(() => chain.close());

    const device = await chain.device({ clientId: 'ska-device', protocolVersion: 5, keepalive: 60 });
    let closed = false;
    device.on('close', () => (closed = true));

    // A device that goes silent is closed after 1.5 x the server's keepalive, not its own 60 s.
    const silent = net.connect(chain.devicePort, '127.0.0.1');
    silent.on('error', () => {});
    // Read (and ignore) the CONNACK, or the socket never sees its close.
    silent.resume();
    const silentClosed = new Promise<number>((resolve) => silent.once('close', () => resolve(Date.now())));
    await new Promise<void>((resolve) => silent.once('connect', () => resolve()));
    silent.write(mqttPacket.generate({ cmd: 'connect', clientId: 'ska-silent', protocolVersion: 5, keepalive: 60, clean: true }, { protocolVersion: 5 }));
    const started = Date.now();

    // Past 1.5 server keepalives: the broker would have dropped a session nobody pinged.
    await new Promise((resolve) => setTimeout(resolve, 16_500));
    expect(closed).toBe(false);
    const echo = new Promise<string>((resolve) => device.once('message', (_topic, payload) => resolve(payload.toString())));
    await device.subscribeAsync('ska/echo', { qos: 1 });
    await device.publishAsync('ska/echo', 'alive', { qos: 1 });
    expect(await echo).toBe('alive');

    const silentFor = (await silentClosed) - started;
    expect(silentFor).toBeGreaterThanOrEqual(14_000);
    expect(silentFor).toBeLessThan(17_000);
  }, 30_000);

  it('refuses a device with "server unavailable" when no broker of its route answers', async () => {
    const gone = await Mosquitto.start();
    cleanups.push(() => gone.remove());
    await gone.stop();
    const chain = await startChain({ hub: { routes: routes({ backend: toBroker(gone.url) }) } });
    cleanups.push(() => chain.close());
    const v4 = await connackFor(chain.devicePort, { cmd: 'connect', clientId: 'nowhere-4', protocolVersion: 4, clean: true, keepalive: 30 });
    expect(v4.returnCode).toBe(3);
    const v5 = await connackFor(chain.devicePort, { cmd: 'connect', clientId: 'nowhere-5', protocolVersion: 5, clean: true, keepalive: 30 });
    expect(v5.reasonCode).toBe(0x88);
  });
});
