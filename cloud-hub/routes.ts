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

/**
 * An agent can only speak for client IDs in its own namespace. Without rules
 * every agent may use any client ID; with rules, an ID is allowed when a rule
 * for the agent allows it, and IDs of the exact form the agent assigns
 * (shared/assigned-client-id.ts) are always its own.
 */
export class Namespaces {
  private readonly rules: { agent: RegExp; clientIds: RegExp[] }[];

  constructor(rules: NamespaceRule[]) {
    this.rules = rules.map((rule) => ({ agent: globToRegExp(rule.agentId), clientIds: rule.clientIds.map(globToRegExp) }));
  }

  allows(agentId: string, clientId: string): boolean {
    if (this.rules.length === 0 || isAssignedBy(agentId, clientId)) return true;
    return this.rules.some((rule) => rule.agent.test(agentId) && rule.clientIds.some((pattern) => pattern.test(clientId)));
  }
}
