import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IClientOptions } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { type EmbeddedBroker, startEmbeddedBroker } from '../../cloud-hub/embedded-broker.js';
import { CloudHub } from '../../cloud-hub/hub.js';
import { PasswordFile } from '../../cloud-hub/password-file.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { itWithMosquitto } from '../support/mosquitto.js';
import { type Chain, agentOptions, connectClient, eventually, hubOptions, removePki, startChain, testPki } from '../support/chain.js';

const dir = mkdtempSync(join(tmpdir(), 'edgemux-app-port-'));
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await removePki();
});

/** MQTT 3.1.1 §2.2.3, written out independently of the code under test. */
function remainingLength(length: number): Buffer {
  const bytes: number[] = [];
  let value = length;
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    bytes.push(byte);
  } while (value > 0);
  return Buffer.from(bytes);
}

/** The CONNACK return code an application is refused with, or 0 when it gets in. */
async function connackCode(port: number, options: IClientOptions): Promise<number> {
  try {
    const client = await connectClient(port, options);
    await client.endAsync(true);
    return 0;
  } catch (err) {
    return (err as { code?: number }).code ?? -1;
  }
}

/** A raw TCP client, and a promise that settles when the hub closes it (or after `timeoutMs`, as 'still open'). */
async function rawClient(port: number, timeoutMs: number): Promise<{ socket: net.Socket; closed: Promise<'closed' | 'still open'> }> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.on('error', () => {});
  // Read what the hub sends, so its closing the connection is seen.
  socket.resume();
  const closed = new Promise<'closed' | 'still open'>((resolve) => {
    const timer = setTimeout(() => resolve('still open'), timeoutMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve('closed');
    });
  });
  return { socket, closed };
}

describe('app port: packet size checked at the fixed header', () => {
  let embedded: EmbeddedBroker | null = null;
  afterEach(async () => {
    await embedded?.close();
    embedded = null;
  });

  it('closes a connection announcing a 250 MiB packet at once, before CONNECT, without reading its 64 MiB body', async () => {
    embedded = await startEmbeddedBroker({ appHost: '127.0.0.1', appPort: 0, appMaxPacketSize: 1024 * 1024 });
    let server: net.Socket | null = null;
    embedded.appServer.on('connection', (socket: net.Socket) => (server = socket));
    const { port } = embedded.appServer.address() as net.AddressInfo;
    const { socket, closed } = await rawClient(port, 3000);
    const started = Date.now();
    socket.write(Buffer.concat([Buffer.from([0x30]), remainingLength(250 * 1024 * 1024)]));
    const body = Buffer.alloc(1024 * 1024, 0x61);
    for (let i = 0; i < 64 && !socket.destroyed; i++) socket.write(body);
    expect(await closed).toBe('closed');
    expect(Date.now() - started).toBeLessThan(2000);
    // The hub stopped reading at the header: the body stayed in the kernel, not in the hub's memory.
    expect(server!.bytesRead).toBeLessThan(1024 * 1024);
  });

  it('lets a packet of exactly the limit through after CONNECT and closes one byte larger', async () => {
    const max = 4096;
    embedded = await startEmbeddedBroker({ appHost: '127.0.0.1', appPort: 0, appMaxPacketSize: max });
    const { port } = embedded.appServer.address() as net.AddressInfo;
    const watcher = await connectClient(port, { clientId: 'size-watcher' });
    await watcher.subscribeAsync('size/#', { qos: 0 });
    const sizes: number[] = [];
    watcher.on('message', (_topic, payload) => sizes.push(payload.length));

    const connect = mqttPacket.generate({ cmd: 'connect', protocolVersion: 4, clientId: 'raw-app', clean: true, keepalive: 60 });
    const publishOf = (total: number): Buffer => {
      // topic "size/x": 2-byte length + 6 bytes; remaining length takes 2 bytes for these sizes.
      const payload = Buffer.alloc(total - 1 - 2 - 8, 0x62);
      const packet = mqttPacket.generate({ cmd: 'publish', topic: 'size/x', payload, qos: 0, retain: false, dup: false });
      expect(packet.length).toBe(total);
      return packet;
    };
    const { socket, closed } = await rawClient(port, 2000);
    socket.write(connect);
    socket.write(publishOf(max));
    await eventually(() => sizes.length === 1, 3000, 'the packet at the limit');
    socket.write(publishOf(max + 1).subarray(0, 3));
    expect(await closed).toBe('closed');
    expect(sizes).toEqual([max - 11]);
    await watcher.endAsync(true);
  });
});

