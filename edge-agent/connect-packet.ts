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
export function admitConnect(bytes: Buffer, assignPrefix: string, identity: DeviceIdentity | null = null): ConnectVerdict {
  const packet = parseConnect(bytes);
  const protocolVersion = packet.protocolVersion ?? 4;
  const cleanSession = packet.clean ?? true;
  let clientId = packet.clientId;
  let username = packet.username;
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
