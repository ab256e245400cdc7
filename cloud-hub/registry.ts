/**
 * Agent and device registry in SQLite, for the admin API and for operators
 * asking "which devices did this agent carry, and how much traffic".
 *
 * Packet counters are bumped on the data path, so nothing here writes per
 * packet: changes collect in in-memory maps keyed by agent and client ID and
 * are written as one transaction every `flushIntervalMs` (default 1000), on
 * `flush()`, before every read, and at `close()`. A crash loses at most one
 * interval of registry updates; rows stay consistent because each flush is
 * one transaction. `last_seen` for traffic is stamped at flush time, so its
 * resolution is the flush interval; connect and disconnect stamp their own time.
 *
 * A flush that fails (disk full, I/O error, a lock held too long) rolls back
 * and leaves its changes pending; the timer retries them on its next turn and
 * reports each failure as a `flushFailed` event, never as `error`, so a bad disk
 * cannot take the hub down with it. Counters of a pending device keep adding up
 * in place; a device or agent not yet pending while `maxPendingRows` are is
 * dropped and counted, so memory stays bounded however long the disk is away.
 */
import { EventEmitter } from 'node:events';
import { EdgemuxError } from '../shared/errors.js';
import Database from 'better-sqlite3';
import { openStateFile } from './sqlite-file.js';

export interface AgentRow {
  agent_id: string;
  cert_fingerprint: string | null;
  /** Milliseconds since the epoch, as are all times here. */
  first_seen: number;
  last_seen: number;
  /** Tunnels the agent had open after its latest connect or disconnect. */
  tunnels: number;
}

export interface DeviceRow {
  client_id: string;
  agent_id: string | null;
  /** Null while the device is not connected. */
  connected_since: number | null;
  last_seen: number;
  /** Device → broker. */
  msgs_in: number;
  /** Broker → device. */
  msgs_out: number;
  bytes_in: number;
  bytes_out: number;
}

export interface RegistryOptions {
  flushIntervalMs?: number;
  /** Devices and agents not seen (connect, disconnect, traffic) for this long are deleted, hourly and at start. Never, when absent. */
  expireAfterMs?: number;
  /** Agents and devices with unwritten changes, at most; see `RegistryStats.droppedChanges`. */
  maxPendingRows?: number;
  now?: () => number;
}

export interface RegistryStats {
  /** Committed flush transactions. */
  flushes: number;
  /** Agent and device rows written by them. */
  rowsWritten: number;
  /** Flushes on the timer that failed and were left for the next one. */
  flushFailures: number;
  /** Agents and devices with changes not yet written. */
  pendingRows: number;
  /** Changes not kept because `maxPendingRows` were already pending. */
  droppedChanges: number;
  /** Agent and device rows deleted for not being seen within `expireAfterMs`. */
  expiredRows: number;
}

export type RegistryErrorCode = 'E_REGISTRY_CLOSED' | 'E_REGISTRY_FLUSH';

export class RegistryError extends EdgemuxError {
  constructor(code: RegistryErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'RegistryError';
  }
}

export interface RegistryEvents {
  /** A timed flush failed; its changes stay pending. `failures`: consecutive failed flushes so far. */
  flushFailed: [error: RegistryError, failures: number];
  /** A flush succeeded after `failures` consecutive failed ones. */
  flushRecovered: [failures: number];
  /** Rows deleted for not being seen within `expireAfterMs`. */
  expired: [agents: number, devices: number];
}

export const DEFAULT_REGISTRY_FLUSH_INTERVAL_MS = 1000;
const EXPIRE_INTERVAL_MS = 3600_000;
/** About 200 bytes each: a registry kept off disk holds at most ~20 MB. */
export const DEFAULT_REGISTRY_MAX_PENDING_ROWS = 100_000;

interface AgentChange {
  agentId: string;
  fingerprint: string | null;
  tunnels: number;
  /** First event since the last flush: first_seen if the agent is new. */
  firstAt: number;
  at: number;
}

type SessionChange = { kind: 'unchanged' } | { kind: 'connected'; since: number } | { kind: 'disconnected' };

