import fc from 'fast-check';
import mqttPacket, { type IConnackPacket, type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { parseConnack, withAssignedClientId } from '../../shared/connack.js';

function connackV5(packet: Omit<IConnackPacket, 'cmd'>): Buffer {
  return mqttPacket.generate({ cmd: 'connack', ...packet }, { protocolVersion: 5 });
}

/** Every packet in `bytes`, parsed as MQTT 5. */
function parseAll(bytes: Buffer): Packet[] {
  const packets: Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  parser.on('packet', (packet: Packet) => packets.push(packet));
  parser.on('error', (err: Error) => {
    throw err;
  });
  parser.parse(bytes);
  return packets;
}

const brokerProperties: IConnackPacket['properties'] = {
  sessionExpiryInterval: 300,
  receiveMaximum: 20,
  maximumQoS: 1,
  retainAvailable: true,
  maximumPacketSize: 65536,
  topicAliasMaximum: 10,
  reasonString: 'welcome',
  userProperties: { site: 'berlin', tier: ['a', 'b'] },
  wildcardSubscriptionAvailable: true,
  serverKeepAlive: 45,
};

describe('the Assigned Client Identifier added to a CONNACK (MQTT 5 §3.2.2.3.7)', () => {
  it('is appended, and every property the broker sent stays as it was', () => {
    const original = connackV5({ sessionPresent: false, reasonCode: 0, properties: brokerProperties });
    const rewritten = withAssignedClientId(original, 'emx-agent-1-0123456789abcdef');
    const parsed = parseConnack(rewritten, 5)!;
    expect(parsed.reasonCode).toBe(0);
    expect(parsed.sessionPresent).toBe(false);
    expect(parsed.properties).toEqual({ ...brokerProperties, assignedClientIdentifier: 'emx-agent-1-0123456789abcdef' });
    // The broker's property bytes come through unchanged and in their order, with the new one behind them.
    const added = 3 + 'emx-agent-1-0123456789abcdef'.length;
    const brokerTail = original.subarray(original.length - 40);
    expect(rewritten.subarray(rewritten.length - added - 40, rewritten.length - added)).toEqual(brokerTail);
  });

  it('is added to a CONNACK without properties, including one written without a property length', () => {
    const bare = Buffer.from([0x20, 0x02, 0x00, 0x00]);
    for (const original of [connackV5({ sessionPresent: false, reasonCode: 0 }), bare]) {
      const parsed = parseConnack(withAssignedClientId(original, 'emx-a-1'), 5);
      expect(parsed?.properties).toEqual({ assignedClientIdentifier: 'emx-a-1' });
    }
  });

  it('leaves the broker’s own assignment, a refusal and bytes that are not a CONNACK alone', () => {
    const assignedByBroker = connackV5({ sessionPresent: false, reasonCode: 0, properties: { assignedClientIdentifier: 'auto-1234' } });
    const refusal = connackV5({ sessionPresent: false, reasonCode: 0x87 });
    const publish = mqttPacket.generate({ cmd: 'publish', topic: 't', payload: 'x', qos: 0, dup: false, retain: false }, { protocolVersion: 5 });
    for (const bytes of [assignedByBroker, refusal, publish, Buffer.from([0x20]), Buffer.from([0x20, 0x05, 0x00])]) {
      expect(withAssignedClientId(bytes, 'emx-a-1')).toBe(bytes);
    }
  });

  it('round-trips any client ID and any broker properties, with what followed the CONNACK kept behind it', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'grapheme', maxLength: 300 }),
        fc.boolean(),
        fc.dictionary(fc.string({ minLength: 1, maxLength: 20 }), fc.string({ maxLength: 60 }), { maxKeys: 8 }),
        (clientId, sessionPresent, userProperties) => {
          const properties = Object.keys(userProperties).length > 0 ? { userProperties } : undefined;
          const original = connackV5({ sessionPresent, reasonCode: 0, ...(properties ? { properties } : {}) });
          const trailer = mqttPacket.generate({ cmd: 'pingresp' });
          const [connack, next] = parseAll(withAssignedClientId(Buffer.concat([original, trailer]), clientId)) as [IConnackPacket, Packet];
          expect(connack.sessionPresent).toBe(sessionPresent);
          expect(connack.properties).toEqual({ ...properties, assignedClientIdentifier: clientId });
          expect(next.cmd).toBe('pingresp');
        },
      ),
    );
  });
});
