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

export type ConnectVerdict =
  | { ok: true; connect: DeviceConnect }
  | { ok: false; reason: string; connack: Buffer };

export interface ConnectLimits {
  /** Longest client ID admitted, in characters (as aedes counts); longer ones get CONNACK identifier rejected. */
  maxClientIdLength: number;
}

/**
 * Decides how a device's CONNECT enters the tunnel. The hub demultiplexes by
 * client ID, so an empty one needs care: MQTT 3.1.1 §3.1.3.1 lets the server
 * assign one when clean session is set and requires refusal otherwise.
 * Throws E_MQTT_MALFORMED for a CONNECT the device must be disconnected for
 * without a CONNACK, such as a client ID that is not well-formed UTF-8.
 */
export function admitConnect(bytes: Buffer, assignPrefix: string, limits: ConnectLimits): ConnectVerdict {
  const packet = parseConnect(bytes);
  const protocolVersion = packet.protocolVersion ?? 4;
  const cleanSession = packet.clean ?? true;
  let clientId = packet.clientId;
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
  if (clientId.length === 0) {
    if (!cleanSession) {
      return {
        ok: false,
        reason: 'empty client ID without clean session',
        connack: refusalConnack(protocolVersion, 'identifier-rejected'),
      };
    }
    clientId = assignClientId(assignPrefix);
    forwarded = mqttPacket.generate({ ...packet, clientId }, { protocolVersion });
    clientIdAssigned = true;
  }
  return {
    ok: true,
    connect: {
      clientId,
      protocolVersion,
      keepaliveSeconds: packet.keepalive ?? 0,
      cleanSession,
      username: packet.username,
      bytes: forwarded,
      clientIdAssigned,
    },
  };
}
