import type { Clock } from '../shared/clock.js';
import { effectiveKeepalive, parseConnack, refusalConnack, withAssignedClientId } from '../shared/connack.js';
import type { EndCode } from '../shared/end-reasons.js';
import { isEdgemuxError } from '../shared/errors.js';
import type { RateLimitedLog } from '../shared/log-rate-limit.js';
import type { Logger } from '../shared/logger.js';
import { MqttFramer, PacketType, packetTypeOf, PINGRESP_BYTES } from '../shared/mqtt-framing.js';
import { topicProblem } from '../shared/mqtt-utf8.js';
import type { MuxStream, StreamSink } from '../shared/mux-stream.js';
import type { SocketBatcher } from '../shared/socket-batcher.js';
import type { CloseIntent } from '../shared/stream-lifecycle.js';
import type { Tunnel } from '../shared/tunnel.js';
import { admitConnect, type ConnectLimits, type DeviceConnect, type DeviceIdentity } from './connect-packet.js';
import type { ConnectRate } from './connect-rate.js';
import type { DeviceSocket } from './device-listeners.js';

export type DeviceState = 'awaiting-connect' | 'attached' | 'draining' | 'closed';

/** What a device connection needs from the agent that owns it. */
export interface DeviceHost {
  readonly log: Logger;
  readonly batcher: SocketBatcher;
  readonly maxPacketSize: number;
  readonly assignedIdPrefix: string;
  /** Checks on a CONNECT before it is forwarded. */
  readonly connectLimits: ConnectLimits;
  /** CONNECTs per second from one source address; null: unlimited. */
  readonly connectRate: ConnectRate | null;
  /** Per-device info lines, rate limited so a storm of devices cannot flood the log. */
  readonly deviceLog: { refused: RateLimitedLog; closed: RateLimitedLog };
  /** Agent-wide totals each device adds its packets to; read at scrape time. */
  readonly traffic: DeviceTraffic;
  /** Keepalive, CONNECT and drain timers count on it. */
  readonly clock: Clock;
  /** Opens a stream for the device and sends its CONNECT; null when no tunnel is up. */
  openStream(device: DeviceConnection, connect: DeviceConnect): MuxStream<DeviceConnection, Tunnel> | null;
  /** Tells the hub the stream ended; `abrupt` makes the broker publish the will. */
  closeStream(stream: MuxStream<DeviceConnection, Tunnel>, close: CloseIntent): void;
  /** `afterConnect`: the device had been admitted, so losing it counts as a disconnect. */
  deviceClosed(device: DeviceConnection, afterConnect: boolean): void;
}

/** MQTT packets and bytes each way, as seen at the device sockets. */
export interface DeviceTraffic {
  messagesToHub: number;
  bytesToHub: number;
  messagesToDevice: number;
  bytesToDevice: number;
}

/** MQTT 3.1.1 §3.1.2.10: the server disconnects after one and a half keepalive periods of silence. */
const KEEPALIVE_GRACE = 1.5;
/** Shared empty list: most devices never hold a packet, so they allocate none. */
const NOTHING_HELD: Buffer[] = [];
/** Packets a device may send past its stream's credit before the agent stops reading it. */
const HELD_BYTES_LIMIT = 64 * 1024;
/** A device told its session is over gets this long to close its side before it is cut off. */
const DRAIN_TIMEOUT_MS = 10_000;
/** When the agent stops, a device gets this long to read its last bytes and close before it is cut off. */
const SHUTDOWN_LINGER_MS = 2_000;
/** MQTT 5 §3.14.2.1: DISCONNECT from the server, reason code 0x8B Server shutting down, no properties. */
const DISCONNECT_SERVER_SHUTTING_DOWN = Buffer.from([0xe0, 0x02, 0x8b, 0x00]);
/**
 * Processes on the agent's own box (the simulator, a local protocol
 * converter) are not rate-limited: whoever connects from there holds the box.
 */
function isLoopback(address: string): boolean {
  return address.startsWith('127.') || address === '::1' || address.startsWith('::ffff:127.');
}

/** Each socket points to its device, so one set of listeners serves every device instead of closures per device. */
const DEVICE = Symbol('device');
type TaggedSocket = DeviceSocket & { [DEVICE]: DeviceConnection };

function onDeviceBytes(this: TaggedSocket, chunk: Buffer): void {
  this[DEVICE].onBytes(chunk);
}
function onDeviceDrain(this: TaggedSocket): void {
  this[DEVICE].onDrain();
}
function onDeviceClose(this: TaggedSocket): void {
  this[DEVICE].onSocketClosed();
}
function ignoreDeviceError(): void {
  // 'close' follows and decides; a reset device is an abrupt disconnect.
}

