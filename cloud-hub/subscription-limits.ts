import type { Client, Subscription } from 'aedes';
import type { Logger } from '../shared/logger.js';

export interface SubscriptionLimitOptions {
  /** Topic filters one client may hold; SUBSCRIBE asking for more gets 0x80 for the excess. */
  maxPerClient: number;
  /** Longest topic filter, in UTF-8 bytes. */
  maxTopicLength: number;
  /** Most levels (`/`-separated) in a topic filter. */
  maxTopicLevels: number;
}

/**
 * Each filter costs the broker a trie path and a persisted row; 100 000 from
 * one device cost the hub 117 MiB. Mosquitto has no per-client default, so
 * this one is chosen for fleets: a device holds a few, an application
 * subscribes with wildcards.
 */
export const DEFAULT_SUBSCRIPTION_LIMITS: SubscriptionLimitOptions = { maxPerClient: 1000, maxTopicLength: 1024, maxTopicLevels: 32 };

/** Marks a filter refused here, so the persistence does not store it (aedes hands it the whole SUBSCRIBE). */
export const REFUSED_SUBSCRIPTION = Symbol('edgemux.refusedSubscription');

/** A client that keeps exceeding a limit is logged at most this often. */
const LOG_INTERVAL_MS = 10_000;

/**
 * aedes' authorizeSubscribe hook: a filter past a limit is refused with SUBACK
 * return code 0x80 (MQTT 3.1.1 §3.9.3), the rest of the SUBSCRIBE is granted
 * and the client stays connected.
 */
export class SubscriptionLimits {
  /** Filters each connected client holds or has been granted in a SUBSCRIBE still being handled. */
  private readonly held = new WeakMap<Client, Set<string>>();
  private readonly loggedAt = new WeakMap<Client, number>();
  refused = 0;

  constructor(
    private readonly limits: SubscriptionLimitOptions,
    private readonly log: Logger,
  ) {}

  authorize(client: Client, sub: Subscription, done: (err: Error | null, sub?: Subscription | null) => void): void {
    const problem = this.problem(client, sub);
    if (problem !== null) {
      this.refused++;
      (sub as Subscription & { [REFUSED_SUBSCRIPTION]?: true })[REFUSED_SUBSCRIPTION] = true;
      this.logRefusal(client, sub.topic, problem);
    }
    // aedes authorizes every filter of a SUBSCRIBE before storing any only
    // when the answers come later: it stores the whole packet's filters as
    // soon as the first is granted.
    process.nextTick(done, null, problem === null ? sub : null);
  }

  /** The client unsubscribed from `topics`. */
  forget(client: Client, topics: string[]): void {
    const held = this.held.get(client);
    if (held === undefined) return;
    for (const topic of topics) held.delete(topic);
  }

  private problem(client: Client, sub: Subscription): string | null {
    const bytes = Buffer.byteLength(sub.topic);
    if (bytes > this.limits.maxTopicLength) return `topic filter of ${bytes} bytes is longer than subscriptions.maxTopicLength (${this.limits.maxTopicLength})`;
    let levels = 1;
    for (let i = 0; i < sub.topic.length; i++) if (sub.topic.charCodeAt(i) === 0x2f /* / */) levels++;
    if (levels > this.limits.maxTopicLevels) return `topic filter of ${levels} levels is deeper than subscriptions.maxTopicLevels (${this.limits.maxTopicLevels})`;
    let held = this.held.get(client);
    if (held === undefined) {
      held = new Set();
      this.held.set(client, held);
    }
    if (held.has(sub.topic)) return null;
    if (held.size >= this.limits.maxPerClient) return `more than subscriptions.maxPerClient (${this.limits.maxPerClient}) topic filters`;
    held.add(sub.topic);
    return null;
  }

  private logRefusal(client: Client, topic: string, reason: string): void {
    const now = Date.now();
    if (now - (this.loggedAt.get(client) ?? -Infinity) < LOG_INTERVAL_MS) return;
    this.loggedAt.set(client, now);
    this.log.warn({ clientId: client.id, topic: topic.length > 128 ? `${topic.slice(0, 128)}…` : topic, reason }, 'subscription refused');
  }
}
