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

/**
 * Decides on each stream's CONNECT, the packet the broker will read, and
 * connects an admitted session to the broker its route names.
 */
export class SessionAdmission {
  private router: Router;
  private namespaces: Namespaces;

  constructor(
    routes: Route[],
    rules: NamespaceRule[],
    private readonly broker: Aedes,
    private readonly index: SessionIndex,
  ) {
    this.router = new Router(routes);
    this.namespaces = new Namespaces(rules);
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
    this.namespaces = new Namespaces(rules);
  }

  close(): void {
    this.router.close();
  }

  /**
   * Checks the CONNECT the broker would read: its client ID and user name
   * must be the ones the OPEN named (routing and the registry use those), the
   * client ID must lie in the agent's namespace, and the backend must speak
   * the device's protocol version.
   */
  admit(session: DeviceSession, agentId: string, open: OpenBody, bytes: Buffer, log: Logger): void {
    const refuse = (detail: string, clientId: string, connack: Buffer | null, reason: 'refused' | 'protocol-error' = 'refused'): void => {
      log.info({ clientId, streamId: session.stream.id, reason, detail }, 'device refused');
      session.refuse(reason, detail, connack);
    };
    let connect: IConnectPacket;
    try {
      connect = parseConnect(bytes);
    } catch (err) {
      refuse(isEdgemuxError(err) ? `${err.code}: ${err.message}` : String(err), open.clientId, null, 'protocol-error');
      return;
    }
    const { clientId, username } = connect;
    const version = connect.protocolVersion ?? 4;
    const notAuthorized = refusalConnack(version, 'not-authorized');
    if (clientId !== open.clientId || username !== open.username) {
      refuse(`CONNECT names client ID ${JSON.stringify(clientId)} but OPEN named ${JSON.stringify(open.clientId)}, or their user names differ`, clientId, notAuthorized);
      return;
    }
    if (clientId.length === 0) {
      refuse('empty client ID in CONNECT (the agent assigns one)', clientId, refusalConnack(version, 'identifier-rejected'));
      return;
    }
    if (!this.namespaces.allows(agentId, clientId)) {
      refuse(`client ID outside the namespace of agent ${agentId}`, clientId, notAuthorized);
      return;
    }
    const backend = this.router.backendFor({ clientId, username, agentId });
    if (backend.kind === 'embedded' && version === 5) {
      refuse('MQTT 5 on the embedded 3.1.1 broker', clientId, refusalConnack(version, 'unsupported-protocol'));
      return;
    }
    this.index.admitted(session, clientId, agentId);
    if (backend.kind === 'embedded') {
      session.connectBroker(connect, (owner) => {
        const pipe = new BrokerPipe(owner);
        this.broker.handle(pipe);
        return pipe;
      });
    } else {
      session.connectBroker(connect, (owner) => backend.group.connect(owner));
    }
  }
}
