import net from 'node:net';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { DeviceListenerOptions } from '../../edge-agent/device-listeners.js';
import type { WebSocketDuplex } from '../../edge-agent/websocket-duplex.js';
import { type CertificateAndKey, createCertificateAuthority, issueCertificate } from '../../shared/pki.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';
import { type Chain, eventually, removePki, startChain } from '../support/chain.js';

const HANDSHAKE_TIMEOUT_MS = 300;

/** Listener indexes in the chain's agent, in configuration order. */
const TCP = 0;
const TLS_OPEN = 1;
const TLS_IDENTITY = 2;
const WS = 3;
const WSS_IDENTITY = 4;

describe('device listeners: MQTT over TLS and WebSocket at the agent', () => {
  let chain: Chain;
  let deviceCa: CertificateAndKey;
  let device: CertificateAndKey;
  let stranger: CertificateAndKey;
  const clients: MqttClient[] = [];
  const port = (index: number): number => chain.agent.deviceAddresses[index].port;

  beforeAll(async () => {
    deviceCa = createCertificateAuthority({ commonName: 'site devices CA' });
    const server = issueCertificate(deviceCa, { commonName: 'edge-agent', role: 'server', altNames: ['127.0.0.1', 'localhost'] });
    device = issueCertificate(deviceCa, { commonName: 'sensor-007', role: 'client' });
    stranger = issueCertificate(createCertificateAuthority({ commonName: 'another CA' }), { commonName: 'sensor-007', role: 'client' });
    const tls = { cert: server.certPem, key: server.keyPem, ca: deviceCa.certPem };
    const listeners: DeviceListenerOptions[] = [
      { type: 'tcp', host: '127.0.0.1', port: 0 },
      { type: 'tls', host: '127.0.0.1', port: 0, tls, handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS },
      { type: 'tls', host: '127.0.0.1', port: 0, tls, requireClientCert: true, identityAs: 'clientId', handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS },
      { type: 'ws', host: '127.0.0.1', port: 0, path: '/mqtt', handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS },
      { type: 'wss', host: '127.0.0.1', port: 0, path: '/mqtt', tls, requireClientCert: true, identityAs: 'both' },
    ];
    // A large hub queue, so the slow WebSocket reader is held back by credit rather than cut off.
    chain = await startChain({ agent: { listeners }, hub: { maxQueuedBytes: 64 * 1024 * 1024 } });
  });

  afterAll(async () => {
    for (const client of clients) client.end(true);
    await chain?.close();
    await removePki();
  });

  function connect(url: string, options: IClientOptions): Promise<MqttClient> {
    const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
    clients.push(client);
    return new Promise((resolve, reject) => {
      client.once('connect', () => resolve(client));
      client.once('error', reject);
      client.once('close', () => reject(new Error('connection closed before CONNACK')));
    });
  }

  /** QoS 1 telemetry up to a cloud application, and a QoS 1 command back down. */
  async function roundTrip(deviceClient: MqttClient, name: string): Promise<void> {
    const app = await chain.app({ clientId: `app-${name}-${clients.length}` });
    await app.subscribeAsync(`tele/${name}`, { qos: 1 });
    await deviceClient.subscribeAsync(`cmd/${name}`, { qos: 1 });
    const telemetry = new Promise<string>((resolve) => app.once('message', (_topic, payload) => resolve(payload.toString())));
    await deviceClient.publishAsync(`tele/${name}`, `reading from ${name}`, { qos: 1 });
    expect(await telemetry).toBe(`reading from ${name}`);
    const command = new Promise<string>((resolve) => deviceClient.once('message', (_topic, payload) => resolve(payload.toString())));
    await app.publishAsync(`cmd/${name}`, `command for ${name}`, { qos: 1 });
    expect(await command).toBe(`command for ${name}`);
  }

  const hubClientIds = (): string[] => [...chain.hub.sessions].map((session) => session.clientId);

  it('carries an mqtts:// device without a client certificate where none is required', async () => {
    const client = await connect(`mqtts://127.0.0.1:${port(TLS_OPEN)}`, { clientId: 'tls-plain', ca: deviceCa.certPem });
    await roundTrip(client, 'tls-plain');
    expect(hubClientIds()).toContain('tls-plain');
  });

  it('names an mqtts:// device by its certificate: the broker sees the common name, not the client ID it sent', async () => {
    const seenByBroker: string[] = [];
    const onClient = (client: { id: string }): void => void seenByBroker.push(client.id);
    chain.hub.broker.on('client', onClient);
    try {
      const client = await connect(`mqtts://127.0.0.1:${port(TLS_IDENTITY)}`, {
        clientId: 'whatever-i-like',
        ca: deviceCa.certPem,
        cert: device.certPem,
        key: device.keyPem,
      });
      await roundTrip(client, 'sensor-007');
      expect(seenByBroker).toContain('sensor-007');
      expect(seenByBroker).not.toContain('whatever-i-like');
      expect(hubClientIds()).toContain('sensor-007');
      client.end(true);
      await eventually(() => !hubClientIds().includes('sensor-007'), 5000, 'the session to end');
    } finally {
      chain.hub.broker.off('client', onClient);
    }
  });

  it('refuses an mqtts:// device without a certificate, or with one from another CA, where one is required', async () => {
    await expect(connect(`mqtts://127.0.0.1:${port(TLS_IDENTITY)}`, { clientId: 'no-cert', ca: deviceCa.certPem })).rejects.toThrow();
    await expect(
      connect(`mqtts://127.0.0.1:${port(TLS_IDENTITY)}`, { clientId: 'wrong-ca', ca: deviceCa.certPem, cert: stranger.certPem, key: stranger.keyPem }),
    ).rejects.toThrow();
    expect(hubClientIds()).not.toContain('no-cert');
    expect(hubClientIds()).not.toContain('wrong-ca');
    expect(hubClientIds()).not.toContain('sensor-007');
  });

  it('carries a ws:// device', async () => {
    const client = await connect(`ws://127.0.0.1:${port(WS)}/mqtt`, { clientId: 'ws-device' });
    await roundTrip(client, 'ws-device');
  });

  it('carries a wss:// device named by its certificate as client ID and username', async () => {
    const broker = chain.hub.broker;
    const ownAuthenticate = broker.authenticate;
    const usernames: (string | undefined)[] = [];
    broker.authenticate = (client, username, password, done) => {
      if (client.id === 'sensor-007') usernames.push(username);
      ownAuthenticate(client, username, password, done);
    };
    try {
      const client = await connect(`wss://127.0.0.1:${port(WSS_IDENTITY)}/mqtt`, {
        clientId: 'claimed-id',
        username: 'claimed-user',
        ca: deviceCa.certPem,
        cert: device.certPem,
        key: device.keyPem,
      });
      await roundTrip(client, 'sensor-007');
      expect(usernames).toEqual(['sensor-007']);
      expect(hubClientIds()).toContain('sensor-007');
      client.end(true);
      await eventually(() => !hubClientIds().includes('sensor-007'), 5000, 'the session to end');
    } finally {
      broker.authenticate = ownAuthenticate;
    }
  });

  it('refuses a wss:// device without a certificate', async () => {
    await expect(connect(`wss://127.0.0.1:${port(WSS_IDENTITY)}/mqtt`, { clientId: 'wss-no-cert', ca: deviceCa.certPem })).rejects.toThrow();
    expect(hubClientIds()).not.toContain('wss-no-cert');
  });

  it('frames by MQTT headers across WebSocket messages: a packet split over two, several packets in one', async () => {
    const ws = await rawWebSocket(port(WS));
    const connectBytes = mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'ws-raw', clean: true, keepalive: 30 });
    ws.socket.send(connectBytes.subarray(0, 5));
    ws.socket.send(connectBytes.subarray(5));
    expect((await ws.next()).cmd).toBe('connack');

    const app = await chain.app({ clientId: 'app-ws-raw' });
    await app.subscribeAsync('raw/up', { qos: 1 });
    const up = new Promise<string>((resolve) => app.once('message', (_topic, payload) => resolve(payload.toString())));
    ws.socket.send(
      Buffer.concat([
        mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'raw/down', qos: 1 }] }),
        mqttPacket.generate({ cmd: 'publish', topic: 'raw/up', payload: Buffer.from('both in one message'), qos: 1, messageId: 2, retain: false, dup: false }),
      ]),
    );
    const acks = [await ws.next(), await ws.next()].map((packet) => packet.cmd).sort();
    expect(acks).toEqual(['puback', 'suback']);
    expect(await up).toBe('both in one message');
    ws.socket.close();
  });

  it('closes a WebSocket device that sends a text message or a message past the size bound', async () => {
    const texting = await rawWebSocket(port(WS));
    texting.socket.send('CONNECT as text');
    expect(await texting.closed).toBeGreaterThan(0);

    const oversized = await rawWebSocket(port(WS));
    oversized.socket.send(Buffer.alloc(TUNNEL_DEFAULTS.maxFramePayload + 128 * 1024, 0x30));
    // RFC 6455 §7.4.1: 1009, message too big.
    expect(await oversized.closed).toBe(1009);
  });

  it('closes a peer that never completes its TLS handshake or WebSocket upgrade, and only such a peer', async () => {
    const idle = await connect(`ws://127.0.0.1:${port(WS)}/mqtt`, { clientId: 'ws-idle', keepalive: 0 });
    for (const index of [TLS_OPEN, WS]) {
      const started = Date.now();
      const silent = net.connect(port(index), '127.0.0.1');
      silent.on('error', () => {});
      await new Promise((resolve) => silent.once('close', resolve));
      const waited = Date.now() - started;
      expect(waited).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 50);
      expect(waited).toBeLessThan(HANDSHAKE_TIMEOUT_MS + 2000);
    }
    // Silent past the handshake timeout, but upgraded: still connected.
    expect(idle.connected).toBe(true);
    await roundTrip(idle, 'ws-idle');
  });

  it('holds back a WebSocket device that stops reading: the hub keeps the backlog, the agent buffers at most a window', async () => {
    const ws = await rawWebSocket(port(WS));
    ws.socket.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'ws-slow', clean: true, keepalive: 0 }));
    expect((await ws.next()).cmd).toBe('connack');
    ws.socket.send(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'slow/#', qos: 1 }] }));
    expect((await ws.next()).cmd).toBe('suback');
    ws.socket.pause();

    // 16 MiB: far past the stream window and what loopback socket buffers take (8 MiB measured), under the hub's queue limit.
    const app = await chain.app({ clientId: 'app-ws-slow' });
    const count = 512;
    const payload = Buffer.alloc(32 * 1024, 1);
    for (let i = 0; i < count; i++) {
      payload.writeUInt32BE(i, 0);
      app.publish('slow/x', Buffer.from(payload), { qos: 1 });
    }
    const hubSession = (): { queuedBytes: number } | undefined => [...chain.hub.sessions].find((session) => session.clientId === 'ws-slow');
    const agentDevice = [...chain.agent.devices].find((connection) => connection.clientId === 'ws-slow')!;
    const socket = agentDevice.socket as WebSocketDuplex;
    // Settled: the agent waits for 'drain' from a device that does not read, so
    // it returns no credit and the hub keeps the rest in its own bounded queue.
    await eventually(
      () => socket.writableNeedDrain && (hubSession()?.queuedBytes ?? 0) > 1024 * 1024,
      10_000,
      'the agent to wait for the device and the hub to queue the rest',
    );
    // One stream window of credit, overshot by one packet at most.
    expect(socket.bufferedBytes).toBeLessThanOrEqual(TUNNEL_DEFAULTS.streamWindow + payload.length + 1024);
    expect(agentDevice.stream!.state).toBe('open');

    const received: number[] = [];
    ws.onPacket = (packet) => {
      if (packet.cmd !== 'publish') return;
      received.push((packet.payload as Buffer).readUInt32BE(0));
      ws.socket.send(mqttPacket.generate({ cmd: 'puback', messageId: packet.messageId! }));
    };
    ws.socket.resume();
    await eventually(() => received.length >= count, 20_000, `all ${count} messages (got ${received.length})`);
    expect(received).toEqual(Array.from({ length: count }, (_, i) => i));
    ws.socket.close();
  });

  it('still takes plain TCP devices beside the other listeners', async () => {
    const client = await connect(`mqtt://127.0.0.1:${port(TCP)}`, { clientId: 'tcp-beside' });
    await roundTrip(client, 'tcp-beside');
  });
});

