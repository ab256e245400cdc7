import mqttPacket from 'mqtt-packet';
import { assignClientId } from '../shared/assigned-client-id.js';
import { refusalConnack } from '../shared/connack.js';
import { parseConnect } from '../shared/mqtt-connect.js';

export interface DeviceConnect {
  clientId: string;
  protocolVersion: 3 | 4 | 5;
  keepaliveSeconds: number;
  cleanSession: boolean;
  username?: string;
  /** The CONNECT to forward: the device's own bytes, or a rewrite when the agent assigned the client ID. */
  bytes: Buffer;
  clientIdAssigned: boolean;
}

/** Which CONNECT fields a device's certificate name replaces (as Mosquitto's use_identity_as_*). */
export type IdentityAs = 'clientId' | 'username' | 'both';

/** A device's name from its verified client certificate. */
export interface DeviceIdentity {
  name: string;
  as: IdentityAs;
}

export type ConnectVerdict =
  | { ok: true; connect: DeviceConnect }
  | { ok: false; reason: string; connack: Buffer };

export interface ConnectLimits {
  /** Longest client ID admitted, in characters (as aedes counts); longer ones get CONNACK identifier rejected. */
  maxClientIdLength: number;
}

/**
 * The levels each protocol name goes with: MQTT 3.1 is MQIsdp level 3, 3.1.1
 * and 5.0 are MQTT levels 4 and 5. A name with another's level (MQTT level 3)
 * is refused like an unknown level, as Mosquitto does; the broker behind the
 * hub would otherwise take it for a version it is not.
 */
const PROTOCOL_LEVELS: ReadonlyMap<string, ReadonlySet<number>> = new Map([
  ['MQIsdp', new Set([3])],
  ['MQTT', new Set([4, 5])],
]);

/**
 * The protocol level of a CONNECT whose protocol name is MQTT's but whose
 * level is none this side speaks under that name; null otherwise. MQTT
 * 3.1.1 §3.1.2.2: the server answers CONNACK 0x01 and closes. That CONNACK is in 3.1.1 form, as
 * Mosquitto's is: a device of an unknown version can read no other, and one
 * that speaks 5.0 takes it as the refusal it is.
 */
function unsupportedLevel(bytes: Buffer): number | null {
  let offset = 1;
  while (offset < 5 && (bytes[offset] & 0x80) !== 0) offset++;
  offset++;
  if (offset + 2 > bytes.length) return null;
  const nameEnd = offset + 2 + bytes.readUInt16BE(offset);
  if (nameEnd >= bytes.length) return null;
  const name = bytes.toString('latin1', offset + 2, nameEnd);
  const levels = PROTOCOL_LEVELS.get(name);
  if (levels === undefined) return null;
  const level = bytes[nameEnd];
  return levels.has(level) ? null : level;
}

/**
 * Decides how a device's CONNECT enters the tunnel. The hub demultiplexes by
 * client ID, so an empty one needs care: MQTT 3.1.1 §3.1.3.1 lets the server
 * assign one when clean session is set and requires refusal otherwise.
 * Throws E_MQTT_MALFORMED for a CONNECT the device must be disconnected for
 * without a CONNACK, such as a client ID that is not well-formed UTF-8.
 *
 * A device known by its certificate is named by it: the name replaces what
 * the device put in the CONNECT, in the bytes themselves, because those are
 * what the hub checks and the broker reads.
 */
export function admitConnect(bytes: Buffer, assignPrefix: string, limits: ConnectLimits, identity: DeviceIdentity | null = null): ConnectVerdict {
  const level = unsupportedLevel(bytes);
  if (level !== null) {
    return { ok: false, reason: `unsupported protocol level ${level}`, connack: refusalConnack(4, 'unsupported-protocol') };
  }
  const packet = parseConnect(bytes);
  const protocolVersion = packet.protocolVersion ?? 4;
  const cleanSession = packet.clean ?? true;
  let clientId = packet.clientId;
  let username = packet.username;
  if (clientId.length > limits.maxClientIdLength) {
    // Every ID admitted is kept by the hub; MQTT allows 65 535 bytes.
    return {
      ok: false,
      reason: `client ID of ${clientId.length} characters is longer than maxClientIdLength (${limits.maxClientIdLength})`,
      connack: refusalConnack(protocolVersion, 'identifier-rejected'),
    };
  }
  let forwarded = bytes;
  let clientIdAssigned = false;
  if (identity !== null) {
    if (identity.as !== 'username') clientId = identity.name;
    if (identity.as !== 'clientId') username = identity.name;
    if (clientId !== packet.clientId || username !== packet.username) {
      forwarded = mqttPacket.generate({ ...packet, clientId, username }, { protocolVersion });
    }
  }
  if (clientId.length === 0) {
    if (!cleanSession) {
      return {
        ok: false,
        reason: 'empty client ID without clean session',
        connack: refusalConnack(protocolVersion, 'identifier-rejected'),
      };
    }
    clientId = assignClientId(assignPrefix);
    forwarded = mqttPacket.generate({ ...packet, clientId, username }, { protocolVersion });
    clientIdAssigned = true;
  }
  return {
    ok: true,
    connect: {
      clientId,
      protocolVersion,
      keepaliveSeconds: packet.keepalive ?? 0,
      cleanSession,
      username,
      bytes: forwarded,
      clientIdAssigned,
    },
  };
}
