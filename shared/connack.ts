import mqttPacket, { type IConnackPacket, type Packet } from 'mqtt-packet';

export type RefusalKind = 'unsupported-protocol' | 'identifier-rejected' | 'server-unavailable' | 'not-authorized';

/** Return codes of MQTT 3.1.1 §3.2.2.3 and reason codes of MQTT 5 §3.2.2.2 for each refusal. */
const CODES: Record<RefusalKind, { v4: number; v5: number }> = {
  'unsupported-protocol': { v4: 1, v5: 0x84 },
  'identifier-rejected': { v4: 2, v5: 0x85 },
  'server-unavailable': { v4: 3, v5: 0x88 },
  'not-authorized': { v4: 5, v5: 0x87 },
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
