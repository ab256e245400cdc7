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
  private droppedOversizedOfClosed = 0;

  constructor(private readonly registry: Registry | null) {
    this.traffic = registry === null ? null : new TrafficReports(registry);
  }

  /** QoS 0 messages dropped for devices that could not keep up, ended sessions included. */
  get droppedQos0(): number {
    let dropped = this.droppedQos0OfClosed;
    for (const session of this.sessions) dropped += session.droppedQos0;
    return dropped;
  }

  /** Deliveries dropped as too large for their device, ended sessions included. */
  get droppedOversized(): number {
    let dropped = this.droppedOversizedOfClosed;
    for (const session of this.sessions) dropped += session.droppedOversized;
    return dropped;
  }

  opened(session: DeviceSession): void {
    this.sessions.add(session);
  }

  /** The session's CONNECT was admitted: it owns its client ID, taking it over from an older session. */
  admitted(session: DeviceSession, clientId: string): void {
    this.byClientId.set(clientId, session);
  }

  /** Only a device the broker accepted is recorded: refused client IDs would grow the registry without bound. */
  brokerAccepted(session: DeviceSession): void {
    if (this.byClientId.get(session.clientId) !== session) return;
    this.registry?.deviceConnected(session.clientId, session.agentId);
    if (this.registry === null) this.deviceClientIds.add(session.clientId);
  }

  /** Forgets the session; true when it still owned its client ID (no takeover came first). */
  closed(session: DeviceSession): boolean {
    this.sessions.delete(session);
    this.traffic?.report(session);
    this.droppedQos0OfClosed += session.droppedQos0;
    this.droppedOversizedOfClosed += session.droppedOversized;
    // After a takeover the newer session owns the client ID.
    if (this.byClientId.get(session.clientId) !== session) return false;
    this.byClientId.delete(session.clientId);
    if (session.admitted) this.registry?.deviceDisconnected(session.clientId);
    return true;
  }

  /** The session that owns `clientId` now. */
  owner(clientId: string): DeviceSession | undefined {
    return this.byClientId.get(clientId);
  }

  /** The session of each connected client ID, in no particular order. */
  owners(): IterableIterator<DeviceSession> {
    return this.byClientId.values();
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
