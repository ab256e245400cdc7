import { FrameType, type HelloBody, PROTOCOL_VERSION } from './frame-codec.js';
import type { Tunnel } from './tunnel.js';

/**
 * The HELLO exchange both roles run (docs/protocol.md section 4): build our
 * HELLO, check the peer's, and settle what the tunnel may use. Peers of one
 * major version (HELLO `version`) always talk; features added within it are
 * named in `capabilities` and used only when both sides list them.
 */

/**
 * Features a peer may list. `goodbye`: it takes GOODBYE (frame type 9) as
 * the end of the tunnel with a reason, instead of as a reserved frame type.
 */
export type Capability = 'goodbye';

/** What this implementation supports, sent in every HELLO. */
export const LOCAL_CAPABILITIES: readonly Capability[] = ['goodbye'];

/**
 * What a HELLO without `capabilities` stands for: version 1 as it first
 * shipped, before any feature was added to it.
 */
export const VERSION_1_BASELINE: readonly Capability[] = [];

export type HelloRole = HelloBody['role'];

export interface HelloSettings {
  role: HelloRole;
  id: string;
  heartbeatMs: number;
  streamWindow: number;
  maxFramePayload: number;
  instance: string;
  /** Agent only: which of the processes sharing its certificate this is. */
  worker?: number;
}

export interface HelloFrame {
  type: typeof FrameType.HELLO;
  streamId: 0;
  body: HelloBody;
}

export type HelloCheck =
  | { accepted: true; capabilities: ReadonlySet<Capability> }
  | {
      accepted: false;
      code: 'unsupported-version' | 'wrong-role';
      reason: string;
      /** The peer listed `goodbye`, so it reads the refusal's reason instead of just losing the connection. */
      peerTakesGoodbye: boolean;
    };

export function buildHello(settings: HelloSettings): HelloFrame {
  const { worker, ...rest } = settings;
  return {
    type: FrameType.HELLO,
    streamId: 0,
    body: { version: PROTOCOL_VERSION, ...rest, ...(worker !== undefined ? { worker } : {}), capabilities: [...LOCAL_CAPABILITIES] },
  };
}

/** The features both sides support; names this side does not know are dropped, not refused. */
export function negotiateCapabilities(offered: readonly string[] | undefined, local: readonly Capability[] = LOCAL_CAPABILITIES): ReadonlySet<Capability> {
  const theirs = new Set<string>(offered ?? VERSION_1_BASELINE);
  return new Set(local.filter((capability) => theirs.has(capability)));
}

/**
 * A HELLO of our major version from the opposite role is accepted whatever
 * else it lists; one of another major version is refused, since nothing but
 * HELLO and GOODBYE is promised to mean the same across major versions.
 */
export function checkHello(peer: HelloBody, expectedRole: HelloRole): HelloCheck {
  const peerTakesGoodbye = (peer.capabilities ?? VERSION_1_BASELINE).includes('goodbye');
  if (peer.version !== PROTOCOL_VERSION) {
    return {
      accepted: false,
      code: 'unsupported-version',
      reason: `peer speaks protocol version ${peer.version}; this ${oppositeRole(expectedRole)} speaks version ${PROTOCOL_VERSION} only`,
      peerTakesGoodbye,
    };
  }
  if (peer.role !== expectedRole) {
    return { accepted: false, code: 'wrong-role', reason: `peer says it is ${peer.role}, expected ${expectedRole}`, peerTakesGoodbye };
  }
  return { accepted: true, capabilities: negotiateCapabilities(peer.capabilities) };
}

/** Takes the settings of the peer's accepted HELLO into the tunnel. */
export function applyHello(tunnel: Tunnel, peer: HelloBody, capabilities: ReadonlySet<Capability>): void {
  tunnel.peerMaxFramePayload = peer.maxFramePayload;
  tunnel.peerId = peer.id;
  tunnel.capabilities = capabilities;
}

/**
 * Ends a tunnel whose peer's HELLO was refused. Another major version hears
 * why in a GOODBYE when it takes one; a wrong role is a protocol violation
 * and the connection just closes.
 */
export function refuseHello(tunnel: Tunnel, refusal: Extract<HelloCheck, { accepted: false }>): void {
  if (refusal.code === 'unsupported-version' && refusal.peerTakesGoodbye) {
    void tunnel.goodbye('unsupported-version', refusal.reason);
  } else {
    tunnel.close('protocol-error', `protocol violation: ${refusal.reason}`);
  }
}

function oppositeRole(role: HelloRole): HelloRole {
  return role === 'agent' ? 'hub' : 'agent';
}
