import type { DeviceSession } from './device-session.js';
import type { Registry } from './registry.js';

type Traffic = DeviceSession['traffic'];

const NOTHING: Traffic = { bytesToBroker: 0, packetsToBroker: 0, bytesToDevice: 0, packetsToDevice: 0 };

/**
 * Hands each session's traffic since its last report to the registry, which
 * writes it in batches: counted on the data path by the session, reported
 * here once a second and when the session ends.
 */
export class TrafficReports {
  private readonly reported = new WeakMap<DeviceSession, Traffic>();

  constructor(private readonly registry: Registry) {}

  reportAll(sessions: Iterable<DeviceSession>): void {
    for (const session of sessions) this.report(session);
  }

  report(session: DeviceSession): void {
    // The registry has rows only for devices a broker admitted.
    if (!session.admitted) return;
    const now = session.traffic;
    const last = this.reported.get(session) ?? NOTHING;
    if (now.packetsToBroker === last.packetsToBroker && now.packetsToDevice === last.packetsToDevice) return;
    if (now.packetsToBroker > last.packetsToBroker) {
      this.registry.countToBroker(session.clientId, now.bytesToBroker - last.bytesToBroker, now.packetsToBroker - last.packetsToBroker);
    }
    if (now.packetsToDevice > last.packetsToDevice) {
      this.registry.countToDevice(session.clientId, now.bytesToDevice - last.bytesToDevice, now.packetsToDevice - last.packetsToDevice);
    }
    this.reported.set(session, { ...now });
  }
}
