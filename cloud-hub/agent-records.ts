import type { Logger } from '../shared/logger.js';
import { StreamTable } from '../shared/stream-table.js';
import type { Tunnel } from '../shared/tunnel.js';
import type { SessionEntry } from './device-session.js';
import type { AgentStreams } from './session-streams.js';

/** What the hub knows of one agent process (one worker of it): its streams outlive any one tunnel. */
export interface AgentRecord extends AgentStreams {
  key: string;
  worker: number;
  instance: string;
  /** Tunnels that completed HELLO and are not closed: while there is one, the instance holds the identity. */
  tunnels: Set<Tunnel>;
}

/**
 * One record per agent identity (certificate CN and worker index) and the
 * instance holding it (docs/protocol.md 4).
 */
export class AgentRecords {
  private readonly records = new Map<string, AgentRecord>();

  /** `retire` ends what a replaced instance still holds: its sessions and tunnels. */
  constructor(private readonly retire: (record: AgentRecord) => void) {}

  values(): IterableIterator<AgentRecord> {
    return this.records.values();
  }

  /** Agents (by CN) with at least one tunnel up. */
  get connectedAgents(): number {
    const agents = new Set<string>();
    for (const record of this.records.values()) if (record.tunnels.size > 0) agents.add(record.agentId);
    return agents.size;
  }

  /**
   * The certificate's CN (with the worker index) is the identity; an
   * instance is one process holding it. A new instance replaces the current
   * one only once the current one has no live tunnel (closed, or declared
   * dead by the heartbeat) or has said goodbye: a second process holding the
   * same certificate is refused rather than allowed to end the sessions of
   * the one that is running. Returns the record, or why the HELLO is refused.
   */
  register(agentId: string, worker: number, instance: string, log: Logger): AgentRecord | string {
    const key = `${agentId}#${worker}`;
    const known = this.records.get(key);
    if (known !== undefined && known.instance === instance) return known;
    if (known !== undefined && known.tunnels.size > 0 && !known.departed) {
      return `agent ${agentId} worker ${worker} is already connected as another instance (${known.tunnels.size} live tunnels); a second process is using its certificate`;
    }
    if (known !== undefined) {
      log.info({ previousInstance: known.instance, sessions: known.streams.size }, 'agent restarted; ending its old sessions');
      this.retire(known);
    }
    const record: AgentRecord = { key, agentId, worker, instance, streams: new StreamTable<SessionEntry>('hub'), tunnels: new Set(), departed: false };
    this.records.set(key, record);
    return record;
  }

  /** A revoked agent is forgotten at once: whatever it sends next comes through a new HELLO, which the certificate gate refuses. */
  forget(record: AgentRecord): void {
    if (this.records.get(record.key) === record) this.records.delete(record.key);
  }

  /** An agent with no tunnel and no session left is forgotten. */
  prune(record: AgentRecord): void {
    if (record.tunnels.size > 0 || record.streams.size > 0 || this.records.get(record.key) !== record) return;
    this.records.delete(record.key);
  }
}
