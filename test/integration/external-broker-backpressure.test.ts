import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqttPacket from 'mqtt-packet';
import { afterEach, expect, it } from 'vitest';
import { MAX_PENDING_BYTES } from '../../cloud-hub/external-broker.js';
import { resolveRoute } from '../../cloud-hub/main.js';
import { quietLogger } from '../../shared/logger.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';
import { connectClient, eventually, removePki, startChain, testPki } from '../support/chain.js';
import { describeWithMosquitto, freePort, Mosquitto } from '../support/mosquitto.js';

const PUBLISHES = 2000;
const PAYLOAD_BYTES = 1000;

describeWithMosquitto('a device on an external broker that is slow to answer', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  it('is held back at a bounded number of bytes while the hub dials, then arrives complete and in order', async () => {
    const { pki } = await testPki();
    // Mosquitto runs as its own user: the TLS files must be readable by it.
    const tlsDir = mkdtempSync(join(tmpdir(), 'edgemux-broker-tls-'));
    cleanups.push(async () => rmSync(tlsDir, { recursive: true, force: true }));
    chmodSync(tlsDir, 0o755);
    const file = (name: string, pem: string): string => {
      const path = join(tlsDir, name);
      writeFileSync(path, pem);
      chmodSync(path, 0o644);
      return path;
    };
    const ca = file('ca.pem', pki.ca);
    const tlsPort = await freePort();
    const mosquitto = await Mosquitto.start({
      extraConfig: [`listener ${tlsPort} 127.0.0.1`, `cafile ${ca}`, `certfile ${file('cert.pem', pki.hub.cert)}`, `keyfile ${file('key.pem', pki.hub.key)}`],
    });
    cleanups.push(() => mosquitto.remove());

    const route = resolveRoute(
      { match: { clientId: 'slow-*' }, backend: { brokers: [{ url: `mqtts://127.0.0.1:${tlsPort}`, ca, rejectUnauthorized: true }], healthCheckMs: 0 } },
      0,
      quietLogger('routes'),
    );
    const chain = await startChain({ hub: { routes: [route] } });
    cleanups.push(() => chain.close());

    const app = await connectClient(mosquitto.port, { clientId: 'slow-app' });
    cleanups.push(() => app.endAsync(true));
    await app.subscribeAsync('slow/#', { qos: 1 });
    const received: number[] = [];
    app.on('message', (_topic, payload) => received.push(payload.readUInt32BE(0)));

    // The kernel completes the TCP handshake of a stopped Mosquitto; its TLS
    // handshake never comes, so the hub keeps dialling.
    mosquitto.pause();
    cleanups.push(async () => mosquitto.resume());

    // MQTT 3.1.1 §3.1.4 lets a client send on without waiting for CONNACK: a device that does.
    const device = net.connect(chain.devicePort, '127.0.0.1');
    cleanups.push(async () => device.destroy());
    device.on('data', () => {});
    device.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'slow-1', clean: true, keepalive: 60 }));
    for (let seq = 0; seq < PUBLISHES; seq++) {
      const payload = Buffer.alloc(PAYLOAD_BYTES);
      payload.writeUInt32BE(seq, 0);
      device.write(mqttPacket.generate({ cmd: 'publish', topic: 'slow/1', payload, qos: 1, messageId: (seq % 65535) + 1, retain: false, dup: false }));
    }

    // Below MAX_PENDING_BYTES the hub grants credit; past it the agent may send
    // the rest of one stream window, overshooting by at most one packet.
    const bound = MAX_PENDING_BYTES + TUNNEL_DEFAULTS.streamWindow + PAYLOAD_BYTES + 64;
    const heldAtHub = (): number => chain.hub.stats().brokerHeldBytes;
    const creditHeldBack = (): boolean => [...chain.hub.sessions].some((session) => session.heldCredit > 0);
    const agentPausedDevice = (): boolean => [...chain.agent.devices].some((connection) => connection.socket.isPaused());
    await eventually(() => creditHeldBack() || heldAtHub() > bound, 5000, 'the hub to hold back credit');
    expect(heldAtHub()).toBeLessThanOrEqual(bound);
    await eventually(agentPausedDevice, 5000, 'the agent to stop reading the device');
    expect(heldAtHub()).toBeGreaterThanOrEqual(MAX_PENDING_BYTES);
    expect(heldAtHub()).toBeLessThanOrEqual(bound);
    expect(received).toEqual([]);

    mosquitto.resume();
    await eventually(() => received.length >= PUBLISHES, 10_000, `all ${PUBLISHES} publishes at the application`);
    expect(received).toEqual(Array.from({ length: PUBLISHES }, (_, seq) => seq));
    await eventually(() => heldAtHub() === 0, 2000, 'nothing held at the hub');
  });
});
