import { z } from 'zod';

/** One settable key of a configuration schema, as docs/configuration.md lists it. */
export interface ConfigKey {
  /** Dotted path; `[]` marks the items of a list, e.g. `routes[].backend.brokers[].url`. */
  key: string;
  type: string;
  /** JSON of the default, when the schema has one. */
  default?: string;
}

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  enum?: unknown[];
  const?: unknown;
  default?: unknown;
}

function typeOf(node: JsonSchema): string {
  if (node.enum !== undefined) return node.enum.map((value) => JSON.stringify(value)).join(' \\| ');
  if (node.const !== undefined) return JSON.stringify(node.const);
  const variants = node.anyOf ?? node.oneOf;
  if (variants !== undefined) return [...new Set(variants.map(typeOf))].join(' \\| ');
  if (node.type === 'array') return `list of ${node.items === undefined ? 'values' : typeOf(node.items)}`;
  if (Array.isArray(node.type)) return node.type.join(' \\| ');
  return node.type ?? 'any';
}

function walk(node: JsonSchema, prefix: string, out: ConfigKey[]): void {
  const variants = node.anyOf ?? node.oneOf;
  if (node.properties !== undefined) {
    for (const [name, child] of Object.entries(node.properties)) {
      const key = prefix === '' ? name : `${prefix}.${name}`;
      const isObject = child.properties !== undefined;
      if (!isObject) out.push({ key, type: typeOf(child), ...(child.default !== undefined ? { default: JSON.stringify(child.default) } : {}) });
      walk(child, key, out);
    }
  } else if (node.type === 'array' && node.items !== undefined) {
    walk(node.items, `${prefix}[]`, out);
  } else if (variants !== undefined) {
    // A union of objects (a route's backend, a listener) lists the keys of every variant once.
    const byKey = new Map<string, ConfigKey>(out.map((entry) => [entry.key, entry]));
    const found: ConfigKey[] = [];
    for (const variant of variants) walk(variant, prefix, found);
    for (const entry of found) {
      const known = byKey.get(entry.key);
      if (known === undefined) {
        byKey.set(entry.key, entry);
        out.push(entry);
      } else if (!known.type.split(' \\| ').includes(entry.type)) {
        // The same key in several variants (a listener's `type`) takes any of their values.
        known.type = `${known.type} \\| ${entry.type}`;
      }
    }
  }
}

/** Every key a configuration file may set, with its type and default, in schema order. */
export function configKeys(schema: z.ZodType): ConfigKey[] {
  const json = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  const out: ConfigKey[] = [];
  walk(json, '', out);
  return out;
}

/** The keys one level below `path` (numeric parts are list items), for "did you mean" hints. */
export function siblingKeys(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  const prefix = path.map((part) => (typeof part === 'number' ? '[]' : String(part))).join('.').replaceAll('.[]', '[]');
  const depth = prefix === '' ? '' : `${prefix}.`;
  const names = new Set<string>();
  for (const { key } of configKeys(schema)) {
    if (!key.startsWith(depth)) continue;
    const rest = key.slice(depth.length);
    const name = /^[^.[\]]+/.exec(rest)?.[0];
    if (name !== undefined) names.add(name);
  }
  return [...names];
}

/** Levenshtein distance, small strings only. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1].toLowerCase() === b[j - 1].toLowerCase() ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length];
}

/** The known key a mistyped one most likely meant, if any is close. */
export function closestKey(unknown: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestDistance = Math.max(2, Math.floor(unknown.length / 3)) + 1;
  for (const candidate of known) {
    const d = distance(unknown, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}
