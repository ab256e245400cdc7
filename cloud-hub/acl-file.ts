import { readFileSync } from 'node:fs';
import { EdgemuxError } from '../shared/errors.js';

/** What a line grants; `deny` refuses what broader lines would grant, whatever their order. */
export type AclAccess = 'read' | 'write' | 'readwrite' | 'deny';

/** A `topic` or `pattern` line, its filter split into levels. */
interface AclRule {
  access: AclAccess;
  levels: readonly string[];
  /** A `pattern` line: levels `%c` and `%u` stand for the client's ID and user name. */
  pattern: boolean;
}

interface RuleSet {
  denies: AclRule[];
  grants: AclRule[];
}

/** Who asks: the client ID and user name of its CONNECT (undefined when it sent none). */
export interface AclClient {
  id: string;
  username: string | undefined;
}

const ACCESS_WORDS = new Set<string>(['read', 'write', 'readwrite', 'deny']);
const SUBSTITUTIONS = new Set(['%c', '%u']);

/**
 * Topic access in Mosquitto's `acl_file` format (mosquitto.conf(5), acl_file):
 * `topic` lines before any `user` line apply to clients without a user name,
 * later ones to the user named above them; `pattern` lines apply to every
 * client, with `%c` and `%u` substituted. Nothing is allowed unless a line
 * grants it, and a `deny` line that matches wins over any grant.
 */
export class AclFile {
  private constructor(
    private readonly anonymous: RuleSet,
    private readonly users: ReadonlyMap<string, RuleSet>,
    private readonly patterns: RuleSet,
    /** Lines that grant or deny, for the start-up log. */
    readonly ruleCount: number,
  ) {}

