import net from 'node:net';
import {
  generate,
  type IConnackPacket,
  type IConnectPacket,
  type IDisconnectPacket,
  type IPublishPacket,
  type ISubackPacket,
  type Packet,
} from 'mqtt-packet';
import { isEdgemuxError } from '../shared/errors.js';
import { MqttFramer, PINGREQ_BYTES } from '../shared/mqtt-framing.js';
import type { FleetConfig } from './fleet-config.js';
import type { LatencyHistogram } from './latency-histogram.js';
import type { ServerPacketDecoder } from './server-packet-decoder.js';
import { decodeTelemetry, writeTelemetryHeader } from './telemetry-payload.js';

export type DeviceState =
  | 'idle'
  | 'connecting'
  | 'awaiting-connack'
  | 'subscribing'
  | 'ready'
  | 'closing'
  | 'closed';

export interface FleetCounters {
  connected: number;
  connectFailures: number;
  sent: number;
  acked: number;
  skipped: number;
  received: number;
  replies: number;
  disconnects: number;
  malformed: number;
  rejected: number;
}

/** What a device needs from its fleet; one instance is shared by all devices. */
export interface DeviceHost {
  readonly config: FleetConfig;
  readonly counters: FleetCounters;
  readonly publishAckLatency: LatencyHistogram;
  readonly commandLatency: LatencyHistogram;
  readonly decoder: ServerPacketDecoder;
  readonly clock: () => number;
  socketOpened(device: SimDevice): void;
  socketClosed(device: SimDevice): void;
  deviceReady(device: SimDevice): void;
  deviceConnectFailed(device: SimDevice, reason: string): void;
  /** A ready device was stopped by the fleet; no failure is counted. */
  deviceStopped(device: SimDevice): void;
  /** A connect in progress was cancelled by the fleet; no failure is counted. */
  deviceConnectCancelled(device: SimDevice): void;
  deviceLost(device: SimDevice, reason: string): void;
  /** The server set a keep alive of its own; the shared sweep must run often enough for it. */
  keepaliveChanged(keepaliveMs: number): void;
}

/** Inflight value for a command reply, whose ack latency is not telemetry latency. */
const REPLY_MARKER = -1;
/** PINGREQ goes out at this share of the keepalive so sweep lag cannot overrun it (MQTT 3.1.1 §3.1.2.10). */
const PING_AT_KEEPALIVE_SHARE = 0.75;
/** MQTT 5 §3.1.2.11.2: 0xFFFFFFFF keeps the session forever, matching MQTT 3.1.1 clean=false. */
const SESSION_NEVER_EXPIRES = 0xffff_ffff;
const MAX_PACKET_ID = 65535;
/** Command latencies outside this window come from payloads that are not ours. */
const MAX_PLAUSIBLE_LATENCY_MS = 3_600_000;

const DEVICE = Symbol('simDevice');
interface DeviceSocket extends net.Socket {
  [DEVICE]: SimDevice;
}

// Shared listeners find their device through the socket, so 100k devices do
// not each carry a set of closures.
function onSocketConnect(this: DeviceSocket): void {
  this[DEVICE].onSocketConnect();
}
function onSocketData(this: DeviceSocket, chunk: Buffer): void {
  this[DEVICE].onSocketData(chunk);
}
function onSocketDrain(this: DeviceSocket): void {
  this[DEVICE].writable = true;
}
function onSocketError(this: DeviceSocket, err: NodeJS.ErrnoException): void {
  this[DEVICE].noteCloseReason(err.code ?? err.message);
}
function onSocketClose(this: DeviceSocket): void {
  this[DEVICE].onSocketClose();
}
function onConnectTimeout(device: SimDevice): void {
  device.abort('connect timeout');
}

/**
 * One simulated device: its connection state machine and one handler per
 * incoming packet type. Per-device state is kept to a few fields; maps for
 * inflight packet ids are created only when first needed.
 */
export class SimDevice {
  state: DeviceState = 'idle';
  /** False from a write that hit the socket's high water mark until 'drain'. */
  writable = false;

  private socket: DeviceSocket | null = null;
  private framer: MqttFramer | null = null;
  private connectTimer: NodeJS.Timeout | null = null;
  private closeReason: string | null = null;
  /** Where the current connection was bound; undefined lets the OS choose. */
  localAddress: string | undefined = undefined;
  localPort: number | undefined = undefined;
  private seq = 0;
  private lastPacketId = 0;
  /** Outgoing QoS>0 packet id → send time (or REPLY_MARKER), until PUBACK/PUBCOMP. */
  private inflight: Map<number, number> | null = null;
  private inflightLimit: number;
  /** Incoming QoS 2 packet ids between PUBREC and PUBREL, to deliver each once (MQTT 3.1.1 §4.3.3). */
  private incomingQos2: Set<number> | null = null;
  private keepaliveMs: number;
  private lastSentAt = 0;
  private pingSentAt = 0;

