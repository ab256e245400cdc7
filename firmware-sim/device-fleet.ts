import { EventEmitter } from 'node:events';
import type { IPublishPacket } from 'mqtt-packet';
import { resolveFleetConfig, topicFor, type FleetConfig, type FleetOptions } from './fleet-config.js';
import { LatencyHistogram } from './latency-histogram.js';
import { ServerPacketDecoder } from './server-packet-decoder.js';
import { SimDevice, type DeviceHost, type FleetCounters } from './sim-device.js';
import { nowMs } from './telemetry-payload.js';

export interface FleetStats {
  devices: number;
  /** Devices past CONNACK and SUBACK with an open connection. */
  connected: number;
  /** Devices that ever got past CONNACK and SUBACK; unlike `connected`, stop() does not lower it. */
  connects: number;
  connectFailures: number;
  /** Slowest wait of a connected device from its TCP connect to SUBACK (ms); waiting for a connect slot not included. */
  slowestConnectMs: number;
  /** From start() until every device connected or failed (ms); while that is under way, the time so far. */
  rampMs: number;
  sent: number;
  /** Telemetry publishes completed by PUBACK (QoS 1) or PUBCOMP (QoS 2). */
  acked: number;
  /** Telemetry and replies not sent because of backpressure or a full inflight window. */
  skipped: number;
  /** Command PUBLISHes received. */
  received: number;
  replies: number;
  /** Connections lost after they were ready, other than by stop(). */
  disconnects: number;
  /** Connections dropped because the server sent bytes that are not valid MQTT here. */
  malformed: number;
  /** Publishes the server refused with an MQTT 5 reason code ≥ 0x80. */
  rejected: number;
  publishAckP50Ms: number;
  publishAckP99Ms: number;
  commandP50Ms: number;
  commandP99Ms: number;
}

export interface FleetEvents {
  disconnect: [clientId: string, reason: string];
  'connect-failure': [clientId: string, reason: string];
}

/** Injected time and randomness, so tests can drive them. */
export interface FleetRuntime {
  /** Milliseconds; must be comparable with the stamps in payloads (see nowMs). */
  clock?: () => number;
  /** Uniform in [0, 1); sets each device's publish phase. */
  random?: () => number;
  /**
   * Milliseconds from any origin; times the connect ramp. Separate from
   * `clock` because bench code freezes `clock` during a held ramp, which
   * would read every connect as instantaneous.
   */
  monotonicClock?: () => number;
}

type FleetState = 'idle' | 'starting' | 'running' | 'stopping' | 'stopped';

/** The keepalive sweep never runs less often than this. */
const MAX_SWEEP_INTERVAL_MS = 1000;

/** A quarter keepalive between sweeps leaves room to ping at 3/4 of it and still be early. */
function sweepIntervalFor(keepaliveMs: number): number {
  return keepaliveMs > 0 ? Math.min(MAX_SWEEP_INTERVAL_MS, keepaliveMs / 4) : MAX_SWEEP_INTERVAL_MS;
}

/**
 * Many simulated MQTT devices in one process. One ticker drives every
 * device's telemetry and keepalive; publish schedules live in a typed array
 * so a tick over 100k idle devices is a tight scan, not 100k object visits.
 */
export class DeviceFleet extends EventEmitter<FleetEvents> {
  readonly config: FleetConfig;

  private state: FleetState = 'idle';
  private readonly devices: SimDevice[];
  /** Per device slot: when its next telemetry message is due (ms); Infinity when not publishing. */
  private readonly dueAt: Float64Array;
  private readonly intervalMs: number;
  private sweepIntervalMs: number;
  private nextSweepAt = 0;
  private ticker: NodeJS.Timeout | null = null;

  private readonly counters: FleetCounters = {
    connected: 0,
    connectFailures: 0,
    sent: 0,
    acked: 0,
    skipped: 0,
    received: 0,
    replies: 0,
    disconnects: 0,
    malformed: 0,
    rejected: 0,
  };
  private readonly publishAckLatency = new LatencyHistogram();
  private readonly commandLatency = new LatencyHistogram();
  private readonly clock: () => number;
  private readonly random: () => number;
  private readonly monotonicClock: () => number;
  /** Per device slot: monotonic time its connect was launched. */
  private readonly connectStartedAt: Float64Array;
  private connects = 0;
  private slowestConnectMs = 0;
  private rampStartedAt: number | null = null;
  private rampEndedAt: number | null = null;
  private readonly host: DeviceHost;

  /** Reused for every telemetry message: generate() copies it into the packet. */
  private readonly scratchPayload: Buffer;
  private readonly telemetryPacket: IPublishPacket;

  private publishingPaused = false;
  private nextToConnect = 0;
  private connectsInFlight = 0;
  private openSockets = 0;
  private startPromise: Promise<void> | null = null;
  private startSettled: (() => void) | null = null;
  private stopPromise: Promise<void> | null = null;
  private allSocketsClosed: (() => void) | null = null;

