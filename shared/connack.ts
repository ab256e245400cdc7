import mqttPacket, { type IConnackPacket, type Packet } from 'mqtt-packet';
import { encodeVariableByteInteger } from './mqtt-framing.js';

export type RefusalKind =
  | 'unsupported-protocol'
  | 'identifier-rejected'
  | 'server-unavailable'
  | 'not-authorized'
  | 'quota-exceeded'
  | 'connection-rate-exceeded'
  | 'use-another-server';

/** Return codes of MQTT 3.1.1 §3.2.2.3 and reason codes of MQTT 5 §3.2.2.2 for each refusal. */
const CODES: Record<RefusalKind, { v4: number; v5: number }> = {
  'unsupported-protocol': { v4: 1, v5: 0x84 },
  'identifier-rejected': { v4: 2, v5: 0x85 },
  'server-unavailable': { v4: 3, v5: 0x88 },
  'not-authorized': { v4: 5, v5: 0x87 },
  // MQTT 3.1.1 has no code for a limit: server unavailable makes a client back off.
  'quota-exceeded': { v4: 3, v5: 0x97 },
  'connection-rate-exceeded': { v4: 3, v5: 0x9f },
  // 3.1.1 has no redirection: server unavailable makes the device back off and retry.
  'use-another-server': { v4: 3, v5: 0x9c },
};

/** A CONNACK refusing a device, in the device's own protocol version. */
export function refusalConnack(protocolVersion: number, kind: RefusalKind): Buffer {
  if (protocolVersion === 5) {
    return mqttPacket.generate({ cmd: 'connack', reasonCode: CODES[kind].v5, sessionPresent: false }, { protocolVersion: 5 });
  }
  return mqttPacket.generate({ cmd: 'connack', returnCode: CODES[kind].v4, sessionPresent: false });
}

/** Parses one whole CONNACK; null when the bytes are not one. */
export function parseConnack(bytes: Buffer, protocolVersion: number): IConnackPacket | null {
  const parser = mqttPacket.parser({ protocolVersion });
  let parsed: Packet | null = null;
  parser.on('packet', (packet: Packet) => {
    parsed = packet;
  });
  parser.on('error', () => {
    parsed = null;
  });
  parser.parse(bytes);
  const packet = parsed as Packet | null;
  return packet !== null && packet.cmd === 'connack' ? packet : null;
}

/**
 * The keepalive that applies after a CONNACK: MQTT 5 §3.2.2.3.14 lets the
 * server replace the client's value with its own Server Keep Alive.
 */
export function effectiveKeepalive(requestedSeconds: number, connack: IConnackPacket | null): number {
  const serverKeepAlive = connack?.properties?.serverKeepAlive;
  return typeof serverKeepAlive === 'number' ? serverKeepAlive : requestedSeconds;
}

/** MQTT 5 §3.2.2.3.7: property identifier of the Assigned Client Identifier. */
const ASSIGNED_CLIENT_IDENTIFIER = 0x12;

/**
 * An accepting MQTT 5 CONNACK with an Assigned Client Identifier (§3.2.2.3.7)
 * for a device whose empty client ID was filled in before the broker saw it:
 * the broker received a named CONNECT, so only this side can tell the device
 * its name. The broker's bytes are kept as they are and the property is
 * appended. A refusal, a CONNACK that already assigns an identifier (the
 * broker's choice stands) or bytes that do not parse come back unchanged.
 */
export function withAssignedClientId(connack: Buffer, clientId: string): Buffer {
  if (connack.length < 2) return connack;
  const remaining = readVarint(connack, 1);
  const end = 1 + remaining.bytes + remaining.value;
  const parsed = parseConnack(connack.subarray(0, end), 5);
  if (parsed === null || parsed.reasonCode !== 0 || parsed.properties?.assignedClientIdentifier !== undefined) return connack;
  const body = connack.subarray(1 + remaining.bytes, end);
  // Acknowledge flags and reason code, then the properties; a CONNACK of two bytes has none.
  const properties = body.length > 2 ? readVarint(body, 2) : { value: 0, bytes: 0 };
  const existing = body.subarray(2 + properties.bytes, 2 + properties.bytes + properties.value);
  const id = Buffer.from(clientId, 'utf8');
  const added = Buffer.allocUnsafe(3 + id.length);
  added[0] = ASSIGNED_CLIENT_IDENTIFIER;
  added.writeUInt16BE(id.length, 1);
  id.copy(added, 3);
  const newBody = Buffer.concat([body.subarray(0, 2), encodeVariableByteInteger(existing.length + added.length), existing, added]);
  // Whatever followed the CONNACK in the same bytes follows it still.
  return Buffer.concat([connack.subarray(0, 1), encodeVariableByteInteger(newBody.length), newBody, connack.subarray(end)]);
}

/** Variable Byte Integer (MQTT 5 §1.5.5) at `offset`; stops at four bytes or the buffer's end, which parsing then refuses. */
function readVarint(buf: Buffer, offset: number): { value: number; bytes: number } {
  let value = 0;
  let multiplier = 1;
  let bytes = 0;
  while (bytes < 4 && offset + bytes < buf.length) {
    const byte = buf[offset + bytes++];
    value += (byte & 0x7f) * multiplier;
    if ((byte & 0x80) === 0) break;
    multiplier *= 128;
  }
  return { value, bytes };
}

