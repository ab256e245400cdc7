import mqttPacket from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { Namespaces } from '../../cloud-hub/routes.js';
import { assignClientId, assignedIdPrefix, isAssignedBy } from '../../shared/assigned-client-id.js';
import { isEdgemuxError } from '../../shared/errors.js';
import { parseConnect } from '../../shared/mqtt-connect.js';
import { streamPayloadProblem } from '../../shared/mqtt-framing.js';
import { isMqttString, topicProblem } from '../../shared/mqtt-utf8.js';

describe('assigned client IDs', () => {
  it('name exactly one agent, even when one agent ID is a prefix of another', () => {
    const ofSite2 = assignClientId(assignedIdPrefix('site-2'));
    expect(ofSite2).toMatch(/^emx-site-2-[0-9a-f]{16}$/);
    expect(isAssignedBy('site-2', ofSite2)).toBe(true);
    expect(isAssignedBy('site', ofSite2)).toBe(false);
    expect(isAssignedBy('site', 'emx-site-0123456789abcdef')).toBe(true);
    for (const forged of ['emx-site-0123456789abcdeF', 'emx-site-0123456789abcde', 'emx-site-0123456789abcdef0', 'emx-site-2-0123456789abcdef']) {
      expect(isAssignedBy('site', forged)).toBe(false);
    }
  });

  it('are exempt from namespace rules only for the agent that assigns them', () => {
    const namespaces = new Namespaces([{ agentId: '*', clientIds: ['plant-*'] }]);
    expect(namespaces.allows('agent', 'emx-agent-0123456789abcdef')).toBe(true);
    expect(namespaces.allows('agent', 'emx-agent-2-0123456789abcdef')).toBe(false);
    expect(namespaces.allows('agent-2', 'emx-agent-2-0123456789abcdef')).toBe(true);
  });
});

describe('MQTT strings (3.1.1 §1.5.3, 5.0 §1.5.4)', () => {
  it('accept well-formed UTF-8 and refuse U+0000, encoded surrogates, overlong forms and stray bytes', () => {
    expect(isMqttString(Buffer.from('dev-1'))).toBe(true);
    expect(isMqttString(Buffer.from('Gerät-ü-😀'))).toBe(true);
    expect(isMqttString(Buffer.from([0xef, 0xbf, 0xbd]))).toBe(true);
    for (const bad of [[0x64, 0x00], [0x64, 0xff], [0x64, 0xfe], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0xc3], [0xc3, 0xa4, 0x00]]) {
      expect(isMqttString(Buffer.from(bad)), Buffer.from(bad).toString('hex')).toBe(false);
    }
    expect(isMqttString(Buffer.from([0xff, 0x61, 0x62, 0xff]), 1, 3)).toBe(true);
  });

  it('are checked in CONNECT for the client ID, the will topic and the user name, in 3.1.1 and 5.0', () => {
    const cases: { field: string; packet: mqttPacket.IConnectPacket }[] = [
      { field: 'client ID', packet: { cmd: 'connect', clientId: 'dev-X', protocolVersion: 4 } },
      { field: 'will topic', packet: { cmd: 'connect', clientId: 'dev', protocolVersion: 4, will: { topic: 'w/X', payload: Buffer.from('X'), qos: 0, retain: false } } },
      { field: 'user name', packet: { cmd: 'connect', clientId: 'dev', protocolVersion: 5, username: 'uX', password: Buffer.from('X'), properties: { sessionExpiryInterval: 10 } } },
      { field: 'will topic', packet: { cmd: 'connect', clientId: 'dev', protocolVersion: 5, will: { topic: 'w/X', payload: Buffer.from('X'), qos: 0, retain: false, properties: { willDelayInterval: 5 } } } },
    ];
    for (const { field, packet } of cases) {
      const good = mqttPacket.generate(packet, { protocolVersion: packet.protocolVersion });
      expect(parseConnect(good).clientId).toBe(packet.clientId);
      for (const bad of [0x00, 0xff]) {
        const bytes = Buffer.from(good);
        // Only the string's X is replaced: payloads and passwords are binary and may hold anything.
        const at = bytes.indexOf(field === 'client ID' ? 'dev-X' : field === 'will topic' ? 'w/X' : 'uX') + (field === 'client ID' ? 4 : field === 'will topic' ? 2 : 1);
        bytes[at] = bad;
        let error: unknown;
        try {
          parseConnect(bytes);
        } catch (err) {
          error = err;
        }
        expect(isEdgemuxError(error, 'E_MQTT_MALFORMED'), `${field} ${bad}`).toBe(true);
        expect((error as Error).message).toContain(field);
      }
    }
  });
});

