import net from 'node:net';
import mqttPacket from 'mqtt-packet';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, removePki, startChain } from '../support/chain.js';

/** A device speaking raw bytes: MQTT.js sends only the levels it knows. */
async function rawDevice(port: number): Promise<{ socket: net.Socket; received: () => Buffer; closed: Promise<void> }> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const chunks: Buffer[] = [];
  socket.on('data', (chunk) => chunks.push(chunk));
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { socket, received: () => Buffer.concat(chunks), closed };
}

function connect(clientId: string): Buffer {
  return mqttPacket.generate({ cmd: 'connect', clientId, clean: true, keepalive: 30, protocolVersion: 4 });
}

describe('a CONNECT of a protocol level the agent does not speak', () => {
  let chain: Chain;
  beforeEach(async () => {
    chain = await startChain();
  });
  afterEach(async () => {
    await chain.close();
  });
  afterAll(removePki);

  // Level 3 is MQTT 3.1's, which names itself MQIsdp: under the name MQTT it is no version.
  for (const level of [0, 2, 3, 6]) {
    it(`level ${level} gets CONNACK 0x01, unacceptable protocol version, before the close (MQTT 3.1.1 §3.1.2.2)`, async () => {
      const bytes = connect('dev-level');
      // Fixed header (2), protocol name length (2) and "MQTT" (4): the level is byte 8.
      bytes[8] = level;
      const device = await rawDevice(chain.devicePort);
      device.socket.write(bytes);
      await device.closed;
      expect(device.received()).toEqual(Buffer.from([0x20, 0x02, 0x00, 0x01]));
    });
  }
});
