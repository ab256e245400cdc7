import type { Aedes, AedesPublishPacket, Client, Subscription } from 'aedes';
import type { Logger } from '../shared/logger.js';
import { RateLimitedLog } from '../shared/log-rate-limit.js';
import type { AclClient, AclFile } from './acl-file.js';
import { REFUSED_SUBSCRIPTION } from './subscription-limits.js';

/** What the ACL refused: a client's PUBLISH, a filter of its SUBSCRIBE, or a message on its way to it. */
export type AclAction = 'publish' | 'subscribe' | 'deliver';

type SubscribeDone = (err: Error | null, sub?: Subscription | null) => void;

/**
 * Enforces an ACL file on the embedded broker, for devices and applications
 * alike, each known by the client ID and user name of its own CONNECT.
 * Without a file everything is allowed, as before ACLs existed.
 *
 * MQTT 3.1.1 gives a broker one way to refuse a filter (SUBACK 0x80,
 * §3.9.3) and none to refuse a PUBLISH short of closing the connection
 * (§3.3.5): a denied PUBLISH is acknowledged and dropped, as Mosquitto does,
 * so a device with one bad topic keeps its session and its other traffic.
 */
export class BrokerAcl {
  readonly denied: Record<AclAction, number> = { publish: 0, subscribe: 0, deliver: 0 };
  /** aedes does not keep the user name of a CONNECT; authenticate records it here. */
  private readonly usernames = new WeakMap<Client, string>();
  private readonly deniedLog: RateLimitedLog;

  constructor(
    private acl: AclFile | null,
    log: Logger,
  ) {
    // A client can offend once per packet; the log must not grow with it.
    this.deniedLog = new RateLimitedLog(log, { msg: 'access denied by acl', plural: 'acl denials', perSecond: 1, burst: 10 });
  }

  get file(): AclFile | null {
    return this.acl;
  }

  /** Takes effect for the next packet of every client; filters granted earlier stay until unsubscribed. */
  replace(acl: AclFile | null): void {
    this.acl = acl;
  }

  /** From aedes' authenticate hook, for every CONNECT (devices' included). */
  remember(client: Client, username: string | undefined): void {
    if (username === undefined) this.usernames.delete(client);
    else this.usernames.set(client, username);
  }

  /** aedes' authorizeSubscribe: refuses with 0x80 what the ACL does not grant, and hands the rest to `next`. */
  authorizeSubscribe(client: Client, sub: Subscription, done: SubscribeDone, next: () => void): void {
    if (this.acl === null || this.acl.maySubscribe(this.who(client), sub.topic)) {
      next();
      return;
    }
    // Not stored by the persistence, as the subscription limits' refusals.
    (sub as Subscription & { [REFUSED_SUBSCRIPTION]?: true })[REFUSED_SUBSCRIPTION] = true;
    this.deny('subscribe', client, sub.topic);
    // Answered later, never synchronously: aedes stores a SUBSCRIBE's filters
    // as soon as the first is granted when the answers come synchronously.
    process.nextTick(done, null, null);
  }

  /** aedes' authorizeForward: a message the receiver may not read is not delivered to it (retained and queued ones included). */
  authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    if (this.acl === null || this.acl.mayRead(this.who(client), packet.topic)) return packet;
    this.deny('deliver', client, packet.topic);
    return null;
  }

  /**
   * Checks write access where aedes publishes what a client sent (PUBLISH of
   * every QoS, after its PUBACK or PUBREC, and the client's will). aedes'
   * authorizePublish hook cannot be used: refusing there closes the client.
   */
  enforceOnPublish(broker: Aedes): void {
    const publish = broker.publish;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const acl = this;
    broker.publish = function publishIfAllowed(this: Aedes, packet, ...rest: unknown[]): void {
      const client = rest[0];
      if (acl.acl !== null && typeof client === 'object' && client !== null && !acl.acl.mayWrite(acl.who(client as Client), packet.topic)) {
        acl.deny('publish', client as Client, packet.topic);
        const done = rest.find((arg) => typeof arg === 'function') as ((err?: Error) => void) | undefined;
        done?.();
        return;
      }
      (publish as (...args: unknown[]) => void).call(this, packet, ...rest);
    } as Aedes['publish'];
  }

  private who(client: Client): AclClient {
    return { id: client.id, username: this.usernames.get(client) };
  }

  private deny(action: AclAction, client: Client, topic: string): void {
    this.denied[action]++;
    this.deniedLog.info({ clientId: client.id, username: this.usernames.get(client), action, topic: topic.length > 128 ? `${topic.slice(0, 128)}…` : topic });
  }
}
