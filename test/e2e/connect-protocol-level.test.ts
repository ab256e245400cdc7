import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, removePki, startChain } from '../support/chain.js';
import { connectPacket as connect, rawDeviceBytes as rawDevice } from '../support/raw-mqtt.js';

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