describe('topics from devices', () => {
  /** The packet with every X in its topic strings replaced by `byte`. */
  function withByte(packet: mqttPacket.Packet, protocolVersion: number, byte: number): Buffer {
    const bytes = Buffer.from(mqttPacket.generate(packet, { protocolVersion }));
    for (let at = bytes.indexOf('X'); at !== -1; at = bytes.indexOf('X', at + 1)) bytes[at] = byte;
    return bytes;
  }
  const packets: { type: number; protocolVersion: number; packet: mqttPacket.Packet }[] = [
    { type: 3, protocolVersion: 4, packet: { cmd: 'publish', topic: 'up/X', payload: Buffer.from('payload'), qos: 1, messageId: 7, retain: false, dup: false } },
    { type: 3, protocolVersion: 5, packet: { cmd: 'publish', topic: 'up/X', payload: Buffer.from('p'), qos: 0, retain: false, dup: false, properties: { contentType: 'text' } } },
    { type: 8, protocolVersion: 4, packet: { cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/#', qos: 1 }, { topic: 'b/X', qos: 0 }] } },
    { type: 8, protocolVersion: 5, packet: { cmd: 'subscribe', messageId: 1, properties: { subscriptionIdentifier: 3 }, subscriptions: [{ topic: 'a/+', qos: 1, nl: false, rap: false, rh: 0 }, { topic: 'X/b', qos: 2, nl: false, rap: false, rh: 0 }] } },
    { type: 10, protocolVersion: 4, packet: { cmd: 'unsubscribe', messageId: 2, unsubscriptions: ['a/#', 'b/X'] } },
    { type: 10, protocolVersion: 5, packet: { cmd: 'unsubscribe', messageId: 2, properties: { userProperties: { k: 'v' } }, unsubscriptions: ['X'] } },
  ];

  it('are refused in PUBLISH, SUBSCRIBE and UNSUBSCRIBE when not valid MQTT strings; payloads may hold anything', () => {
    for (const { type, protocolVersion, packet } of packets) {
      expect(topicProblem(withByte(packet, protocolVersion, 0x78), type, protocolVersion), packet.cmd).toBeNull();
      for (const bad of [0x00, 0xff]) expect(topicProblem(withByte(packet, protocolVersion, bad), type, protocolVersion), `${packet.cmd} v${protocolVersion}`).not.toBeNull();
    }
    const binaryPayload = mqttPacket.generate({ cmd: 'publish', topic: 'up', payload: Buffer.from([0xff, 0x00]), qos: 0, retain: false, dup: false });
    expect(topicProblem(binaryPayload, 3, 4)).toBeNull();
  });
});

describe('device stream payloads at the hub', () => {
  const connect = mqttPacket.generate({ cmd: 'connect', clientId: 'd', protocolVersion: 4 });
  const publish = mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.from('p'), qos: 0, retain: false, dup: false });

  it('start with one CONNECT, hold whole packets, and never carry another CONNECT', () => {
    expect(streamPayloadProblem(connect, true, 1024)).toBeNull();
    expect(streamPayloadProblem(Buffer.concat([connect, publish, publish]), true, 1024)).toBeNull();
    expect(streamPayloadProblem(publish, false, 1024)).toBeNull();
    expect(streamPayloadProblem(publish, true, 1024)).toBe('first packet of the stream is not CONNECT');
    expect(streamPayloadProblem(connect, false, 1024)).toBe('CONNECT after the first packet of the stream');
    expect(streamPayloadProblem(Buffer.concat([publish, connect]), false, 1024)).toBe('CONNECT after the first packet of the stream');
    expect(streamPayloadProblem(Buffer.concat([connect, connect]), true, 1024)).toBe('CONNECT after the first packet of the stream');
    expect(streamPayloadProblem(publish.subarray(0, publish.length - 1), false, 1024)).toBe('DATA payload ends inside an MQTT packet');
    expect(streamPayloadProblem(Buffer.from([0x30]), false, 1024)).toBe('DATA payload ends inside an MQTT packet');
    expect(streamPayloadProblem(Buffer.from([0x00, 0x00]), false, 1024)).toBe('packet type 0 is reserved');
  });
});