interface RawWebSocket {
  socket: WebSocket;
  /** The next MQTT packet from the agent, whole, whatever messages carried it. */
  next(): Promise<Packet>;
  /** Once set, packets go here instead of to `next()`. */
  onPacket: ((packet: Packet) => void) | null;
  /** The close code. */
  closed: Promise<number>;
}

/** A device speaking MQTT bytes over a bare WebSocket, to control how bytes fall into messages. */
async function rawWebSocket(port: number): Promise<RawWebSocket> {
  const socket = new WebSocket(`ws://127.0.0.1:${port}/mqtt`, 'mqtt');
  const parser = mqttPacket.parser();
  const queued: Packet[] = [];
  const waiting: ((packet: Packet) => void)[] = [];
  const raw: RawWebSocket = {
    socket,
    onPacket: null,
    next: () => new Promise((resolve) => (queued.length > 0 ? resolve(queued.shift()!) : waiting.push(resolve))),
    closed: new Promise((resolve) => socket.once('close', (code) => resolve(code))),
  };
  parser.on('packet', (packet: Packet) => {
    if (raw.onPacket !== null) raw.onPacket(packet);
    else if (waiting.length > 0) waiting.shift()!(packet);
    else queued.push(packet);
  });
  socket.on('message', (data: Buffer) => parser.parse(data));
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', reject);
  });
  expect(socket.protocol).toBe('mqtt');
  return raw;
}