  readonly telemetryTopic: string;
  readonly commandTopic: string;
  readonly replyTopic: string;

  constructor(
    private readonly host: DeviceHost,
    /** Position in the fleet's arrays. */
    readonly slot: number,
    /** Index carried in telemetry payloads: the fleet's startIndex + slot. */
    readonly deviceIndex: number,
    readonly clientId: string,
    topics: { telemetry: string; command: string; reply: string },
  ) {
    this.telemetryTopic = topics.telemetry;
    this.commandTopic = topics.command;
    this.replyTopic = topics.reply;
    this.inflightLimit = host.config.maxInflight;
    this.keepaliveMs = host.config.keepaliveSeconds * 1000;
  }

  // --- transitions -------------------------------------------------------

  /** idle → connecting, or closed → connecting when the fleet retries a failed bind. */
  connect(localAddress: string | undefined, localPort: number | undefined): void {
    const { host, port, connectTimeoutMs, maxIncomingPacketBytes } = this.host.config;
    const socket = net.connect({ host, port, localAddress, localPort, noDelay: true }) as DeviceSocket;
    this.localAddress = localAddress;
    this.localPort = localPort;
    this.closeReason = null;
    socket[DEVICE] = this;
    socket.once('connect', onSocketConnect);
    socket.on('data', onSocketData);
    socket.on('drain', onSocketDrain);
    socket.on('error', onSocketError);
    socket.once('close', onSocketClose);
    this.socket = socket;
    this.framer = new MqttFramer(maxIncomingPacketBytes);
    this.state = 'connecting';
    this.connectTimer = setTimeout(onConnectTimeout, connectTimeoutMs, this);
    this.host.socketOpened(this);
  }

  /** connecting → awaiting-connack */
  onSocketConnect(): void {
    if (this.state !== 'connecting') return;
    const { protocolVersion, cleanSession, keepaliveSeconds } = this.host.config;
    const connect: IConnectPacket = {
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion,
      clientId: this.clientId,
      clean: cleanSession,
      keepalive: keepaliveSeconds,
    };
    if (protocolVersion === 5 && !cleanSession) {
      connect.properties = { sessionExpiryInterval: SESSION_NEVER_EXPIRES };
    }
    this.state = 'awaiting-connack';
    this.writable = true;
    this.send(connect, this.host.clock());
  }

  /** awaiting-connack → subscribing */
  private onConnack(packet: IConnackPacket): void {
    if (this.state !== 'awaiting-connack') return this.protocolViolation('unexpected CONNACK');
    const code = packet.returnCode ?? packet.reasonCode ?? 0;
    if (code !== 0) return this.abort(`CONNACK refused with code ${code}`);
    const props = packet.properties;
    // MQTT 5 §3.2.2.3.14: the server's keep alive replaces ours.
    if (props?.serverKeepAlive !== undefined && props.serverKeepAlive * 1000 !== this.keepaliveMs) {
      this.keepaliveMs = props.serverKeepAlive * 1000;
      this.host.keepaliveChanged(this.keepaliveMs);
    }
    // MQTT 5 §3.2.2.3.3: never exceed the server's Receive Maximum.
    if (props?.receiveMaximum !== undefined) {
      this.inflightLimit = Math.min(this.inflightLimit, props.receiveMaximum);
    }
    this.state = 'subscribing';
    this.send(
      {
        cmd: 'subscribe',
        messageId: this.nextPacketId(),
        subscriptions: [{ topic: this.commandTopic, qos: 1 }],
      },
      this.host.clock(),
    );
  }

  /** subscribing → ready */
  private onSuback(packet: ISubackPacket): void {
    if (this.state !== 'subscribing') return this.protocolViolation('unexpected SUBACK');
    const granted = packet.granted[0];
    if (typeof granted !== 'number' || granted >= 0x80) {
      return this.abort(`SUBSCRIBE to ${this.commandTopic} refused with code ${String(granted)}`);
    }
    this.clearConnectTimer();
    this.state = 'ready';
    this.host.deviceReady(this);
  }