interface DeviceChange {
  clientId: string;
  agentId: string | null;
  session: SessionChange;
  /** Latest connect/disconnect time; traffic is stamped at flush. */
  eventAt: number;
  hadTraffic: boolean;
  msgsIn: number;
  msgsOut: number;
  bytesIn: number;
  bytesOut: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS agents (
  agent_id TEXT PRIMARY KEY,
  cert_fingerprint TEXT,
  first_seen INTEGER NOT NULL,
  last_seen INTEGER NOT NULL,
  tunnels INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (
  client_id TEXT PRIMARY KEY,
  agent_id TEXT,
  connected_since INTEGER,
  last_seen INTEGER NOT NULL,
  msgs_in INTEGER NOT NULL DEFAULT 0,
  msgs_out INTEGER NOT NULL DEFAULT 0,
  bytes_in INTEGER NOT NULL DEFAULT 0,
  bytes_out INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS devices_by_agent ON devices (agent_id);
`;

interface DeviceParams {
  clientId: string;
  agentId: string | null;
  keepSession: 0 | 1;
  connectedSince: number | null;
  lastSeen: number;
  msgsIn: number;
  msgsOut: number;
  bytesIn: number;
  bytesOut: number;
}

export class Registry extends EventEmitter<RegistryEvents> {
  readonly db: Database.Database;
  readonly #ownsDb: boolean;
  readonly #now: () => number;
  readonly #maxPendingRows: number;
  readonly #timer: NodeJS.Timeout;
  readonly #expireTimer: NodeJS.Timeout | null;
  readonly #expireAfterMs: number | undefined;
  readonly #deleteExpired: (before: number) => { agents: number; devices: number };
  #expiredRows = 0;
  readonly #agentChanges = new Map<string, AgentChange>();
  readonly #deviceChanges = new Map<string, DeviceChange>();
  readonly #upsertAgent: Database.Statement<[AgentChange]>;
  readonly #upsertDevice: Database.Statement<[DeviceParams]>;
  readonly #selectAgents: Database.Statement<[], AgentRow>;
  readonly #selectDevices: Database.Statement<[], DeviceRow>;
  readonly #selectDeviceKnown: Database.Statement<[string], { known: 1 }>;
  readonly #writeChanges: (at: number) => void;
  #closed = false;
  #flushes = 0;
  #rowsWritten = 0;
  #flushFailures = 0;
  #failingFlushes = 0;
  #droppedChanges = 0;

  /** Pass the Database the SqlitePersistence uses to keep one file; its owner then closes it. */
  constructor(db: Database.Database | { path: string }, options: RegistryOptions = {}) {
    super();
    if (db instanceof Database) {
      this.db = db;
      this.#ownsDb = false;
    } else {
      this.db = openStateFile(db.path);
      this.#ownsDb = true;
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
    }
    this.#now = options.now ?? Date.now;
    this.#maxPendingRows = options.maxPendingRows ?? DEFAULT_REGISTRY_MAX_PENDING_ROWS;
    this.db.exec(SCHEMA);

    this.#upsertAgent = this.db.prepare(
      `INSERT INTO agents (agent_id, cert_fingerprint, first_seen, last_seen, tunnels)
       VALUES (@agentId, @fingerprint, @firstAt, @at, @tunnels)
       ON CONFLICT (agent_id) DO UPDATE SET
         cert_fingerprint = coalesce(excluded.cert_fingerprint, cert_fingerprint),
         last_seen = max(last_seen, excluded.last_seen),
         tunnels = excluded.tunnels`,
    );
    this.#upsertDevice = this.db.prepare(
      `INSERT INTO devices (client_id, agent_id, connected_since, last_seen, msgs_in, msgs_out, bytes_in, bytes_out)
       VALUES (@clientId, @agentId, @connectedSince, @lastSeen, @msgsIn, @msgsOut, @bytesIn, @bytesOut)
       ON CONFLICT (client_id) DO UPDATE SET
         agent_id = coalesce(excluded.agent_id, agent_id),
         connected_since = CASE WHEN @keepSession THEN connected_since ELSE excluded.connected_since END,
         last_seen = max(last_seen, excluded.last_seen),
         msgs_in = msgs_in + excluded.msgs_in,
         msgs_out = msgs_out + excluded.msgs_out,
         bytes_in = bytes_in + excluded.bytes_in,
         bytes_out = bytes_out + excluded.bytes_out`,
    );
    this.#selectAgents = this.db.prepare('SELECT * FROM agents ORDER BY agent_id');
    this.#selectDevices = this.db.prepare('SELECT * FROM devices ORDER BY client_id');
    this.#selectDeviceKnown = this.db.prepare('SELECT 1 AS known FROM devices WHERE client_id = ?');
    this.#writeChanges = this.db.transaction((at: number) => {
      for (const change of this.#agentChanges.values()) this.#upsertAgent.run(change);
      for (const change of this.#deviceChanges.values()) this.#upsertDevice.run(deviceParams(change, at));
    });

    // By last_seen alone: a hub that stopped without writing its disconnects
    // leaves rows that look connected forever. A device still connected but
    // silent that long gets its row back with its next change; meanwhile its
    // live session keeps its client ID from applications.
    const deleteDevices = this.db.prepare<[number]>('DELETE FROM devices WHERE last_seen < ?');
    const deleteAgents = this.db.prepare<[number]>('DELETE FROM agents WHERE last_seen < ?');
    this.#deleteExpired = this.db.transaction((before: number) => ({
      agents: deleteAgents.run(before).changes,
      devices: deleteDevices.run(before).changes,
    }));

    this.#timer = setInterval(() => this.#flushOnTimer(), options.flushIntervalMs ?? DEFAULT_REGISTRY_FLUSH_INTERVAL_MS);
    this.#timer.unref();
    this.#expireAfterMs = options.expireAfterMs;
    this.#expireTimer = null;
    if (this.#expireAfterMs !== undefined) {
      this.#expireTimer = setInterval(() => this.#expireOnTimer(), EXPIRE_INTERVAL_MS);
      this.#expireTimer.unref();
      // Listeners are attached after construction: the first pass waits for them.
      setImmediate(() => this.#expireOnTimer());
    }
  }

  /**
   * Deletes devices and agents last seen more than `expireAfterMs` ago,
   * after writing pending changes (a row about to be touched is not
   * expired). Returns how many of each went.
   */
  expire(): { agents: number; devices: number } {
    this.#assertOpen();
    if (this.#expireAfterMs === undefined) return { agents: 0, devices: 0 };
    this.flush();
    const deleted = this.#deleteExpired(this.#now() - this.#expireAfterMs);
    this.#expiredRows += deleted.agents + deleted.devices;
    if (deleted.agents + deleted.devices > 0) this.emit('expired', deleted.agents, deleted.devices);
    return deleted;
  }

  #expireOnTimer(): void {
    if (this.#closed) return;
    try {
      this.expire();
    } catch {
      // A failing disk is reported by the flush timer; expiry waits for the next turn.
    }
  }

  get stats(): RegistryStats {
    return {
      flushes: this.#flushes,
      rowsWritten: this.#rowsWritten,
      flushFailures: this.#flushFailures,
      pendingRows: this.#pendingRows(),
      droppedChanges: this.#droppedChanges,
      expiredRows: this.#expiredRows,
    };
  }

  /** `tunnels`: how many tunnels the agent has open now, this one included. */
  agentConnected(agentId: string, fingerprint: string, tunnels: number): void {
    this.#agentChange(agentId, fingerprint, tunnels);
  }

  /** `tunnels`: how many tunnels the agent still has open. */
  agentDisconnected(agentId: string, tunnels: number): void {
    this.#agentChange(agentId, null, tunnels);
  }

  deviceConnected(clientId: string, agentId: string): void {
    const change = this.#deviceChange(clientId);
    if (change === null) return;
    const at = this.#now();
    change.agentId = agentId;
    change.session = { kind: 'connected', since: at };
    change.eventAt = at;
  }

  deviceDisconnected(clientId: string): void {
    const change = this.#deviceChange(clientId);
    if (change === null) return;
    change.session = { kind: 'disconnected' };
    change.eventAt = this.#now();
  }

  /** Data path: one map lookup and four additions, no I/O. */
  countToBroker(clientId: string, bytes: number, messages = 1): void {
    const change = this.#deviceChange(clientId);
    if (change === null) return;
    change.hadTraffic = true;
    change.msgsIn += messages;
    change.bytesIn += bytes;
  }

  countToDevice(clientId: string, bytes: number, messages = 1): void {
    const change = this.#deviceChange(clientId);
    if (change === null) return;
    change.hadTraffic = true;
    change.msgsOut += messages;
    change.bytesOut += bytes;
  }

  agents(): AgentRow[] {
    this.flush();
    return this.#selectAgents.all();
  }

  devices(): DeviceRow[] {
    this.flush();
    return this.#selectDevices.all();
  }

  /** Whether a device with this client ID was ever seen, including changes not yet written. */
  knowsDevice(clientId: string): boolean {
    this.#assertOpen();
    return this.#deviceChanges.has(clientId) || this.#selectDeviceKnown.get(clientId) !== undefined;
  }

  /** Writes pending changes in one transaction; on failure they stay pending for the next attempt. */
  flush(): void {
    this.#assertOpen();
    const rows = this.#pendingRows();
    if (rows === 0) return;
    this.#writeChanges(this.#now());
    this.#agentChanges.clear();
    this.#deviceChanges.clear();
    this.#flushes++;
    this.#rowsWritten += rows;
  }

  /** Flushes, stops the timer and closes the database unless it was passed in. Idempotent. */
  close(): void {
    if (this.#closed) return;
    clearInterval(this.#timer);
    if (this.#expireTimer !== null) clearInterval(this.#expireTimer);
    try {
      this.flush();
    } finally {
      this.#closed = true;
      if (this.#ownsDb) this.db.close();
    }
  }

  #flushOnTimer(): void {
    try {
      this.flush();
    } catch (err) {
      this.#flushFailures++;
      this.#failingFlushes++;
      const reason = (err as { code?: string }).code ?? (err as Error).message;
      this.emit('flushFailed', new RegistryError('E_REGISTRY_FLUSH', `registry flush failed: ${reason}`, { cause: err }), this.#failingFlushes);
      return;
    }
    if (this.#failingFlushes > 0) {
      const failures = this.#failingFlushes;
      this.#failingFlushes = 0;
      this.emit('flushRecovered', failures);
    }
  }

  #pendingRows(): number {
    return this.#agentChanges.size + this.#deviceChanges.size;
  }

  #agentChange(agentId: string, fingerprint: string | null, tunnels: number): void {
    this.#assertOpen();
    const at = this.#now();
    const change = this.#agentChanges.get(agentId);
    if (change === undefined) {
      if (this.#pendingRows() >= this.#maxPendingRows) {
        this.#droppedChanges++;
        return;
      }
      this.#agentChanges.set(agentId, { agentId, fingerprint, tunnels, firstAt: at, at });
      return;
    }
    if (fingerprint !== null) change.fingerprint = fingerprint;
    change.tunnels = tunnels;
    change.at = at;
  }

  /** Null when the change cannot be kept: `maxPendingRows` are pending already. */
  #deviceChange(clientId: string): DeviceChange | null {
    this.#assertOpen();
    let change = this.#deviceChanges.get(clientId);
    if (change === undefined) {
      if (this.#pendingRows() >= this.#maxPendingRows) {
        this.#droppedChanges++;
        return null;
      }
      change = {
        clientId,
        agentId: null,
        session: { kind: 'unchanged' },
        eventAt: 0,
        hadTraffic: false,
        msgsIn: 0,
        msgsOut: 0,
        bytesIn: 0,
        bytesOut: 0,
      };
      this.#deviceChanges.set(clientId, change);
    }
    return change;
  }

  #assertOpen(): void {
    if (this.#closed) throw new RegistryError('E_REGISTRY_CLOSED', 'registry is closed');
  }
}

function deviceParams(change: DeviceChange, flushedAt: number): DeviceParams {
  return {
    clientId: change.clientId,
    agentId: change.agentId,
    keepSession: change.session.kind === 'unchanged' ? 1 : 0,
    connectedSince: change.session.kind === 'connected' ? change.session.since : null,
    lastSeen: change.hadTraffic ? Math.max(flushedAt, change.eventAt) : change.eventAt,
    msgsIn: change.msgsIn,
    msgsOut: change.msgsOut,
    bytesIn: change.bytesIn,
    bytesOut: change.bytesOut,
  };
}
