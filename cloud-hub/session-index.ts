import type { DeviceSession } from './device-session.js';
import type { Registry } from './registry.js';
import { TrafficReports } from './traffic-reports.js';

/**
 * The device sessions the hub holds and the client IDs devices use: which
 * session owns a client ID now, and which IDs devices have used, so that no
 * application takes one (recorded in the registry when there is one).
 */
export class SessionIndex {
  readonly sessions = new Set<DeviceSession>();
  private readonly byClientId = new Map<string, DeviceSession>();
  /** Without a registry: every client ID a device has used on this hub. */
  private readonly deviceClientIds = new Set<string>();
  private readonly traffic: TrafficReports | null;
  private droppedQos0OfClosed = 0;

  constructor(private readonly registry: Registry | null) {
    this.traffic = registry === null ? null : new TrafficReports(registry);
  }

  /** QoS 0 messages dropped for devices that could not keep up, ended sessions included. */
  get droppedQos0(): number {
    let dropped = this.droppedQos0OfClosed;
    for (const session of this.sessions) dropped += session.droppedQos0;
    return dropped;
  }

  opened(session: DeviceSession): void {
    this.sessions.add(session);
  }

  /** The session's CONNECT was admitted: it owns its client ID, taking it over from an older session. */
  admitted(session: DeviceSession, clientId: string, agentId: string): void {
    this.byClientId.set(clientId, session);
    this.registry?.deviceConnected(clientId, agentId);
    if (this.registry === null) this.deviceClientIds.add(clientId);
  }

  closed(session: DeviceSession): void {
    this.sessions.delete(session);
    this.traffic?.report(session);
    // After a takeover the newer session owns the client ID.
    if (this.byClientId.get(session.clientId) === session) {
      this.byClientId.delete(session.clientId);
      this.registry?.deviceDisconnected(session.clientId);
    }
    this.droppedQos0OfClosed += session.droppedQos0;
  }

  /** A client ID a device uses now or has used through a tunnel. */
  isDeviceClientId(clientId: string): boolean {
    if (this.byClientId.has(clientId)) return true;
    return this.registry !== null ? this.registry.knowsDevice(clientId) : this.deviceClientIds.has(clientId);
  }

  reportTraffic(): void {
    this.traffic?.reportAll(this.sessions);
  }
}