/**
 * One local device on the agent: awaiting-connect → attached → draining → closed.
 * PINGREQs are answered here, so keepalives never cross the tunnel; the
 * device's keepalive is enforced here too.
 */
export class DeviceConnection implements StreamSink {
  state: DeviceState = 'awaiting-connect';
  clientId: string | null = null;
  stream: MuxStream<DeviceConnection, Tunnel> | null = null;
  private keepaliveMs = 0;
  private protocolVersion = 4;
  /** The agent named this device (it sent an empty client ID), so the device learns its name from the CONNACK. */
  private clientIdAssigned = false;
  /** The next bytes from the hub are the broker's CONNACK. */
  private awaitingConnack = false;
  /**
   * What the current state's timer counts from: accepted (awaiting-connect),
   * last heard from (attached), told to close (draining).
   */
  private timerStart: number;
  private readonly framer: MqttFramer;
  private unflushedBytes = 0;
  /** Set when the stream refused a write: later packets wait in `held` until credit returns. */
  private holding = false;
  private held: Buffer[] = NOTHING_HELD;
  private heldBytes = 0;
  /** The socket is paused because `held` reached its limit. */
  private paused = false;
  /** The device closed while packets were held: close the stream once they are sent. */
  private closeAfterHeld: CloseIntent | null = null;
  private disconnectSeen = false;

  constructor(
    readonly socket: DeviceSocket,
    private readonly host: DeviceHost,
    /** From the device's certificate, on listeners that name devices by it. */
    private readonly identity: DeviceIdentity | null = null,
  ) {
    this.timerStart = host.clock.now();
    this.framer = new MqttFramer(host.maxPacketSize);
    (socket as TaggedSocket)[DEVICE] = this;
    socket.on('data', onDeviceBytes);
    socket.on('error', ignoreDeviceError);
    socket.on('close', onDeviceClose);
  }

  /** Called by the agent's sweep; closes devices past their CONNECT timeout or keepalive. */
  checkTimers(now: number, connectTimeoutMs: number): void {
    if (this.state === 'awaiting-connect' && now - this.timerStart > connectTimeoutMs) {
      this.fail('connect-timeout', 'no CONNECT within the connect timeout');
    } else if (this.state === 'attached' && this.paused) {
      // The agent itself stopped reading this device (no credit): its silence is ours, not its.
      this.timerStart = now;
    } else if (this.state === 'attached' && this.keepaliveMs > 0 && now - this.timerStart > this.keepaliveMs * KEEPALIVE_GRACE) {
      this.fail('keepalive-expired', 'keepalive expired');
    } else if (this.state === 'draining' && now - this.timerStart > DRAIN_TIMEOUT_MS) {
      this.fail('closed', 'did not close after the session ended');
    }
  }

  // hub → device
  data(payload: Buffer): void {
    if (this.state === 'closed') {
      this.stream?.consume(payload.length);
      return;
    }
    // Credit counts the bytes the hub sent, whatever the agent made of them.
    const received = payload.length;
    // The hub sends one packet per DATA payload.
    this.host.traffic.messagesToDevice++;
    this.host.traffic.bytesToDevice += received;
    if (this.awaitingConnack) payload = this.onConnack(payload);
    // While earlier bytes wait for 'drain', later ones wait behind them: credit
    // is returned in stream order, on payload boundaries.
    if (this.host.batcher.write(this.socket, payload) && this.unflushedBytes === 0) {
      this.stream?.consume(received);
    } else {
      // The device is not reading: hold the credit back so the hub stops sending.
      if (this.unflushedBytes === 0) this.socket.once('drain', onDeviceDrain);
      this.unflushedBytes += received;
    }
  }

