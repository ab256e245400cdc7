import mqttPacket from 'mqtt-packet';
import { pino } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, eventually, removePki, startChain } from '../support/chain.js';
import { connectPacket as connect, rawDeviceBytes as rawDevice } from '../support/raw-mqtt.js';

interface LogLine {
  msg: string;
  clientId?: string;
  reason?: string;
}

const CONNACK_ACCEPTED = Buffer.from([0x20, 0x02, 0x00, 0x00]);

describe('packets the broker refuses close the device with the reason logged', () => {
  let chain: Chain;
  let logs: LogLine[];
  beforeEach(async () => {
    logs = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    chain = await startChain({ hub: { log } });
  });
  afterEach(async () => {
    await chain.close();
  });
  afterAll(removePki);

  const cases: { name: string; packet: Buffer }[] = [
    { name: 'a wildcard in a PUBLISH topic', packet: mqttPacket.generate({ cmd: 'publish', topic: 'a/#', payload: Buffer.from('x'), qos: 0, retain: false, dup: false }) },
    // Topic "t", QoS bits 11.
    { name: 'QoS 3', packet: Buffer.from([0x36, 0x05, 0x00, 0x01, 0x74, 0x00, 0x01]) },
    { name: 'an empty PUBLISH topic', packet: Buffer.from([0x30, 0x03, 0x00, 0x00, 0x78]) },
    // SUBSCRIBE with a packet identifier and no filter (MQTT 3.1.1 §3.8.3-3).
    { name: 'a SUBSCRIBE without filters', packet: Buffer.from([0x82, 0x02, 0x00, 0x01]) },
  ];

  it.each(cases)('$name', async ({ packet }) => {
    const device = await rawDevice(chain.devicePort);
    device.socket.write(connect('dev-bad'));
    await eventually(() => device.received().equals(CONNACK_ACCEPTED), 5000, 'CONNACK');
    device.socket.write(packet);
    await device.closed;
    await eventually(() => logs.some((line) => line.msg === 'broker closed a client for a packet it refuses'), 5000, 'the log line');
    const line = logs.find((entry) => entry.msg === 'broker closed a client for a packet it refuses')!;
    expect(line.clientId).toBe('dev-bad');
    expect(line.reason).toBeTruthy();
    expect(chain.hub.stats().brokerClientErrors).toBe(1);
  });

  it('a device that ends its session normally logs nothing of the kind', async () => {
    const device = await chain.device({ clientId: 'dev-good' });
    await device.publishAsync('t', 'x', { qos: 1 });
    await device.endAsync();
    const abrupt = await chain.device({ clientId: 'dev-abrupt' });
    abrupt.stream.destroy();
    await eventually(() => chain.hub.stats().sessions === 0, 5000, 'sessions to end');
    expect(logs.filter((line) => line.msg === 'broker closed a client for a packet it refuses')).toEqual([]);
    expect(chain.hub.stats().brokerClientErrors).toBe(0);
  });
});
