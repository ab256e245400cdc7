import mqttPacket, { type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { BrokerPacketScanner } from '../../cloud-hub/broker-packet-scanner.js';
import { BrokerSessionKeeper } from '../../cloud-hub/broker-session-keeper.js';

const v4 = (packet: Packet): Buffer => mqttPacket.generate(packet);
const v5 = (packet: Packet): Buffer => mqttPacket.generate(packet, { protocolVersion: 5 });

function parse(bytes: Buffer, protocolVersion = 4): Packet {
  const parser = mqttPacket.parser({ protocolVersion });
  const packets: Packet[] = [];
  parser.on('packet', (packet: Packet) => packets.push(packet));
  parser.parse(bytes);
  expect(packets).toHaveLength(1);
  return packets[0];
}

const connect4 = v4({ cmd: 'connect', clientId: 'dev-1', protocolVersion: 4, clean: true, keepalive: 30 });
const connect5 = v5({ cmd: 'connect', clientId: 'dev-5', protocolVersion: 5, clean: true, keepalive: 30 });

function sent(keeper: BrokerSessionKeeper, packet: Buffer): Buffer {
  const action = keeper.fromDevice(packet);
  expect(action.kind).toBe('send');
  return (action as { packet: Buffer }).packet;
}

describe('BrokerPacketScanner', () => {
  const connack = v4({ cmd: 'connack', returnCode: 0, sessionPresent: false });
  const publish = v4({ cmd: 'publish', topic: 'a/b', payload: Buffer.from('payload'), qos: 1, messageId: 7, dup: false, retain: false });
  const suback = v4({ cmd: 'suback', messageId: 3, granted: [1] });
  const publish0 = v4({ cmd: 'publish', topic: 'x', payload: Buffer.alloc(300, 1), qos: 0, dup: false, retain: false });
  const stream = Buffer.concat([connack, publish, suback, publish0]);

  it('passes every byte through, in order, however the stream is cut, and swallows what the sink refuses', () => {
    for (let first = 1; first < stream.length; first++) {
      for (const second of [first + 1, first + 2, stream.length - 1]) {
        if (second <= first || second >= stream.length) continue;
        const scanner = new BrokerPacketScanner();
        const forwarded: Buffer[] = [];
        const controls: number[] = [];
        const publishes: [number, number][] = [];
        for (const chunk of [stream.subarray(0, first), stream.subarray(first, second), stream.subarray(second)]) {
          scanner.push(chunk, {
            forward: (bytes) => forwarded.push(Buffer.from(bytes)),
            control: (packet) => {
              controls.push(packet[0] >> 4);
              return packet[0] >> 4 !== 9;
            },
            publish: (qos, id) => publishes.push([qos, id]),
          });
        }
        expect(Buffer.concat(forwarded).equals(Buffer.concat([connack, publish, publish0])), `cut at ${first}, ${second}`).toBe(true);
        expect(controls).toEqual([2, 9]);
        expect(publishes).toEqual([[1, 7]]);
      }
    }
  });
});

describe('BrokerSessionKeeper', () => {
  it('resends unacknowledged PUBLISHes with DUP set and PUBRELs, with their identifiers, when the broker kept the session', () => {
    const keeper = new BrokerSessionKeeper(connect4);
    const publish = (messageId: number, qos: 1 | 2): Buffer =>
      v4({ cmd: 'publish', topic: 't', payload: Buffer.from(String(messageId)), qos, messageId, dup: false, retain: false });
    sent(keeper, publish(5, 1));
    sent(keeper, publish(6, 2));
    sent(keeper, publish(7, 1));
    expect(keeper.fromBroker(v4({ cmd: 'pubrec', messageId: 6 }))).toBe(true);
    sent(keeper, v4({ cmd: 'pubrel', messageId: 6 }));
    expect(keeper.fromBroker(v4({ cmd: 'puback', messageId: 7 }))).toBe(true);
    expect(keeper.inflightBytes).toBeGreaterThan(0);

    const again = keeper.reconnected(true).map((bytes) => parse(bytes));
    expect(again.map((packet) => [packet.cmd, packet.messageId, (packet as { dup?: boolean }).dup])).toEqual([
      ['publish', 5, true],
      ['pubrel', 6, false],
    ]);
    keeper.fromBroker(v4({ cmd: 'puback', messageId: 5 }));
    keeper.fromBroker(v4({ cmd: 'pubcomp', messageId: 6 }));
    expect(keeper.inflightBytes).toBe(0);
  });

  it('subscribes again to what the broker granted when the session was lost, under an identifier the device is not using, and swallows the SUBACK', () => {
    const keeper = new BrokerSessionKeeper(connect4);
    sent(keeper, v4({ cmd: 'subscribe', messageId: 10, subscriptions: [{ topic: 'cmd/dev-1', qos: 1 }, { topic: 'refused', qos: 1 }] }));
    expect(keeper.fromBroker(v4({ cmd: 'suback', messageId: 10, granted: [1, 0x80] }))).toBe(true);
    sent(keeper, v4({ cmd: 'subscribe', messageId: 11, subscriptions: [{ topic: 'gone', qos: 0 }] }));
    keeper.fromBroker(v4({ cmd: 'suback', messageId: 11, granted: [0] }));
    sent(keeper, v4({ cmd: 'unsubscribe', messageId: 12, unsubscriptions: ['gone'] }));
    // The UNSUBSCRIBE is still unanswered: it goes again too.
    const again = keeper.reconnected(false).map((bytes) => parse(bytes));
    expect(again).toHaveLength(2);
    const [restore, unsubscribe] = again as [mqttPacket.ISubscribePacket, mqttPacket.IUnsubscribePacket];
    expect(restore.subscriptions).toEqual([expect.objectContaining({ topic: 'cmd/dev-1', qos: 1 })]);
    // Below the device's latest identifier (12, still in flight): a client counting up reaches it last.
    expect(restore.messageId).toBe(11);
    expect(unsubscribe.cmd).toBe('unsubscribe');
    expect(keeper.fromBroker(v4({ cmd: 'suback', messageId: restore.messageId!, granted: [1] }))).toBe(false);
  });

  it('keeps a device’s acknowledgements of a lost session’s deliveries from the new session', () => {
    const keeper = new BrokerSessionKeeper(connect4);
    keeper.brokerPublished(3);
    keeper.brokerPublished(4);
    keeper.brokerPublished(5);
    keeper.reconnected(false);
    expect(keeper.fromDevice(v4({ cmd: 'puback', messageId: 3 })).kind).toBe('swallow');
    const answer = keeper.fromDevice(v4({ cmd: 'pubrec', messageId: 4 }));
    expect(answer.kind).toBe('answer');
    expect(parse((answer as { packet: Buffer }).packet)).toMatchObject({ cmd: 'pubrel', messageId: 4 });
    expect(keeper.fromDevice(v4({ cmd: 'pubcomp', messageId: 4 })).kind).toBe('swallow');
    // The new session sent its own message 5: the device's PUBACK is for it.
    keeper.brokerPublished(5);
    expect(keeper.fromDevice(v4({ cmd: 'puback', messageId: 5 })).kind).toBe('send');
  });

  it('gives a new broker connection the topic behind an MQTT 5 topic alias it does not know yet', () => {
    const keeper = new BrokerSessionKeeper(connect5);
    const publish = (topic: string, messageId: number): Buffer =>
      v5({ cmd: 'publish', topic, payload: Buffer.from('p'), qos: 1, messageId, dup: false, retain: false, properties: { topicAlias: 1, userProperties: { a: 'b' } } });
    sent(keeper, publish('site/meter', 1));
    keeper.fromBroker(v5({ cmd: 'puback', messageId: 1 }));
    expect(sent(keeper, publish('', 2))).toEqual(publish('', 2));
    keeper.fromBroker(v5({ cmd: 'puback', messageId: 2 }));
    const unacknowledged = publish('', 3);
    sent(keeper, unacknowledged);

    const [resent] = keeper.reconnected(true).map((bytes) => parse(bytes, 5)) as mqttPacket.IPublishPacket[];
    expect(resent).toMatchObject({ topic: 'site/meter', messageId: 3, dup: true, properties: { topicAlias: 1, userProperties: { a: 'b' } } });
    // The alias is known again from the resend on.
    expect(sent(keeper, publish('', 4))).toEqual(publish('', 4));
  });
});
