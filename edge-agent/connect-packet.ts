import { randomBytes } from 'node:crypto';
import mqttPacket, { type IConnectPacket, type Packet } from 'mqtt-packet';
import { refusalConnack } from '../shared/connack.js';
import { EdgemuxError } from '../shared/errors.js';

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

/** Parses one whole CONNECT packet; throws E_MQTT_MALFORMED when mqtt-packet cannot. */
export function parseConnect(bytes: Buffer): IConnectPacket {
  const parser = mqttPacket.parser();
  let parsed: Packet | undefined;
  let failure: Error | undefined;
  parser.on('packet', (packet: Packet) => {
    parsed = packet;
  });
  parser.on('error', (err: Error) => {
    failure = err;
  });
  parser.parse(bytes);
  if (failure !== undefined || parsed === undefined) {
    throw new EdgemuxError('E_MQTT_MALFORMED', `malformed CONNECT: ${failure?.message ?? 'incomplete packet'}`);
  }
  if (parsed.cmd !== 'connect') {
    throw new EdgemuxError('E_MQTT_PROTOCOL', `expected CONNECT, got ${parsed.cmd}`);
  }
  return parsed;
}

/**
 * Decides how a device's CONNECT enters the tunnel. The hub demultiplexes by
 * client ID, so an empty one needs care: MQTT 3.1.1 §3.1.3.1 lets the server
 * assign one when clean session is set and requires refusal otherwise.
 */
export function admitConnect(bytes: Buffer, assignPrefix: string): ConnectVerdict {
  const packet = parseConnect(bytes);
  const protocolVersion = packet.protocolVersion ?? 4;
  const cleanSession = packet.clean ?? true;
  let clientId = packet.clientId;
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
    clientId = `${assignPrefix}${randomBytes(8).toString('hex')}`;
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