  /** Reads and checks every line; a problem stops start-up (or a reload) naming `key`, the file and the line. */
  static read(path: string, key: string): AclFile {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new EdgemuxError('E_CONFIG', `${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    return AclFile.parse(text, (line, problem) => `${key}: ${path} line ${line}: ${problem}`);
  }

  static parse(text: string, problemAt: (line: number, problem: string) => string = (line, problem) => `line ${line}: ${problem}`): AclFile {
    const anonymous: RuleSet = { denies: [], grants: [] };
    const users = new Map<string, RuleSet>();
    const patterns: RuleSet = { denies: [], grants: [] };
    let current = anonymous;
    let ruleCount = 0;
    text.split('\n').forEach((raw, index) => {
      const fail = (problem: string): never => {
        throw new EdgemuxError('E_CONFIG', problemAt(index + 1, problem));
      };
      // Mosquitto skips leading blanks and treats a line starting with # as a comment.
      const line = raw.replace(/\r$/, '').replace(/^[ \t]+/, '');
      if (line === '' || line.startsWith('#')) return;
      const space = line.search(/[ \t]/);
      const keyword = space === -1 ? line : line.slice(0, space);
      const rest = space === -1 ? '' : line.slice(space + 1).trim();
      switch (keyword) {
        case 'user': {
          if (rest === '') fail('expected user <name>');
          let set = users.get(rest);
          if (set === undefined) {
            set = { denies: [], grants: [] };
            users.set(rest, set);
          }
          current = set;
          return;
        }
        case 'topic':
        case 'pattern': {
          const rule = parseRule(rest, keyword === 'pattern', fail);
          (keyword === 'pattern' ? patterns : current)[rule.access === 'deny' ? 'denies' : 'grants'].push(rule);
          ruleCount++;
          return;
        }
        default:
          fail(`unknown keyword ${JSON.stringify(keyword)}: expected user, topic or pattern`);
      }
    });
    return new AclFile(anonymous, users, patterns, ruleCount);
  }

  /** May the client publish to `topic` (a topic name, no wildcards)? */
  mayWrite(client: AclClient, topic: string): boolean {
    return this.decide(client, topic, 'write');
  }

  /** May the client receive a message published to `topic`? */
  mayRead(client: AclClient, topic: string): boolean {
    return this.decide(client, topic, 'read');
  }

  /**
   * May the client subscribe to `filter`? Only if a read grant covers every
   * topic the filter matches and no deny covers them all. A deny covering part
   * of a granted filter (`#` with `deny secret/#`) leaves the SUBSCRIBE granted
   * and is applied to each message at delivery (mayRead), as Mosquitto does.
   */
  maySubscribe(client: AclClient, filter: string): boolean {
    return this.decide(client, filter, 'read');
  }

  private decide(client: AclClient, topicOrFilter: string, wanted: 'read' | 'write'): boolean {
    const own = client.username === undefined ? this.anonymous : this.users.get(client.username);
    const levels = topicOrFilter.split('/');
    if (own !== undefined && anyCovers(own.denies, levels, client)) return false;
    if (anyCovers(this.patterns.denies, levels, client)) return false;
    const granted = (rules: AclRule[]): boolean => anyCovers(rules, levels, client, wanted);
    return (own !== undefined && granted(own.grants)) || granted(this.patterns.grants);
  }
}

function anyCovers(rules: AclRule[], levels: string[], client: AclClient, wanted?: 'read' | 'write'): boolean {
  for (const rule of rules) {
    if (wanted !== undefined && rule.access !== 'readwrite' && rule.access !== wanted) continue;
    if (covers(rule, levels, client)) return true;
  }
  return false;
}

/**
 * Whether every topic `levels` matches (a topic name, or a filter with `+`
 * and `#`) is matched by the rule's filter. Wildcards at the first level do
 * not match topics starting with `$` (MQTT 3.1.1 §4.7.2), so `readwrite #`
 * does not open `$SYS`.
 */
function covers(rule: AclRule, levels: string[], client: AclClient): boolean {
  const ruleLevels = rule.levels;
  if (levels[0]!.startsWith('$') && (ruleLevels[0] === '#' || ruleLevels[0] === '+')) return false;
  for (let i = 0; i < ruleLevels.length; i++) {
    let want = ruleLevels[i]!;
    if (want === '#') return true;
    if (i >= levels.length) return false;
    const have = levels[i]!;
    if (want === '+') {
      if (have === '#') return false;
      continue;
    }
    if (rule.pattern && SUBSTITUTIONS.has(want)) {
      const value = want === '%c' ? client.id : client.username;
      // An ID or user name holding a wildcard or a `/` would, substituted,
      // reach topics beyond its own level: the line does not apply to it.
      if (value === undefined || value === '' || /[+#/]/.test(value)) return false;
      want = value;
    }
    if (have !== want) return false;
  }
  // A trailing `#` (which also matches its parent, `a/#` matching `a`, MQTT 3.1.1 §4.7.1.2) returned above.
  return levels.length === ruleLevels.length;
}

function parseRule(rest: string, pattern: boolean, fail: (problem: string) => never): AclRule {
  // The access word is optional, readwrite when absent, as in Mosquitto; a topic with a space needs it.
  const space = rest.search(/[ \t]/);
  const first = space === -1 ? rest : rest.slice(0, space);
  const hasAccess = space !== -1 && ACCESS_WORDS.has(first);
  const access = (hasAccess ? first : 'readwrite') as AclAccess;
  const topic = hasAccess ? rest.slice(space + 1).trim() : rest;
  if (topic === '') fail(`expected ${pattern ? 'pattern' : 'topic'} [read|write|readwrite|deny] <topic>`);
  const levels = topic.split('/');
  levels.forEach((level, i) => {
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) fail(`# must be a whole level and the last one (got ${JSON.stringify(topic)})`);
    if (level.includes('+') && level !== '+') fail(`+ must be a whole level (got ${JSON.stringify(topic)})`);
    if (pattern && /%[cu]/.test(level) && !SUBSTITUTIONS.has(level)) {
      fail(`%c and %u must be a whole level, as in devices/%c/commands (got ${JSON.stringify(topic)})`);
    }
  });
  if (topic.includes('\u0000')) fail('a topic may not contain U+0000');
  return { access, levels, pattern };
}