  constructor(options: FleetOptions, runtime: FleetRuntime = {}) {
    super();
    this.config = resolveFleetConfig(options);
    this.clock = runtime.clock ?? nowMs;
    this.random = runtime.random ?? Math.random;
    this.monotonicClock = runtime.monotonicClock ?? (() => performance.now());
    const cfg = this.config;
    this.intervalMs = cfg.ratePerDevice > 0 ? 1000 / cfg.ratePerDevice : Infinity;
    this.sweepIntervalMs = sweepIntervalFor(cfg.keepaliveSeconds * 1000);
    this.scratchPayload = Buffer.alloc(cfg.payloadSize);
    this.telemetryPacket = {
      cmd: 'publish',
      topic: '',
      payload: this.scratchPayload,
      qos: cfg.qos,
      retain: false,
      dup: false,
    };
    this.host = {
      config: cfg,
      counters: this.counters,
      publishAckLatency: this.publishAckLatency,
      commandLatency: this.commandLatency,
      decoder: new ServerPacketDecoder(cfg.protocolVersion),
      clock: this.clock,
      socketOpened: () => this.onSocketOpened(),
      socketClosed: () => this.onSocketClosed(),
      deviceReady: (d) => this.onDeviceReady(d),
      deviceConnectFailed: (d, reason) => this.onDeviceConnectFailed(d, reason),
      deviceStopped: (d) => this.onDeviceStopped(d),
      deviceConnectCancelled: () => this.connectSettled(),
      deviceLost: (d, reason) => this.onDeviceLost(d, reason),
      keepaliveChanged: (ms) => {
        this.sweepIntervalMs = Math.min(this.sweepIntervalMs, sweepIntervalFor(ms));
      },
    };
    this.dueAt = new Float64Array(cfg.devices).fill(Infinity);
    this.connectStartedAt = new Float64Array(cfg.devices);
    this.devices = new Array<SimDevice>(cfg.devices);
    for (let slot = 0; slot < cfg.devices; slot++) {
      const deviceIndex = cfg.startIndex + slot;
      const clientId = `${cfg.clientIdPrefix}${deviceIndex}`;
      this.devices[slot] = new SimDevice(this.host, slot, deviceIndex, clientId, {
        telemetry: topicFor(cfg.topicTemplate, clientId),
        command: topicFor(cfg.commandTopicTemplate, clientId),
        reply: topicFor(cfg.replyTopicTemplate, clientId),
      });
    }
  }

  /** Client ids in slot order; device `i` uses deviceIndex startIndex + i in its payloads. */
  clientIds(): string[] {
    return this.devices.map((d) => d.clientId);
  }

  /**
   * Connects every device, at most `connectConcurrency` at a time, and
   * resolves once each has either subscribed to its command topic or failed
   * (failures are counted in stats and emitted as 'connect-failure').
   */
  start(): Promise<void> {
    if (this.startPromise !== null) return this.startPromise;
    if (this.state !== 'idle') throw new Error('a stopped fleet cannot be restarted');
    this.state = 'starting';
    this.startPromise = new Promise<void>((resolve) => {
      this.startSettled = resolve;
    }).then(() => {
      if (this.state === 'starting') this.state = 'running';
    });
    this.rampStartedAt = this.monotonicClock();
    this.nextSweepAt = this.clock() + this.sweepIntervalMs;
    this.ticker = setInterval(() => this.tick(), this.config.tickMs);
    this.launchConnects();
    return this.startPromise;
  }

  /** Stops telemetry but keeps every device connected, so messages in flight can complete. */
  pausePublishing(): void {
    this.publishingPaused = true;
    this.dueAt.fill(Infinity);
  }

  /** Stops publishing, sends DISCONNECT from every ready device and waits for all sockets to close. */
  stop(): Promise<void> {
    this.stopPromise ??= this.stopAll();
    return this.stopPromise;
  }

  stats(): FleetStats {
    const c = this.counters;
    return {
      devices: this.devices.length,
      connected: c.connected,
      connects: this.connects,
      connectFailures: c.connectFailures,
      slowestConnectMs: this.slowestConnectMs,
      rampMs: this.rampMs(),
      sent: c.sent,
      acked: c.acked,
      skipped: c.skipped,
      received: c.received,
      replies: c.replies,
      disconnects: c.disconnects,
      malformed: c.malformed,
      rejected: c.rejected,
      publishAckP50Ms: this.publishAckLatency.percentile(50),
      publishAckP99Ms: this.publishAckLatency.percentile(99),
      commandP50Ms: this.commandLatency.percentile(50),
      commandP99Ms: this.commandLatency.percentile(99),
    };
  }

  /** The fleet's live latency recorders, for encoding to another process; record nothing into them. */
  latencyHistograms(): { publishAck: LatencyHistogram; command: LatencyHistogram } {
    return { publishAck: this.publishAckLatency, command: this.commandLatency };
  }

  private rampMs(): number {
    if (this.rampStartedAt === null) return 0;
    return (this.rampEndedAt ?? this.monotonicClock()) - this.rampStartedAt;
  }

