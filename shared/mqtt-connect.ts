import mqttPacket, { type IConnectPacket, type Packet } from 'mqtt-packet';
import { EdgemuxError } from './errors.js';
import { isMqttString } from './mqtt-utf8.js';

/**
 * One parser serves every CONNECT: each call hands it exactly one whole
 * packet, so it is back at a packet boundary afterwards, and a connect storm
 * does not build a parser per device.
 */
let parsed: Packet | undefined;
let failure: Error | undefined;

function newParser(): ReturnType<typeof mqttPacket.parser> {
  const parser = mqttPacket.parser();
  parser.on('packet', (packet: Packet) => {
    parsed = packet;
  });
  parser.on('error', (err: Error) => {
    failure = err;
  });
  return parser;
}

let sharedParser = newParser();

/**
 * Parses one whole CONNECT packet; throws E_MQTT_MALFORMED when mqtt-packet
 * cannot, or when the client ID, will topic or user name is not a
 * well-formed MQTT string (mqtt-packet would decode it with replacement
 * characters, and two distinct client IDs would become one).
 */
export function parseConnect(bytes: Buffer): IConnectPacket {
  parsed = undefined;
  failure = undefined;
  sharedParser.parse(bytes);
  const packet = parsed as Packet | undefined;
  const error = failure as Error | undefined;
  if (error !== undefined || packet === undefined) {
    // A failed parse can leave the parser mid-packet: the next CONNECT gets a fresh one.
    sharedParser = newParser();
    throw new EdgemuxError('E_MQTT_MALFORMED', `malformed CONNECT: ${error?.message ?? 'incomplete packet'}`);
  }
  if (packet.cmd !== 'connect') {
    throw new EdgemuxError('E_MQTT_PROTOCOL', `expected CONNECT, got ${packet.cmd}`);
  }
  for (const { field, start, end } of connectStrings(bytes, packet.protocolVersion ?? 4)) {
    if (!isMqttString(bytes, start, end)) {
      throw new EdgemuxError('E_MQTT_MALFORMED', `malformed CONNECT: ${field} is not well-formed UTF-8 or contains U+0000 (MQTT 3.1.1 §1.5.3)`);
    }
  }
  return packet;
}

interface StringField {
  field: 'client ID' | 'will topic' | 'user name';
  start: number;
  end: number;
}

/**
 * Where the strings a broker keys on lie in a CONNECT that mqtt-packet has
 * accepted (MQTT 3.1.1 §3.1, MQTT 5 §3.1): the layout is known to be sound,
 * so this only walks the length prefixes.
 */
function connectStrings(bytes: Buffer, protocolVersion: number): StringField[] {
  let offset = 1;
  const varint = (): number => {
    let value = 0;
    let multiplier = 1;
    let byte: number;
    do {
      byte = bytes[offset++];
      value += (byte & 0x7f) * multiplier;
      multiplier *= 128;
    } while ((byte & 0x80) !== 0);
    return value;
  };
  const lengthPrefixed = (): { start: number; end: number } => {
    const start = offset + 2;
    const end = start + bytes.readUInt16BE(offset);
    offset = end;
    return { start, end };
  };
  varint();
  lengthPrefixed();
  offset++;
  const flags = bytes[offset++];
  offset += 2;
  // `offset += varint()` would add to the offset read before varint() moved it.
  const skipProperties = (): void => {
    const length = varint();
    offset += length;
  };
  if (protocolVersion === 5) skipProperties();
  const fields: StringField[] = [{ field: 'client ID', ...lengthPrefixed() }];
  if ((flags & 0x04) !== 0) {
    if (protocolVersion === 5) skipProperties();
    fields.push({ field: 'will topic', ...lengthPrefixed() });
    lengthPrefixed();
  }
  if ((flags & 0x80) !== 0) fields.push({ field: 'user name', ...lengthPrefixed() });
  return fields;
}
