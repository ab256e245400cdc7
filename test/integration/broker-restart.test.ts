import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { MqttClient } from 'mqtt';
import type { IDisconnectPacket } from 'mqtt-packet';
import { pino } from 'pino';
import { afterAll, expect, it } from 'vitest';
import type { RouteConfig } from '../../cloud-hub/config.js';
import { ExternalBrokerLink, MAX_PENDING_BYTES } from '../../cloud-hub/external-broker.js';
import { resolveRoute } from '../../cloud-hub/main.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';
import { type Chain, connectClient, eventually, removePki, startChain } from '../support/chain.js';
import { describeWithMosquitto, Mosquitto } from '../support/mosquitto.js';

const PERSISTENT = ['keep-1', 'keep-2', 'keep-3'];
const CLEAN = ['fresh-1', 'fresh-2', 'fresh-3'];
const PUBLISH_EVERY_MS = 20;
const DOWNTIME_MS = 2000;

interface LogLine {
  msg: string;
  time: number;
  clientId?: string;
  awayMs?: number;
  resent?: number;
  resubscribed?: number;
  sessionPresent?: boolean;
}

/** The route's own log, kept to read how the reconnections went. */
function collectingLogger(lines: LogLine[]): pino.Logger {
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  return pino({ level: 'debug' }, sink);
}

