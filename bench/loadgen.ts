/**
 * A load generator process: one firmware-sim DeviceFleet, driven by the
 * bench over RPC. Runs apart from the bench and from the systems under test
 * (but on the same 2 cores).
 */
import net from 'node:net';
import { DeviceFleet, type FleetStats } from '../firmware-sim/device-fleet.js';
import type { FleetOptions } from '../firmware-sim/fleet-config.js';
import { nowMs } from '../firmware-sim/telemetry-payload.js';
import { serveRpc } from './rpc.js';

export interface LoadgenStartParams {
  options: FleetOptions;
  /**
   * Freeze the fleet's clock until `release`: devices connect but publish
   * nothing (and send no PINGREQ), so traffic starts at a known moment, with
   * every device connected. Payload time stamps then run behind real time by
   * the time held (`release` returns it; the subscriber takes it off).
   */
  hold?: boolean;
  /** How often the ramp is sampled to find when 50/99/100% were connected. */
  pollMs?: number;
  /**
   * End-to-end flow control for saturation runs: at most `messages` sent
   * but not yet delivered to the subscriber, whose running total arrives on
   * `port` (subscriber.ts feedback). Without it an overloaded broker queues
   * without bound (loopback TCP buffers hold megabytes per socket, and QoS 0
   * has no acknowledgement to wait for), and aedes' throughput collapses as
   * its queue grows: that measures the overload, not the capacity.
   */
  window?: { port: number; messages: number };
}

export interface ConnectRamp {
  devices: number;
  connected: number;
  failures: number;
  /** From start() to the moment half, 99% and all of the connected devices were ready (ms). */
  t50Ms: number;
  t99Ms: number;
  t100Ms: number;
  /** Highest number of devices that became ready in one 100 ms slice, per second. */
  peakPerSec: number;
  failureReasons: Record<string, number>;
}

let fleet: DeviceFleet | null = null;
/** The fleet's clock stands still while any hold is on: nothing becomes due, nothing is owed for the pause. */
let heldAt: number | null = null;
let offset = 0;
let manualHold = false;
let windowHold = false;
let windowMessages = Infinity;
let delivered = 0;
/** Times the window stopped the devices, and how long they stood in total. */
let windowStops = 0;
let windowStoppedMs = 0;
let windowStoppedAt = 0;
const failureReasons: Record<string, number> = {};
const disconnectReasons: Record<string, number> = {};
const MAX_REASON_KINDS = 20;

function note(into: Record<string, number>, reason: string): void {
  const key = reason.replace(/\d+/g, 'N');
  if (into[key] === undefined && Object.keys(into).length >= MAX_REASON_KINDS) return;
  into[key] = (into[key] ?? 0) + 1;
}

function clock(): number {
  return heldAt ?? nowMs() - offset;
}

function applyHolds(): void {
  const hold = manualHold || windowHold;
  if (hold && heldAt === null) {
    heldAt = nowMs() - offset;
  } else if (!hold && heldAt !== null) {
    offset = nowMs() - heldAt;
    heldAt = null;
  }
}

function regulate(): void {
  if (fleet === null) return;
  const full = fleet.stats().sent - delivered >= windowMessages;
  if (full && !windowHold) {
    windowStops++;
    windowStoppedAt = performance.now();
  } else if (!full && windowHold) {
    windowStoppedMs += performance.now() - windowStoppedAt;
  }
  windowHold = full;
  applyHolds();
}

function connectFeedback(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
    let pending: Buffer = Buffer.alloc(0);
    socket.once('connect', () => resolve());
    socket.once('error', reject);
    socket.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      const whole = pending.length - (pending.length % 8);
      if (whole === 0) return;
      delivered = pending.readDoubleBE(whole - 8);
      pending = pending.subarray(whole);
      regulate();
    });
  });
}

function requireFleet(): DeviceFleet {
  if (fleet === null) throw new Error('no fleet started');
  return fleet;
}

serveRpc({
  async start(params: LoadgenStartParams): Promise<ConnectRamp> {
    if (fleet !== null) throw new Error('a fleet is already running in this process');
    manualHold = params.hold === true;
    if (params.window !== undefined) {
      windowMessages = params.window.messages;
      await connectFeedback(params.window.port);
    }
    applyHolds();
    const f = new DeviceFleet(params.options, { clock });
    fleet = f;
    f.on('connect-failure', (_id, reason) => note(failureReasons, reason));
    f.on('disconnect', (_id, reason) => note(disconnectReasons, reason));
    const pollMs = params.pollMs ?? 5;
    const samples: { at: number; connected: number }[] = [];
    const t0 = performance.now();
    const poll = setInterval(() => samples.push({ at: performance.now() - t0, connected: f.stats().connected }), pollMs);
    await f.start();
    clearInterval(poll);
    const end = performance.now() - t0;
    const stats = f.stats();
    samples.push({ at: end, connected: stats.connected });
    const when = (share: number): number => {
      const target = Math.ceil(stats.connected * share);
      return samples.find((s) => s.connected >= target)?.at ?? end;
    };
    let peak = 0;
    for (let i = 0, j = 0; i < samples.length; i++) {
      while (samples[i].at - samples[j].at > 100) j++;
      peak = Math.max(peak, ((samples[i].connected - samples[j].connected) * 1000) / Math.max(100, samples[i].at - samples[j].at));
    }
    return {
      devices: stats.devices,
      connected: stats.connected,
      failures: stats.connectFailures,
      t50Ms: when(0.5),
      t99Ms: when(0.99),
      t100Ms: when(1),
      peakPerSec: Math.round(peak),
      failureReasons,
    };
  },
  /** Ends the initial hold; returns how far the fleet's clock now runs behind real time (ms). */
  release(): number {
    manualHold = false;
    applyHolds();
    return offset;
  },
  stats(): FleetStats & { disconnectReasons: Record<string, number>; windowStops: number; windowStoppedMs: number } {
    return { ...requireFleet().stats(), disconnectReasons, windowStops, windowStoppedMs: Math.round(windowStoppedMs) };
  },
  pause(): FleetStats {
    const f = requireFleet();
    f.pausePublishing();
    return f.stats();
  },
  async stop(): Promise<FleetStats | null> {
    if (fleet === null) return null;
    await fleet.stop();
    return fleet.stats();
  },
});
