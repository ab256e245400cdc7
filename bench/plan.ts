/** How big and how long each scenario runs, for --quick and for the full run. */

export interface TrafficCase {
  devices: number;
  qos: 0 | 1;
  /** Overrides the plan's in-flight window for this case (sensitivity runs). */
  inFlight?: number;
}

export interface Plan {
  mode: 'quick' | 'full';
  reps: number;
  /** Waiting for other load on the machine to pass before a measurement, and repeating disturbed ones. */
  quietWaitMs: number;
  retries: number;
  /** The whole run stops starting new measurements past this. */
  budgetMs: number;
  /** What each scenario needs at least (ms), kept free for it while earlier ones run. */
  scenarioMs: Record<string, number>;
  throughput: {
    cases: TrafficCase[];
    bridgeCases: TrafficCase[];
    warmupMs: number;
    windowMs: number;
    /** Offered load in messages per second over the whole fleet: far above what any system here delivers. */
    offeredPerSec: number;
    /**
     * End-to-end window: at most this many messages sent by the fleet and
     * not yet delivered to the subscriber, at either QoS (QoS 1 devices
     * also keep the fleet's own cap of 100 unacknowledged each). Measured
     * on this machine: aedes (alone or embedded) delivers the most at about
     * 1000 in flight and degrades beyond (62.9k → 63.7k → 27.6k msg/s for
     * QoS 0 at 1000 → 2500 → 10 000; QoS 1 45.8k → 32.8k → 14.5k), because
     * its internal queues grow; with no window at all (TCP backpressure
     * only, megabytes of loopback buffers per socket) both aedes and the
     * chain collapse to a few thousand msg/s: that measures the overload,
     * not the capacity.
     */
    inFlight: number;
  };
  latency: { devices: number; ratePerSec: number; warmupMs: number; windowMs: number };
  memory: { devices: number; settleMs: number };
  /** `mosquitto`: also chain to Mosquitto against Mosquitto alone (the connects/s target is through the chain to Mosquitto). */
  storm: { devices: number; mosquitto: boolean };
  wan: {
    idleDevices: number;
    /** Keepalive of idle devices: short, so that direct devices really ping inside the window. */
    keepaliveSeconds: number;
    /** A multiple of the tunnel heartbeat (5 s), so every window holds the same number of heartbeats. */
    windowMs: number;
    windows: number;
    messageDevices: number;
    messages: number;
  };
  ceiling: { warmupMs: number; windowMs: number } | null;
  profile: boolean;
}

export const QUICK: Plan = {
  mode: 'quick',
  reps: 3,
  // No waiting in the short run (its time is bounded); disturbed measurements are still flagged.
  quietWaitMs: 0,
  retries: 0,
  budgetMs: 170_000,
  scenarioMs: { a: 44_000, b: 22_000, c: 20_000, d: 18_000, e: 36_000 },
  throughput: {
    cases: [
      { devices: 100, qos: 0 },
      { devices: 100, qos: 1 },
    ],
    bridgeCases: [{ devices: 100, qos: 1 }],
    warmupMs: 500,
    windowMs: 1000,
    offeredPerSec: 200_000,
    inFlight: 1000,
  },
  latency: { devices: 1000, ratePerSec: 10_000, warmupMs: 500, windowMs: 1500 },
  memory: { devices: 3000, settleMs: 800 },
  storm: { devices: 3000, mosquitto: false },
  wan: { idleDevices: 500, keepaliveSeconds: 4, windowMs: 5000, windows: 3, messageDevices: 100, messages: 1000 },
  ceiling: null,
  profile: false,
};

export const FULL: Plan = {
  mode: 'full',
  reps: 3,
  quietWaitMs: 60_000,
  retries: 2,
  budgetMs: 60 * 60_000,
  scenarioMs: {},
  throughput: {
    cases: [
      { devices: 100, qos: 0 },
      { devices: 100, qos: 1 },
      { devices: 1000, qos: 0 },
      { devices: 1000, qos: 1 },
      // How much the answer depends on the window: the same cases with 2.5x as many in flight.
      { devices: 100, qos: 0, inFlight: 2500 },
      { devices: 100, qos: 1, inFlight: 2500 },
    ],
    bridgeCases: [
      { devices: 100, qos: 0 },
      { devices: 100, qos: 1 },
      { devices: 1000, qos: 0 },
      { devices: 1000, qos: 1 },
    ],
    warmupMs: 2000,
    windowMs: 8000,
    offeredPerSec: 200_000,
    inFlight: 1000,
  },
  latency: { devices: 1000, ratePerSec: 10_000, warmupMs: 3000, windowMs: 10_000 },
  memory: { devices: 10_000, settleMs: 2000 },
  storm: { devices: 10_000, mosquitto: true },
  wan: { idleDevices: 1000, keepaliveSeconds: 4, windowMs: 20_000, windows: 3, messageDevices: 100, messages: 5000 },
  ceiling: { warmupMs: 1000, windowMs: 5000 },
  profile: true,
};