  /** Orderly shutdown asked by the fleet: ready → closing, or cancel a connect. */
  close(): void {
    switch (this.state) {
      case 'ready': {
        this.state = 'closing';
        this.host.deviceStopped(this);
        this.send({ cmd: 'disconnect' }, this.host.clock());
        this.socket!.end();
        return;
      }
      case 'connecting':
      case 'awaiting-connack':
      case 'subscribing':
        this.clearConnectTimer();
        this.state = 'closing';
        this.host.deviceConnectCancelled(this);
        this.socket!.destroy();
        return;
      default:
        return;
    }
  }

  /** Hard close for our own reasons; accounting happens on 'close'. */
  abort(reason: string): void {
    this.noteCloseReason(reason);
    this.socket?.destroy();
  }

  noteCloseReason(reason: string): void {
    this.closeReason ??= reason;
  }

  /** any → closed */
  onSocketClose(): void {
    const previous = this.state;
    const reason = this.closeReason ?? 'connection closed by server';
    this.clearConnectTimer();
    this.state = 'closed';
    this.writable = false;
    this.socket = null;
    this.framer = null;
    this.inflight = null;
    this.incomingQos2 = null;
    switch (previous) {
      case 'connecting':
      case 'awaiting-connack':
      case 'subscribing':
        this.host.deviceConnectFailed(this, reason);
        break;
      case 'ready':
        this.host.deviceLost(this, reason);
        break;
      default:
        break;
    }
    this.host.socketClosed(this);
  }

  // --- outgoing telemetry (hot path) -------------------------------------

  /**
   * Sends up to `owed` telemetry messages stamped `now`. Messages that meet a
   * full socket buffer or a full inflight window are skipped and counted,
   * never queued.
   */
  publishTelemetry(owed: number, now: number, scratch: Buffer, packet: IPublishPacket): void {
    const counters = this.host.counters;
    const qos = packet.qos;
    const socket = this.socket!;
    // Aborted but its 'close' has not fired yet: the fleet unschedules it then.
    if (socket.destroyed) return;
    if (owed > 1) socket.cork();
    for (let i = 0; i < owed; i++) {
      if (!this.writable || (qos > 0 && this.inflightCount() >= this.inflightLimit)) {
        counters.skipped += owed - i;
        break;
      }
      const seq = ++this.seq;
      writeTelemetryHeader(scratch, this.deviceIndex, seq, now);
      packet.topic = this.telemetryTopic;
      if (qos > 0) {
        const id = this.nextPacketId();
        (this.inflight ??= new Map()).set(id, now);
        packet.messageId = id;
      }
      this.write(generate(packet, this.generateOptions()), now);
      counters.sent++;
    }
    if (owed > 1) socket.uncork();
  }

  /**
   * Called from the fleet's shared sweep. MQTT 3.1.1 §3.1.2.10: send something
   * within each keepalive period, and close when a PINGRESP does not come back
   * within a reasonable time (here: one keepalive period).
   */
  checkKeepalive(now: number): void {
    if (this.state !== 'ready' || this.keepaliveMs === 0) return;
    if (this.pingSentAt !== 0) {
      if (now - this.pingSentAt >= this.keepaliveMs) this.abort('keepalive timeout: no PINGRESP');
      return;
    }
    if (now - this.lastSentAt >= this.keepaliveMs * PING_AT_KEEPALIVE_SHARE) {
      this.pingSentAt = now;
      this.write(PINGREQ_BYTES, now);
    }
  }

  // --- incoming ----------------------------------------------------------

  onSocketData(chunk: Buffer): void {
    try {
      this.framer?.push(chunk, (frame) => {
        // A handler may have closed us; drop the rest of the chunk.
        if (this.socket === null || this.socket.destroyed) return;
        this.onPacket(this.host.decoder.decode(frame));
      });
    } catch (err) {
      if (!isEdgemuxError(err)) throw err;
      this.protocolViolation(err.message);
    }
  }

  private onPacket(packet: Packet): void {
    switch (packet.cmd) {
      case 'connack':
        return this.onConnack(packet);
      case 'suback':
        return this.onSuback(packet);
      case 'publish':
        return this.onPublish(packet);
      case 'puback':
      case 'pubcomp':
        return this.onPublishComplete(packet.messageId!, packet.reasonCode);
      case 'pubrec':
        return this.onPubrec(packet.messageId!, packet.reasonCode);
      case 'pubrel':
        return this.onPubrel(packet.messageId!);
      case 'pingresp':
        this.pingSentAt = 0;
        return;
      case 'disconnect':
        return this.onServerDisconnect(packet);
      default:
        return this.protocolViolation(`unexpected ${packet.cmd.toUpperCase()} from server`);
    }
  }