describe('app port: application credentials from a mosquitto_passwd file', () => {
  let chain: Chain | null = null;
  afterEach(async () => {
    await chain?.close();
    chain = null;
  });

  itWithMosquitto('admits users hashed by Mosquitto 2.x ($7$, PBKDF2) and 1.x ($6$, SHA-512), and refuses everyone else', async () => {
    const file = join(dir, 'passwords');
    execFileSync('mosquitto_passwd', ['-c', '-b', file, 'dashboard', 'correct horse']);
    execFileSync('mosquitto_passwd', ['-H', 'sha512', '-b', file, 'legacy', 'battery staple']);
    chain = await startChain({ hub: { appPasswords: PasswordFile.read(file, 'app.passwordFile') } });
    const port = chain.appPort;

    expect(await connackCode(port, { clientId: 'a1', username: 'dashboard', password: 'correct horse' })).toBe(0);
    expect(await connackCode(port, { clientId: 'a2', username: 'legacy', password: 'battery staple' })).toBe(0);
    expect(await connackCode(port, { clientId: 'a3', username: 'dashboard', password: 'correct horsE' })).toBe(4);
    expect(await connackCode(port, { clientId: 'a4', username: 'legacy', password: 'correct horse' })).toBe(4);
    expect(await connackCode(port, { clientId: 'a5', username: 'nobody', password: 'correct horse' })).toBe(4);
    expect(await connackCode(port, { clientId: 'a6', username: 'dashboard' })).toBe(4);
    // A password file makes credentials required on loopback too, as in Mosquitto.
    expect(await connackCode(port, { clientId: 'a7' })).toBe(5);

    // Devices behind the agent are authenticated by their agent's certificate, not by the file.
    const device = await chain.device({ clientId: 'pw-device' });
    const app = await chain.app({ clientId: 'pw-app', username: 'dashboard', password: 'correct horse' });
    await app.subscribeAsync('pw/#', { qos: 1 });
    const got = new Promise<string>((resolve) => app.once('message', (_topic, payload) => resolve(payload.toString())));
    await device.publishAsync('pw/1', 'through', { qos: 1 });
    expect(await got).toBe('through');
  });
});

describe("app port: an application cannot take a device's client ID", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
  });

  it('refuses a device ID while the device is connected and after it left, and the device keeps its session', async () => {
    const chain = await startChain();
    cleanups.push(() => chain.close());
    const device = await chain.device({ clientId: 'pump-7', clean: false });
    await device.subscribeAsync('pump-7/commands', { qos: 1 });
    const commands: string[] = [];
    device.on('message', (_topic, payload) => commands.push(payload.toString()));
    let deviceClosed = false;
    device.on('close', () => (deviceClosed = true));

    expect(await connackCode(chain.appPort, { clientId: 'pump-7' })).toBe(2);
    expect(await connackCode(chain.appPort, { clientId: 'pump-7', clean: false })).toBe(2);
    const app = await chain.app({ clientId: 'control-room' });
    await app.publishAsync('pump-7/commands', 'start', { qos: 1 });
    await eventually(() => commands.length === 1, 3000, 'the command to reach the device');
    expect(deviceClosed).toBe(false);

    await device.endAsync();
    await eventually(() => chain.hub.stats().sessions === 0, 3000, 'the device session to end');
    expect(await connackCode(chain.appPort, { clientId: 'pump-7', clean: false })).toBe(2);
    expect(await connackCode(chain.appPort, { clientId: 'pump-8' })).toBe(0);
  });

  it('still refuses it after a restart, from the registry, before the device returns', async () => {
    const { pki } = await testPki();
    const statePath = join(dir, 'hub.db');
    let hub = await CloudHub.start(hubOptions(pki, { statePath }));
    cleanups.push(() => hub.close());
    const agent = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port));
    await agent.pool.waitForTunnels(agent.pool.size);
    const device = await connectClient(agent.deviceAddress.port, { clientId: 'valve-3', clean: false });
    await device.endAsync();
    await agent.close();
    const { tunnelPort, appPort } = { tunnelPort: hub.tunnelAddress.port, appPort: hub.appAddress.port };
    await hub.close();

    hub = await CloudHub.start(hubOptions(pki, { statePath, tunnelPort, appPort }));
    expect(hub.stats().sessions).toBe(0);
    expect(await connackCode(appPort, { clientId: 'valve-3', clean: false })).toBe(2);
    expect(await connackCode(appPort, { clientId: 'valve-4', clean: false })).toBe(0);
  });
});

describe('app port: $SYS names no client', () => {
  let chain: Chain | null = null;
  afterEach(async () => {
    await chain?.close();
    chain = null;
  });

  it('publishes no connect, disconnect, subscribe or unsubscribe announcements with client IDs', async () => {
    chain = await startChain();
    const watcher = await chain.app({ clientId: 'sys-watcher' });
    const granted = await watcher.subscribeAsync({ '$SYS/#': { qos: 0 }, sentinel: { qos: 0 } });
    expect(granted.map((grant) => grant.qos)).toEqual([0, 0]);
    const seen: { topic: string; payload: string }[] = [];
    watcher.on('message', (topic, payload) => seen.push({ topic, payload: payload.toString() }));

    const device = await chain.device({ clientId: 'secret-device-id' });
    await device.subscribeAsync('secret/#');
    await device.unsubscribeAsync('secret/#');
    const other = await chain.app({ clientId: 'secret-app-id' });
    await other.subscribeAsync('x/#');
    await other.unsubscribeAsync('x/#');
    await other.endAsync();
    await device.endAsync();
    await eventually(() => chain!.hub.stats().sessions === 0, 3000, 'the device session to end');
    // Deliveries to one client keep their order: once the sentinel arrives, any announcement before it has too.
    await watcher.publishAsync('sentinel', 'last');
    await eventually(() => seen.some((message) => message.topic === 'sentinel'), 3000, 'the sentinel');

    const sys = seen.filter((message) => message.topic.startsWith('$SYS/'));
    for (const message of sys) {
      expect(message.topic).toMatch(/^\$SYS\/[^/]+\/(heartbeat|birth)$/);
      expect(message.payload).not.toMatch(/secret-|sys-watcher/);
    }
  });
});
