import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { closestKey, siblingKeys } from './config-reference.js';
import { EdgemuxError } from './errors.js';

type PlainObject = Record<string, unknown>;

function isPlainObject(value: unknown): value is PlainObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Later layers win; nested objects merge key by key, everything else replaces. */
export function mergeLayers(...layers: PlainObject[]): PlainObject {
  const out: PlainObject = {};
  for (const layer of layers) {
    for (const [key, value] of Object.entries(layer)) {
      if (value === undefined) continue;
      const existing = out[key];
      out[key] = isPlainObject(existing) && isPlainObject(value) ? mergeLayers(existing, value) : value;
    }
  }
  return out;
}

export function readConfigFile(path: string): PlainObject {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new EdgemuxError('E_CONFIG', `cannot read config file ${path}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = parseYaml(text);
  } catch (err) {
    throw new EdgemuxError('E_CONFIG', `config file ${path} is not valid YAML: ${(err as Error).message}`);
  }
  if (data === null || data === undefined) return {};
  if (!isPlainObject(data)) throw new EdgemuxError('E_CONFIG', `config file ${path} must hold a mapping of keys`);
  return resolveFilePaths(data, dirname(resolve(path))) as PlainObject;
}

/**
 * Keys whose values name files or directories, in either component's schema.
 * A relative one in a configuration file means relative to that file, so a
 * file moves with the certificates beside it and a service may start in any
 * working directory; flags stay relative to the working directory, as a
 * shell user expects.
 */
const PATH_KEYS = new Set(['ca', 'cert', 'key', 'statePath', 'devPki', 'pkiDir', 'passwordFile', 'tokenFile', 'dir', 'logFile']);

function resolveFilePaths(node: unknown, base: string): unknown {
  if (Array.isArray(node)) return node.map((item) => resolveFilePaths(item, base));
  if (!isPlainObject(node)) return node;
  const out: PlainObject = {};
  for (const [key, value] of Object.entries(node)) {
    out[key] = PATH_KEYS.has(key) && typeof value === 'string' && value !== '' && !isAbsolute(value) ? resolve(base, value) : resolveFilePaths(value, base);
  }
  return out;
}

/**
 * Validates merged config layers against a schema. Every problem is reported
 * with its key path, the offending value and what was expected, so start-up
 * stops with a message that says what to fix.
 */
export function validateConfig<S extends z.ZodType>(schema: S, layers: PlainObject[], component: string): z.output<S> {
  const merged = mergeLayers(...layers);
  const result = schema.safeParse(merged);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') return unknownKeysProblem(schema, issue.path, issue.keys);
    const key = issue.path.join('.') || '(root)';
    const value = issue.path.reduce<unknown>(
      (node, part) => (typeof node === 'object' && node !== null ? (node as Record<PropertyKey, unknown>)[part as PropertyKey] : undefined),
      merged,
    );
    const shown = value === undefined ? 'missing' : Number.isNaN(value) ? 'not a number' : withoutUrlPasswords(JSON.stringify(value));
    return `  ${key}: ${issue.message} (got ${shown})`;
  });
  throw new EdgemuxError('E_CONFIG', `invalid ${component} configuration:\n${problems.join('\n')}`);
}

/** A password in a URL (a proxy's) never reaches an error message or a log. */
function withoutUrlPasswords(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/[^/:@"\s]*):[^/@"\s]*@/gi, '$1:***@');
}

/** Names each unknown key with its place and, when one is close, the key it was probably meant to be. */
function unknownKeysProblem(schema: z.ZodType, path: readonly PropertyKey[], keys: readonly string[]): string {
  const known = siblingKeys(schema, path);
  return keys
    .map((unknown) => {
      const key = [...path, unknown].map(String).join('.');
      const hint = closestKey(unknown, known);
      return `  ${key}: unknown key${hint === null ? '' : `; did you mean ${JSON.stringify(hint)}?`} (known here: ${known.join(', ')})`;
    })
    .join('\n');
}

/** "host:port" → parts; throws E_CONFIG naming the key. */
export function parseHostPort(value: string, key: string): { host: string; port: number } {
  const match = /^(.*):(\d+)$/.exec(value.trim());
  const port = match ? Number(match[2]) : NaN;
  if (!match || match[1].length === 0 || port < 1 || port > 65535) {
    throw new EdgemuxError('E_CONFIG', `${key}: expected host:port with a port in 1..65535 (got ${JSON.stringify(value)})`);
  }
  return { host: match[1].replace(/^\[(.*)\]$/, '$1'), port };
}