  private onPublishComplete(id: number, reasonCode: number | undefined): void {
    const sentAt = this.inflight?.get(id);
    if (sentAt === undefined) return;
    this.inflight!.delete(id);
    // MQTT 5 §3.4.2.1: reason codes of 0x80 and above mean the server refused it.
    if (reasonCode !== undefined && reasonCode >= 0x80) {
      this.host.counters.rejected++;
      return;
    }
    if (sentAt === REPLY_MARKER) return;
    this.host.counters.acked++;
    this.host.publishAckLatency.record(this.host.clock() - sentAt);
  }

  private onPubrec(id: number, reasonCode: number | undefined): void {
    // MQTT 5 §4.3.3: a PUBREC with an error code ends the QoS 2 flow there.
    if (reasonCode !== undefined && reasonCode >= 0x80) return this.onPublishComplete(id, reasonCode);
    this.send({ cmd: 'pubrel', messageId: id, reasonCode: 0 }, this.host.clock());
  }

  private onPubrel(id: number): void {
    this.incomingQos2?.delete(id);
    this.send({ cmd: 'pubcomp', messageId: id, reasonCode: 0 }, this.host.clock());
  }

  private onPublish(packet: IPublishPacket): void {
    // A persistent session may deliver queued commands between CONNACK and SUBACK.
    if (this.state !== 'ready' && this.state !== 'subscribing') {
      return this.protocolViolation('PUBLISH before CONNACK');
    }
    const now = this.host.clock();
    const id = packet.messageId!;
    if (packet.qos === 2) {
      const pending = (this.incomingQos2 ??= new Set());
      if (!pending.has(id)) {
        pending.add(id);
        this.onCommand(packet, now);
      }
      this.send({ cmd: 'pubrec', messageId: id, reasonCode: 0 }, now);
      return;
    }
    this.onCommand(packet, now);
    if (packet.qos === 1) this.send({ cmd: 'puback', messageId: id, reasonCode: 0 }, now);
  }

  /** Every PUBLISH a device receives came through its command subscription. */
  private onCommand(packet: IPublishPacket, now: number): void {
    const { counters, commandLatency } = this.host;
    counters.received++;
    const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
    const stamp = decodeTelemetry(payload);
    if (stamp !== null) {
      const latency = now - stamp.sentAtMs;
      if (Number.isFinite(latency) && Math.abs(latency) < MAX_PLAUSIBLE_LATENCY_MS) commandLatency.record(latency);
    }
    if (!this.writable || this.inflightCount() >= this.inflightLimit) {
      counters.skipped++;
      return;
    }
    const id = this.nextPacketId();
    (this.inflight ??= new Map()).set(id, REPLY_MARKER);
    this.send({ cmd: 'publish', topic: this.replyTopic, payload, qos: 1, messageId: id, retain: false, dup: false }, now);
    counters.replies++;
  }

  private onServerDisconnect(packet: IDisconnectPacket): void {
    this.abort(`server sent DISCONNECT with code ${packet.reasonCode ?? 0}`);
  }

  /** Malformed or out-of-order input: count it and drop the connection, silently. */
  private protocolViolation(reason: string): void {
    this.host.counters.malformed++;
    this.abort(`malformed input: ${reason}`);
  }

  // --- helpers -----------------------------------------------------------

  private send(packet: Packet, now: number): void {
    this.write(generate(packet, this.generateOptions()), now);
  }

  private write(bytes: Buffer, now: number): void {
    const socket = this.socket!;
    if (socket.destroyed) return;
    this.lastSentAt = now;
    if (!socket.write(bytes)) this.writable = false;
  }

  private generateOptions(): { protocolVersion: 4 | 5 } {
    return this.host.config.protocolVersion === 5 ? V5 : V4;
  }

  private inflightCount(): number {
    return this.inflight === null ? 0 : this.inflight.size;
  }

  /** Next free packet id, wrapping 1..65535 (MQTT 3.1.1 §2.3.1). */
  private nextPacketId(): number {
    let id = this.lastPacketId;
    do {
      id = id === MAX_PACKET_ID ? 1 : id + 1;
    } while (this.inflight?.has(id));
    this.lastPacketId = id;
    return id;
  }

  private clearConnectTimer(): void {
    if (this.connectTimer !== null) {
      clearTimeout(this.connectTimer);
      this.connectTimer = null;
    }
  }
}

const V4 = { protocolVersion: 4 as const };
const V5 = { protocolVersion: 5 as const };
