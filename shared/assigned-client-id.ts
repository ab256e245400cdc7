import { randomBytes } from 'node:crypto';

/**
 * Client IDs the agent assigns to devices that sent an empty one (MQTT 3.1.1
 * §3.1.3.1): `emx-<agentId>-<16 lowercase hex digits>`. The random part has a
 * fixed length, so an ID of this form names exactly one agent: `emx-site-2-…`
 * of agent `site-2` can never pass as an assigned ID of agent `site`.
 */
const RANDOM_BYTES = 8;
const RANDOM_HEX = /^[0-9a-f]{16}$/;

export function assignedIdPrefix(agentId: string): string {
  return `emx-${agentId}-`;
}

export function assignClientId(prefix: string): string {
  return `${prefix}${randomBytes(RANDOM_BYTES).toString('hex')}`;
}

/** True when `clientId` has exactly the form of an ID agent `agentId` assigns. */
export function isAssignedBy(agentId: string, clientId: string): boolean {
  const prefix = assignedIdPrefix(agentId);
  return clientId.length === prefix.length + RANDOM_BYTES * 2 && clientId.startsWith(prefix) && RANDOM_HEX.test(clientId.slice(prefix.length));
}
