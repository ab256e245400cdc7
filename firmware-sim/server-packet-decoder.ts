import { parser as createParser, type Packet, type Parser } from 'mqtt-packet';
import { EdgemuxError } from '../shared/errors.js';

/**
 * Decodes whole server-to-client MQTT packets with one mqtt-packet parser
 * shared by every device of a fleet. A parser per device would cost a
 * BufferList stream and an EventEmitter each, which dominates memory at
 * 100k devices; framing is done per device (MqttFramer) so this parser only
 * ever sees complete packets and keeps no state between calls.
 */
export class ServerPacketDecoder {
  private parser: Parser;
  private decoded: Packet | null = null;
  private failure: Error | null = null;

  constructor(private readonly protocolVersion: 4 | 5) {
    this.parser = this.createParser();
  }

  /** Decodes exactly one packet; throws E_MQTT_MALFORMED otherwise. */
  decode(frame: Buffer): Packet {
    this.decoded = null;
    this.failure = null;
    const leftover = this.parser.parse(frame);
    const packet = this.decoded as Packet | null;
    const failure = this.failure as Error | null;
    if (failure === null && packet !== null && leftover === 0 && packet.cmd !== 'connect') return packet;
    // The parser keeps partial state after an error, and a CONNECT rewrites its
    // protocol settings, so a fresh one protects the devices that come next.
    this.parser = this.createParser();
    if (failure !== null) throw new EdgemuxError('E_MQTT_MALFORMED', failure.message, { cause: failure });
    if (packet?.cmd === 'connect') throw new EdgemuxError('E_MQTT_PROTOCOL', 'server sent CONNECT');
    throw new EdgemuxError('E_MQTT_MALFORMED', 'frame did not hold exactly one packet');
  }

  private createParser(): Parser {
    const parser = createParser({ protocolVersion: this.protocolVersion });
    parser.on('packet', (packet) => {
      this.decoded = packet;
    });
    parser.on('error', (err: Error) => {
      this.failure = err;
    });
    return parser;
  }
}
