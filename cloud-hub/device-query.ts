/** One page of devices: which to show, asked of the hub, never a full list, so 100 000 devices cost one pass. */
export interface DeviceQuery {
  /** Case-insensitive part of the client ID. */
  search?: string;
  /** Only this agent's devices. */
  agentId?: string;
  /** Cursor: client IDs after this one (the `next` of the previous page). */
  after?: string;
  limit: number;
}

export interface DevicePage<T> {
  /** Devices matching `search` and `agentId`, on every page. */
  total: number;
  items: T[];
  /** The cursor of the next page; null on the last one. */
  next: string | null;
}

export const MAX_PAGE_SIZE = 500;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function byKey(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Selects a page in client ID order in one pass over `items`, keeping only
 * the `limit` + 1 smallest matches past the cursor (a sorted array with
 * binary insertion), so a page of 50 out of 100 000 neither sorts nor copies
 * the whole set. A cursor instead of an offset keeps every page as cheap as
 * the first and stable while devices come and go.
 */
export function pageDevices<T>(items: Iterable<T>, clientIdOf: (item: T) => string, agentIdOf: (item: T) => string, query: DeviceQuery): DevicePage<T> {
  const pattern = query.search ? new RegExp(escapeRegExp(query.search), 'i') : null;
  const keep = query.limit + 1;
  const best: { key: string; item: T }[] = [];
  let total = 0;
  for (const item of items) {
    if (query.agentId !== undefined && agentIdOf(item) !== query.agentId) continue;
    const key = clientIdOf(item);
    if (pattern !== null && !pattern.test(key)) continue;
    total++;
    if (query.after !== undefined && key <= query.after) continue;
    if (best.length === keep && byKey(key, best[keep - 1].key) >= 0) continue;
    let low = 0;
    let high = best.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (byKey(best[middle].key, key) < 0) low = middle + 1;
      else high = middle;
    }
    best.splice(low, 0, { key, item });
    if (best.length > keep) best.pop();
  }
  const more = best.length > query.limit;
  const page = more ? best.slice(0, query.limit) : best;
  return { total, items: page.map((entry) => entry.item), next: more ? page[page.length - 1].key : null };
}
