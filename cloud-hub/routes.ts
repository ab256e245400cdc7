import { isAssignedBy } from '../shared/assigned-client-id.js';
import type { ExternalBrokerGroup } from './external-broker.js';

/** Who a device is, as far as routing can tell from its OPEN. */
export interface DeviceIdentity {
  clientId: string;
  username?: string;
  agentId: string;
}

/** Glob patterns: `*` matches any run of characters, `?` one. An absent field matches anything. */
export interface RouteMatch {
  clientId?: string;
  username?: string;
  agentId?: string;
}

export type RouteBackend = { kind: 'embedded' } | { kind: 'external'; group: ExternalBrokerGroup };

export interface Route {
  name: string;
  match: RouteMatch;
  backend: RouteBackend;
}

const EMBEDDED: RouteBackend = { kind: 'embedded' };

export function globToRegExp(glob: string): RegExp {
  const source = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${source}$`, 's');
}

interface CompiledRoute {
  route: Route;
  tests: { field: keyof DeviceIdentity; pattern: RegExp }[];
}

/** First matching route wins; a device no route matches goes to the embedded broker. */
export class Router {
  private readonly compiled: CompiledRoute[];

  constructor(readonly routes: Route[]) {
    this.compiled = routes.map((route) => ({
      route,
      tests: (['clientId', 'username', 'agentId'] as const)
        .filter((field) => route.match[field] !== undefined)
        .map((field) => ({ field, pattern: globToRegExp(route.match[field]!) })),
    }));
  }

  pick(identity: DeviceIdentity): Route | null {
    for (const { route, tests } of this.compiled) {
      if (tests.every(({ field, pattern }) => pattern.test(identity[field] ?? ''))) return route;
    }
    return null;
  }

  backendFor(identity: DeviceIdentity): RouteBackend {
    return this.pick(identity)?.backend ?? EMBEDDED;
  }

  close(): void {
    for (const route of this.routes) if (route.backend.kind === 'external') route.backend.group.close();
  }
}

/** Which client IDs an agent may speak for: agents matching `agentId` may use client IDs matching any of `clientIds`. */
export interface NamespaceRule {
  agentId: string;
  clientIds: string[];
}

/** Separates an agent's ID from a device's name in the default namespace: `<agentId>:<name>`. */
export const DEFAULT_NAMESPACE_SEPARATOR = ':';

/** The rule that lets every agent speak for every client ID; configured only on purpose. */
export const OPEN_NAMESPACES: NamespaceRule[] = [{ agentId: '*', clientIds: ['*'] }];

/**
 * An agent can only speak for client IDs in its own namespace. Without rules
 * each agent's namespace is `<agentId>:*`: without a policy no agent may take
 * over another's devices. ':' rather than '-' so that one agent's namespace
 * never contains another's (`site` and `site-2`), and rather than '/' so that
 * an ID used in a topic adds no topic level; agent IDs cannot contain it (the
 * agent's own configuration refuses it). With rules, an ID is allowed when a
 * rule for the agent allows it. IDs of the exact form the agent assigns
 * (shared/assigned-client-id.ts) are always its own.
 */
export class Namespaces {
  private readonly rules: { agent: RegExp; clientIds: RegExp[] }[];
  /** No rules were configured: the default per-agent namespace applies. */
  readonly byDefault: boolean;

  constructor(readonly configured: NamespaceRule[]) {
    this.rules = configured.map((rule) => ({ agent: globToRegExp(rule.agentId), clientIds: rule.clientIds.map(globToRegExp) }));
    this.byDefault = configured.length === 0;
  }

  allows(agentId: string, clientId: string): boolean {
    if (isAssignedBy(agentId, clientId)) return true;
    if (this.byDefault) return clientId.length > agentId.length + 1 && clientId.startsWith(agentId + DEFAULT_NAMESPACE_SEPARATOR);
    return this.rules.some((rule) => rule.agent.test(agentId) && rule.clientIds.some((pattern) => pattern.test(clientId)));
  }

  /** The policy in effect, for the log line that states it. */
  describe(): string {
    if (this.byDefault) {
      return `no namespaces configured: each agent may use only client IDs "<agentId>${DEFAULT_NAMESPACE_SEPARATOR}*" and those it assigns`;
    }
    const open = this.configured.some((rule) => rule.agentId === '*' && rule.clientIds.includes('*'));
    return open ? 'namespaces allow every agent every client ID' : `${this.configured.length} namespace rules`;
  }
}