  writable(): void {
    if (this.state !== 'attached' && this.closeAfterHeld === null) return;
    let sent = 0;
    while (sent < this.held.length && this.stream!.canWrite) {
      const packet = this.held[sent++];
      this.heldBytes -= packet.length;
      this.stream!.write(packet);
    }
    if (sent > 0) this.held = sent === this.held.length ? NOTHING_HELD : this.held.slice(sent);
    if (this.held.length > 0) return;
    if (this.closeAfterHeld !== null) {
      const close = this.closeAfterHeld;
      this.closeAfterHeld = null;
      this.host.closeStream(this.stream!, close);
      return;
    }
    if (!this.stream!.canWrite) return;
    this.holding = false;
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /**
   * The hub ended the session (DISCONNECT handled, takeover, refusal): flush
   * and close. `serverShuttingDown`: the hub itself is stopping, which an
   * MQTT 5 device is told with a DISCONNECT of its own.
   */
  closeFromHub(code: EndCode, detail: string, serverShuttingDown = false): void {
    if (this.state === 'closed' || this.state === 'draining') return;
    this.host.log.debug({ clientId: this.clientId, reason: code, detail }, 'hub closed the device session');
    if (serverShuttingDown) this.sayServerShuttingDown();
    this.state = 'draining';
    this.timerStart = this.host.clock.now();
    this.socket.end();
  }

  /**
   * The agent is stopping: an MQTT 5 device is told so, then the connection
   * ends. The stream closes now, abrupt unless the device had sent
   * DISCONNECT, so the hub ends the broker session at once and the broker
   * publishes the will exactly when the device did not disconnect itself.
   * Resolves once the socket is closed (or cut off after a short linger).
   */
  shutDown(reason: string): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      if (this.socket.destroyed) resolve();
      else this.socket.once('close', () => resolve());
    });
    if (this.state === 'attached') this.sayServerShuttingDown();
    this.socket.end();
    this.host.clock.setTimeout(() => this.socket.destroy(), SHUTDOWN_LINGER_MS);
    this.onSocketClosed('shutdown', reason);
    return closed;
  }

  /** MQTT 5 §4.13: a server may send DISCONNECT only once the CONNACK went out; 3.1.1 has no server DISCONNECT. */
  private sayServerShuttingDown(): void {
    if (this.protocolVersion === 5 && !this.awaitingConnack) this.host.batcher.write(this.socket, DISCONNECT_SERVER_SHUTTING_DOWN);
  }

  /** The stream could not resume (within the grace period, or at all): the device must reconnect. */
  resumeExpired(code: 'grace-expired' | 'resume-failed'): void {
    this.fail(code, code === 'grace-expired' ? 'stream could not resume within the grace period' : 'stream could not resume');
  }

  /** @internal */
  onBytes(chunk: Buffer): void {
    if (this.state === 'attached') this.timerStart = this.host.clock.now();
    try {
      this.framer.push(chunk, (packet) => this.onPacket(packet));
    } catch (err) {
      const tooLarge = isEdgemuxError(err, 'E_MQTT_PACKET_TOO_LARGE');
      this.fail(tooLarge ? 'packet-too-large' : 'protocol-error', isEdgemuxError(err) ? `${err.code}: ${err.message}` : String(err));
    }
  }

  private onPacket(packet: Buffer): void {
    const type = packetTypeOf(packet);
    if (this.state === 'attached') {
      if (type === PacketType.PINGREQ) {
        this.host.batcher.write(this.socket, PINGRESP_BYTES);
        return;
      }
      if (type === PacketType.CONNECT) {
        // MQTT 3.1.1 §3.1.0: a second CONNECT is a protocol violation.
        this.fail('protocol-error', 'second CONNECT on one connection');
        return;
      }
      if (type === PacketType.PUBLISH || type === PacketType.SUBSCRIBE || type === PacketType.UNSUBSCRIBE) {
        // Brokers that decode with replacement characters would merge distinct topics.
        const problem = topicProblem(packet, type, this.protocolVersion);
        if (problem !== null) {
          this.fail('protocol-error', problem);
          return;
        }
      }
      if (packet.length > this.stream!.maxPeerPayload) {
        this.fail('packet-too-large', `packet of ${packet.length} bytes is larger than the hub accepts (${this.stream!.maxPeerPayload})`);
        return;
      }
      if (type === PacketType.DISCONNECT) this.disconnectSeen = true;
      this.host.traffic.messagesToHub++;
      this.host.traffic.bytesToHub += packet.length;
      // Packets after a refused write wait here, so the stream overshoots its
      // window by one frame at most. The socket keeps being read (and PINGREQs
      // answered, or the device would give up on its keepalive) until the held
      // packets reach their limit; then it is paused.
      if (this.holding) {
        if (this.held === NOTHING_HELD) this.held = [];
        this.held.push(packet);
        this.heldBytes += packet.length;
        if (this.heldBytes >= HELD_BYTES_LIMIT && !this.paused) {
          this.paused = true;
          this.socket.pause();
        }
      } else if (!this.stream!.write(packet)) {
        this.holding = true;
      }
      return;
    }
    if (this.state === 'awaiting-connect') {
      if (type !== PacketType.CONNECT) {
        this.fail('protocol-error', `first packet is type ${type}, not CONNECT`);
        return;
      }
      this.onConnect(packet);
    }
    // draining or closed: the device has nothing more to say.
  }

  private onConnect(packet: Buffer): void {
    const verdict = admitConnect(packet, this.host.assignedIdPrefix, this.host.connectLimits, this.identity);
    if (!verdict.ok) {
      this.refuse(verdict.reason, verdict.connack);
      return;
    }
    const { connect } = verdict;
    const address = this.socket.remoteAddress;
    const rate = this.host.connectRate === null || address === undefined || isLoopback(address) ? 'admit' : this.host.connectRate.take(address);
    if (rate !== 'admit') {
      // Logged once per episode: the device decides how often it tries, and many addresses at once pass the bucket.
      if (rate === 'refuse-first') {
        this.host.deviceLog.refused.info({ clientId: connect.clientId.slice(0, 64), remote: address, reason: 'connects per second from this address over the limit' });
      }
      this.state = 'draining';
      this.timerStart = this.host.clock.now();
      this.socket.end(refusalConnack(connect.protocolVersion, 'connection-rate-exceeded'));
      return;
    }
    this.clientId = connect.clientId;
    this.keepaliveMs = connect.keepaliveSeconds * 1000;
    this.protocolVersion = connect.protocolVersion;
    this.clientIdAssigned = connect.clientIdAssigned;
    const stream = this.host.openStream(this, connect);
    if (stream === null) {
      // Server unavailable (MQTT 3.1.1 §3.2.2.3 code 3, MQTT 5 §3.2.2.2 0x88) rather than a bare close,
      // so the device's library reports why and backs off instead of retrying at once.
      this.refuse('no tunnel to the hub is up', refusalConnack(connect.protocolVersion, 'server-unavailable'));
      return;
    }
    this.host.traffic.messagesToHub++;
    this.host.traffic.bytesToHub += connect.bytes.length;
    this.awaitingConnack = true;
    this.stream = stream;
    this.state = 'attached';
    this.timerStart = this.host.clock.now();
  }

  /** Answers the CONNECT with a refusing CONNACK and waits for the device to close (the drain timeout cuts it off). */
  private refuse(reason: string, connack: Buffer): void {
    this.host.deviceLog.refused.info({ clientId: this.clientId?.slice(0, 64), remote: this.socket.remoteAddress, reason });
    this.state = 'draining';
    this.timerStart = this.host.clock.now();
    this.socket.end(connack);
  }

  /**
   * The broker's CONNACK on its way to the device. MQTT 5 §3.2.2.3.14: a
   * Server Keep Alive replaces the device's own keepalive. MQTT 5 §3.2.2.3.7:
   * a device the agent named learns its client ID here.
   */
  private onConnack(payload: Buffer): Buffer {
    this.awaitingConnack = false;
    if (this.protocolVersion !== 5 || packetTypeOf(payload) !== PacketType.CONNACK) return payload;
    this.keepaliveMs = effectiveKeepalive(this.keepaliveMs / 1000, parseConnack(payload, 5)) * 1000;
    return this.clientIdAssigned ? withAssignedClientId(payload, this.clientId!) : payload;
  }

  /** @internal */
  onDrain(): void {
    if (this.unflushedBytes === 0) return;
    const bytes = this.unflushedBytes;
    this.unflushedBytes = 0;
    this.stream?.consume(bytes);
  }

  private fail(code: EndCode, detail: string): void {
    if (this.state === 'closed') return;
    this.host.deviceLog.closed.info({ clientId: this.clientId, remote: this.socket.remoteAddress, reason: code, detail });
    this.socket.destroy();
    this.onSocketClosed(code, detail);
  }

  /** @internal */
  onSocketClosed(code: EndCode = 'device-lost', detail = 'device closed the connection'): void {
    if (this.state === 'closed') return;
    const wasAttached = this.state === 'attached';
    this.state = 'closed';
    if (wasAttached && this.stream !== null && this.stream.state !== 'closed') {
      // Held packets (a DISCONNECT among them, perhaps) still go out when
      // credit returns; the stream closes behind them.
      const close: CloseIntent = this.disconnectSeen ? { code: 'device-disconnected', reason: 'device sent DISCONNECT', abrupt: false } : { code, reason: detail, abrupt: true };
      if (this.held.length > 0) this.closeAfterHeld = close;
      else this.host.closeStream(this.stream, close);
    }
    this.host.deviceClosed(this, wasAttached && !this.disconnectSeen);
  }
}