describeWithMosquitto('a device whose external broker restarts', () => {
  afterAll(removePki);

  it('stays connected, loses no QoS 1 message and keeps its subscriptions; a device refused afterwards is disconnected', async () => {
    const mosquitto = await Mosquitto.start({ persistence: true, passwords: { dev: 'dev-pass', app: 'app-pass', doomed: 'doomed-pass' } });
    const lines: LogLine[] = [];
    const routeConfig: RouteConfig = {
      match: { clientId: '*' },
      backend: { brokers: [{ url: mosquitto.url, rejectUnauthorized: true }], healthCheckMs: 0, reconnectGraceMs: 15_000 },
    };
    const chain: Chain = await startChain({ hub: { routes: [resolveRoute(routeConfig, 0, collectingLogger(lines))] } });
    const clients: MqttClient[] = [];
    try {
      // The application sees Mosquitto directly, with a persistent session, so it too gets every message across the restart.
      const app = await connectClient(mosquitto.port, { clientId: 'restart-app', username: 'app', password: 'app-pass', clean: false, reconnectPeriod: 100 });
      clients.push(app);
      await app.subscribeAsync('tele/#', { qos: 1 });
      const seen = new Map<string, number[]>();
      // The application's own connection drops too: Mosquitto sends it again what it had not acknowledged, with DUP set.
      let redeliveredToApp = 0;
      app.on('message', (topic, payload, packet) => {
        const id = topic.slice('tele/'.length);
        seen.set(id, [...(seen.get(id) ?? []), Number(payload.toString())]);
        if (packet.dup) redeliveredToApp++;
      });

      const ids = [...PERSISTENT, ...CLEAN];
      const devices = new Map<string, MqttClient>();
      const drops: string[] = [];
      const commands = new Map<string, string[]>();
      for (const id of ids) {
        const device = await chain.device({ clientId: id, username: 'dev', password: 'dev-pass', clean: CLEAN.includes(id), keepalive: 30 });
        devices.set(id, device);
        device.on('close', () => drops.push(`${id} close`));
        device.on('offline', () => drops.push(`${id} offline`));
        commands.set(id, []);
        device.on('message', (topic, payload) => {
          if (topic === `cmd/${id}`) commands.get(id)!.push(payload.toString());
        });
        await device.subscribeAsync(`cmd/${id}`, { qos: 1 });
      }
      // An MQTT 5 device whose credentials will not be valid after the restart.
      const doomed = await chain.device({ clientId: 'doomed', username: 'doomed', password: 'doomed-pass', protocolVersion: 5, clean: false });
      const doomedDisconnect = new Promise<IDisconnectPacket>((resolve) => doomed.once('disconnect', resolve));
      const doomedClosed = new Promise<void>((resolve) => doomed.once('close', () => resolve()));

      // Every device publishes a numbered QoS 1 message every 20 ms, through the restart and after it.
      let publishing = true;
      const acked = new Map<string, Promise<unknown>[]>();
      const publishers = ids.map(async (id) => {
        const device = devices.get(id)!;
        const pending: Promise<unknown>[] = [];
        acked.set(id, pending);
        for (let seq = 0; publishing; seq++) {
          const published = device.publishAsync(`tele/${id}`, String(seq), { qos: 1 });
          // Awaited below; a device that was closed fails there, not as an unhandled rejection.
          published.catch(() => {});
          pending.push(published);
          await new Promise((resolve) => setTimeout(resolve, PUBLISH_EVERY_MS));
        }
      });

      await new Promise((resolve) => setTimeout(resolve, 500));
      await mosquitto.stop();
      const stoppedAt = Date.now();
      // What waits at the hub while the broker is away stays within the bound that pauses the agent's reading.
      let mostHeld = 0;
      const sampler = setInterval(() => {
        for (const session of chain.hub.sessions) mostHeld = Math.max(mostHeld, session.link?.heldBytes ?? 0);
      }, 50);
      execFileSync('mosquitto_passwd', ['-D', join(mosquitto.dir, 'passwd'), 'doomed'], { env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/usr/bin` } });
      await new Promise((resolve) => setTimeout(resolve, DOWNTIME_MS));
      const startedAt = Date.now();
      clearInterval(sampler);
      expect(mostHeld).toBeGreaterThan(0);
      expect(mostHeld).toBeLessThanOrEqual(MAX_PENDING_BYTES + TUNNEL_DEFAULTS.streamWindow);
      await mosquitto.restart();
      const links = (): ExternalBrokerLink[] =>
        [...chain.hub.sessions].filter((session) => ids.includes(session.clientId)).map((session) => session.link as ExternalBrokerLink);
      const allBack = (): boolean => links().length === ids.length && links().every((link) => link.reconnects === 1);
      await eventually(() => drops.length > 0 || allBack(), 15_000, 'every device reconnected once');
      // 0 device disconnects.
      expect(drops).toEqual([]);
      await new Promise((resolve) => setTimeout(resolve, 1000));
      publishing = false;
      await Promise.all(publishers);
      for (const id of ids) await Promise.all(acked.get(id)!);

      expect(drops).toEqual([]);
      for (const device of devices.values()) expect(device.connected).toBe(true);

      // 0 lost QoS 1 messages; a duplicate only where the hub resent a message the broker had not acknowledged.
      let duplicates = 0;
      for (const id of ids) {
        const published = acked.get(id)!.length;
        await eventually(() => new Set(seen.get(id) ?? []).size === published, 10_000, `all ${published} messages of ${id}`);
        const got = seen.get(id)!;
        expect([...new Set(got)].sort((a, b) => a - b)).toEqual(Array.from({ length: published }, (_, seq) => seq));
        duplicates += got.length - new Set(got).size;
      }
      const restored = lines.filter((line) => line.msg === 'broker connection restored' && ids.includes(line.clientId ?? ''));
      expect(restored).toHaveLength(ids.length);
      const resent = restored.reduce((sum, line) => sum + (line.resent ?? 0), 0);
      expect(duplicates).toBeLessThanOrEqual(resent + redeliveredToApp);
      // Persistent devices found their sessions; clean ones had their subscriptions restored for them.
      for (const line of restored) {
        expect(line.sessionPresent).toBe(PERSISTENT.includes(line.clientId!));
        if (CLEAN.includes(line.clientId!)) expect(line.resubscribed).toBe(1);
      }

      // Subscriptions work after the restart for persistent and clean devices alike.
      for (const id of ids) await app.publishAsync(`cmd/${id}`, `after-${id}`, { qos: 1 });
      await eventually(() => ids.every((id) => commands.get(id)!.includes(`after-${id}`)), 5000, 'a command at every device');

      // The device refused on reconnection is disconnected, told why in MQTT 5: bad user name or password (0x86) is "not authorized" in a DISCONNECT.
      expect((await doomedDisconnect).reasonCode).toBe(0x87);
      await doomedClosed;

      const reconnectedAfter = restored.map((line) => line.time - startedAt).sort((a, b) => a - b);
      process.stdout.write(
        `broker restart: down ${startedAt - stoppedAt} ms; devices back ${reconnectedAfter[0]}–${reconnectedAfter.at(-1)} ms after Mosquitto started; ` +
          `away ${Math.min(...restored.map((line) => line.awayMs!))}–${Math.max(...restored.map((line) => line.awayMs!))} ms; ` +
          `resent by the hub ${resent}, redelivered to the application ${redeliveredToApp}, duplicates at the application ${duplicates}, messages ${[...seen.values()].reduce((sum, got) => sum + got.length, 0)}\n`,
      );
    } finally {
      for (const client of clients) client.end(true);
      await chain.close();
      await mosquitto.remove();
    }
  }, 60_000);

  it('disconnects devices whose broker stays away past reconnectGraceMs, MQTT 5 ones with a DISCONNECT', async () => {
    const mosquitto = await Mosquitto.start();
    const routeConfig: RouteConfig = {
      match: { clientId: '*' },
      backend: { brokers: [{ url: mosquitto.url, rejectUnauthorized: true }], healthCheckMs: 0, reconnectGraceMs: 1000 },
    };
    const lines: LogLine[] = [];
    const chain = await startChain({ hub: { routes: [resolveRoute(routeConfig, 0, collectingLogger(lines))] } });
    try {
      const v4 = await chain.device({ clientId: 'gone-4', protocolVersion: 4 });
      const v5 = await chain.device({ clientId: 'gone-5', protocolVersion: 5 });
      const closedAt = (device: MqttClient): Promise<number> => new Promise((resolve) => device.once('close', () => resolve(Date.now())));
      const v4Closed = closedAt(v4);
      const v5Closed = closedAt(v5);
      const v5Disconnect = new Promise<IDisconnectPacket>((resolve) => v5.once('disconnect', resolve));
      await mosquitto.stop();
      const stoppedAt = Date.now();
      expect((await v5Disconnect).reasonCode).toBe(0x80);
      for (const closed of [await v4Closed, await v5Closed]) {
        expect(closed - stoppedAt).toBeGreaterThanOrEqual(900);
        expect(closed - stoppedAt).toBeLessThan(4000);
      }
      expect(lines.filter((line) => line.msg === 'device disconnected with its broker connection')).toHaveLength(2);
    } finally {
      await chain.close();
      await mosquitto.remove();
    }
  }, 30_000);
});