  // --- connect pool ------------------------------------------------------

  private launchConnects(): void {
    const { connectConcurrency, sourceAddresses, sourcePortStart } = this.config;
    while (
      this.state === 'starting' &&
      this.connectsInFlight < connectConcurrency &&
      this.nextToConnect < this.devices.length
    ) {
      const slot = this.nextToConnect++;
      this.connectsInFlight++;
      this.connectStartedAt[slot] = this.monotonicClock();
      if (sourceAddresses === undefined) {
        this.devices[slot].connect(undefined, undefined);
        continue;
      }
      // Round robin over addresses: slot s is device floor(s / A) of its
      // address, so each address's ports count up from sourcePortStart.
      const localPort =
        sourcePortStart === undefined ? undefined : sourcePortStart + Math.floor(slot / sourceAddresses.length);
      this.devices[slot].connect(sourceAddresses[slot % sourceAddresses.length], localPort);
    }
    const noMoreToLaunch = this.nextToConnect === this.devices.length || this.state !== 'starting';
    if (this.connectsInFlight === 0 && noMoreToLaunch && this.startSettled !== null) {
      this.rampEndedAt = this.monotonicClock();
      this.startSettled();
      this.startSettled = null;
    }
  }

  private connectSettled(): void {
    this.connectsInFlight--;
    this.launchConnects();
  }

  // --- device callbacks --------------------------------------------------

  private onSocketOpened(): void {
    this.openSockets++;
  }

  private onSocketClosed(): void {
    this.openSockets--;
    if (this.openSockets === 0 && this.allSocketsClosed !== null) this.allSocketsClosed();
  }

  private onDeviceReady(device: SimDevice): void {
    this.counters.connected++;
    this.connects++;
    const waitedMs = this.monotonicClock() - this.connectStartedAt[device.slot];
    if (waitedMs > this.slowestConnectMs) this.slowestConnectMs = waitedMs;
    // A random phase spreads devices over the interval, so traffic is smooth
    // rather than arriving in one burst per interval.
    if (this.intervalMs !== Infinity && !this.publishingPaused) {
      this.dueAt[device.slot] = this.clock() + this.random() * this.intervalMs;
    }
    this.connectSettled();
  }

  private onDeviceConnectFailed(device: SimDevice, reason: string): void {
    // Another socket (a listener on 0.0.0.0, say) holds the planned port:
    // let the kernel pick one rather than lose the device. The connect slot
    // stays taken, so nothing is settled here.
    if (reason === 'EADDRINUSE' && device.localPort !== undefined && this.state === 'starting') {
      device.connect(device.localAddress, undefined);
      return;
    }
    this.counters.connectFailures++;
    this.emit('connect-failure', device.clientId, reason);
    this.connectSettled();
  }

  private onDeviceStopped(device: SimDevice): void {
    this.counters.connected--;
    this.dueAt[device.slot] = Infinity;
  }

  private onDeviceLost(device: SimDevice, reason: string): void {
    this.counters.connected--;
    this.counters.disconnects++;
    this.dueAt[device.slot] = Infinity;
    this.emit('disconnect', device.clientId, reason);
  }

  // --- shared ticker -----------------------------------------------------

  private tick(): void {
    const now = this.clock();
    if (this.intervalMs !== Infinity) this.publishDue(now);
    if (now >= this.nextSweepAt) {
      this.nextSweepAt = now + this.sweepIntervalMs;
      for (const device of this.devices) device.checkKeepalive(now);
    }
  }

  /** Each due device sends every message it owes since its last turn; timer lag becomes a short burst. */
  private publishDue(now: number): void {
    const dueAt = this.dueAt;
    const interval = this.intervalMs;
    for (let slot = 0; slot < dueAt.length; slot++) {
      const due = dueAt[slot];
      if (due > now) continue;
      const owed = Math.floor((now - due) / interval) + 1;
      dueAt[slot] = due + owed * interval;
      this.devices[slot].publishTelemetry(owed, now, this.scratchPayload, this.telemetryPacket);
    }
  }

  // --- shutdown ----------------------------------------------------------

  private async stopAll(): Promise<void> {
    this.state = 'stopping';
    if (this.ticker !== null) clearInterval(this.ticker);
    this.ticker = null;
    this.dueAt.fill(Infinity);
    const closed = new Promise<void>((resolve) => {
      this.allSocketsClosed = resolve;
    });
    if (this.openSockets === 0) this.allSocketsClosed?.();
    for (const device of this.devices) device.close();
    // Resolve a start() still in progress: no more connects will be launched.
    this.launchConnects();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(resolve, this.config.stopTimeoutMs, 'timeout');
    });
    if ((await Promise.race([closed, timedOut])) === 'timeout') {
      for (const device of this.devices) device.abort('stop timeout');
      await closed;
    }
    clearTimeout(timer);
    this.allSocketsClosed = null;
    this.state = 'stopped';
  }
}
