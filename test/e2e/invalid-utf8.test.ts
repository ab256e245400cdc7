import type { MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, removePki, startChain } from '../support/chain.js';
import { rawDevice } from '../support/raw-mqtt.js';

/** The packet with its first X replaced by `byte`: lengths stay as they are. */
function withByte(packet: Buffer, byte: number): Buffer {
  const bytes = Buffer.from(packet);
  bytes[bytes.indexOf('X')] = byte;
  return bytes;
}

function connectWithClientId(raw: number[]): Buffer {
  // The client ID is the last field: only its length prefix and the packet's remaining length change.
  const clientId = Buffer.concat([Buffer.from('dev-'), Buffer.from(raw)]);
  const head = mqttPacket.generate({ cmd: 'connect', clientId: '', clean: true, keepalive: 30, protocolVersion: 4 });
  const variableHeader = head.subarray(2, head.length - 2);
  const body = Buffer.concat([variableHeader, Buffer.from([clientId.length >> 8, clientId.length & 0xff]), clientId]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

function nextMessage(client: MqttClient): Promise<string> {
  return new Promise((resolve) => client.once('message', (topic) => resolve(topic)));
}

describe('invalid UTF-8 from devices (MQTT 3.1.1 §1.5.3, 5.0 §1.5.4)', () => {
  let chain: Chain;
  beforeEach(async () => {
    chain = await startChain({ agent: { tunnels: 1 } });
  });
  afterEach(async () => {
    await chain.close();
  });
  afterAll(removePki);

  it('closes a device whose CONNECT client ID is ill-formed UTF-8 or holds U+0000, without a CONNACK and before the hub hears of it', async () => {
    // 0xFF and 0xFE would both decode to U+FFFD: two devices, one session.
    for (const raw of [[0xff], [0xfe], [0xed, 0xa0, 0x80], [0x00], [0xc0, 0xaf]]) {
      const device = await rawDevice(chain.devicePort);
      device.socket.write(connectWithClientId(raw));
      await device.closed;
      expect(Buffer.concat(device.received), Buffer.from(raw).toString('hex')).toHaveLength(0);
    }
    expect(chain.hub.stats().sessions).toBe(0);
    // A well-formed non-ASCII client ID is fine.
    const device = await chain.device({ clientId: 'gerät-ü' });
    expect(device.connected).toBe(true);
  });

  it('closes a device that publishes to an ill-formed topic, which never reaches the broker', async () => {
    const app = await chain.app({ clientId: 'watcher' });
    await app.subscribeAsync('up/#', { qos: 0 });
    const bad = await rawDevice(chain.devicePort);
    bad.socket.write(mqttPacket.generate({ cmd: 'connect', clientId: 'bad-topic', clean: true, keepalive: 30, protocolVersion: 4 }));
    bad.socket.write(withByte(mqttPacket.generate({ cmd: 'publish', topic: 'up/X', payload: Buffer.from('forged'), qos: 0, retain: false, dup: false }), 0xff));
    await bad.closed;

    // Same agent, same tunnel, same broker: had the bad PUBLISH gone through, it would arrive first.
    const first = nextMessage(app);
    const good = await chain.device({ clientId: 'good-topic' });
    await good.publishAsync('up/ok', 'fine', { qos: 1 });
    expect(await first).toBe('up/ok');
  });
});
