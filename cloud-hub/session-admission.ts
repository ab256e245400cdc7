import type { Aedes } from 'aedes';
import type { IConnectPacket } from 'mqtt-packet';
import { refusalConnack } from '../shared/connack.js';
import { isEdgemuxError } from '../shared/errors.js';
import type { OpenBody } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { parseConnect } from '../shared/mqtt-connect.js';
import { BrokerPipe } from './broker-pipe.js';
import type { DeviceSession } from './device-session.js';
import { Namespaces, type NamespaceRule, type Route, Router } from './routes.js';
import type { SessionIndex } from './session-index.js';

export interface SessionAdmissionOptions {
  routes: Route[];
  namespaces: NamespaceRule[];
  maxClientIdLength: number;
  maxDevicesPerAgent: number;
  /** An operator drained the agent: its new devices are sent elsewhere. */
  isDraining(agentId: string): boolean;
  /** A session was admitted and connected to its broker. */
  connected(session: DeviceSession): void;
}

/**
 * Decides on each stream's CONNECT, the packet the broker will read, and
 * connects an admitted session to the broker its route names.
 */
export class SessionAdmission {
  private router: Router;
  private namespaceRules: Namespaces;
  /** Client IDs each agent identity holds sessions for, across its workers. */
  private readonly devicesByAgent = new Map<string, Set<string>>();
  /** Agents at their device limit, so it is logged once each time it is reached. */
  private readonly agentsAtDeviceLimit = new Set<string>();
  /** Devices refused because their agent held maxDevicesPerAgent. */
  agentDeviceLimitRefused = 0;

  constructor(
    private readonly options: SessionAdmissionOptions,
    private readonly broker: Aedes,
    private readonly index: SessionIndex,
  ) {
    this.router = new Router(options.routes);
    this.namespaceRules = new Namespaces(options.namespaces);
  }

  get routes(): Route[] {
    return this.router.routes;
  }

  get namespaces(): Namespaces {
    return this.namespaceRules;
  }

  /**
   * Routes for devices that connect from now on. A session keeps the broker
   * connection it has: a route's group is only consulted when a session opens,
   * and its links hold their own sockets, so the old groups can stop their
   * health checks at once without touching a connected device.
   */
  replaceRoutes(routes: Route[]): void {
    const old = this.router;
    this.router = new Router(routes);
    old.close();
  }

  /** Namespace rules for devices that connect from now on; connected devices were checked on their CONNECT and stay. */
  replaceNamespaces(rules: NamespaceRule[]): void {
    this.namespaceRules = new Namespaces(rules);
  }

  close(): void {
    this.router.close();
  }

  /**
   * Checks the CONNECT the broker would read: its client ID and user name
   * must be the ones the OPEN named (routing and the registry use those), the
   * client ID must be no longer than maxClientIdLength and lie in the agent's
   * namespace, the agent must not be drained, the backend must speak the
   * device's protocol version, and the agent must hold fewer than
   * maxDevicesPerAgent devices.
   */
  admit(session: DeviceSession, agentId: string, open: OpenBody, bytes: Buffer, log: Logger): void {
    let connect: IConnectPacket;
    try {
      connect = parseConnect(bytes);
    } catch (err) {
      session.refuse('protocol-violation', isEdgemuxError(err) ? `${err.code}: ${err.message}` : String(err), null);
      return;
    }
    const { clientId, username } = connect;
    const version = connect.protocolVersion ?? 4;
    const notAuthorized = refusalConnack(version, 'not-authorized');
    if (clientId !== open.clientId || username !== open.username) {
      const detail = `CONNECT names client ID ${JSON.stringify(clientId)} but OPEN named ${JSON.stringify(open.clientId)}, or their user names differ`;
      session.refuse('connect-mismatch', detail, notAuthorized);
      return;
    }
    if (clientId.length === 0) {
      session.refuse('connect-mismatch', 'empty client ID in CONNECT (the agent assigns one)', refusalConnack(version, 'identifier-rejected'));
      return;
    }
    const { maxClientIdLength } = this.options;
    if (clientId.length > maxClientIdLength) {
      const detail = `client ID of ${clientId.length} characters is longer than maxClientIdLength (${maxClientIdLength})`;
      session.refuse('client-id-too-long', detail, refusalConnack(version, 'identifier-rejected'));
      return;
    }
    if (!this.namespaceRules.allows(agentId, clientId)) {
      const rule = this.namespaceRules.byDefault ? ` (no namespaces configured: agent ${agentId} may use "${agentId}:*")` : '';
      session.refuse('namespace', `client ID outside the namespace of agent ${agentId}${rule}`, notAuthorized);
      return;
    }
    if (this.options.isDraining(agentId)) {
      session.refuse('agent-draining', `agent ${agentId} is drained`, refusalConnack(version, 'use-another-server'));
      return;
    }
    const route = this.router.pick({ clientId, username, agentId });
    const backend = route?.backend ?? { kind: 'embedded' };
    if (backend.kind === 'embedded' && version === 5) {
      session.refuse('mqtt5-on-embedded', 'MQTT 5 on the embedded 3.1.1 broker', refusalConnack(version, 'unsupported-protocol'));
      return;
    }
    if (!this.holdDevice(agentId, clientId, log)) {
      session.refuse('agent-device-limit', `agent ${agentId} holds maxDevicesPerAgent devices`, refusalConnack(version, 'quota-exceeded'));
      return;
    }
    const previous = this.index.owner(clientId);
    if (previous !== undefined && previous.agentId !== agentId) this.releaseDevice(previous.agentId, clientId);
    if (route !== null) session.route = route.name;
    this.index.admitted(session, clientId);
    if (backend.kind === 'embedded') {
      session.connectBroker(connect, (owner) => {
        const pipe = new BrokerPipe(owner);
        this.broker.handle(pipe);
        return pipe;
      });
    } else {
      session.connectBroker(connect, (owner) => backend.group.connect(owner));
    }
    this.options.connected(session);
  }

  /** A session that owned its client ID ended: its agent holds one device fewer. */
  releaseDevice(agentId: string, clientId: string): void {
    const held = this.devicesByAgent.get(agentId);
    if (held === undefined || !held.delete(clientId)) return;
    this.agentsAtDeviceLimit.delete(agentId);
    if (held.size === 0) this.devicesByAgent.delete(agentId);
  }

  /** Counts `clientId` against the agent's device limit; false when the agent is at it (a takeover within the agent is no new device). */
  private holdDevice(agentId: string, clientId: string, log: Logger): boolean {
    let held = this.devicesByAgent.get(agentId);
    if (held === undefined) {
      held = new Set();
      this.devicesByAgent.set(agentId, held);
    }
    if (held.has(clientId)) return true;
    const limit = this.options.maxDevicesPerAgent;
    if (held.size >= limit) {
      this.agentDeviceLimitRefused++;
      if (!this.agentsAtDeviceLimit.has(agentId)) {
        this.agentsAtDeviceLimit.add(agentId);
        log.warn({ devices: held.size, limit, reason: 'maxDevicesPerAgent reached' }, 'refusing new devices of this agent');
      }
      return false;
    }
    held.add(clientId);
    return true;
  }
}
