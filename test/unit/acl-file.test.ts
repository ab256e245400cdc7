import { describe, expect, it } from 'vitest';
import { AclFile } from '../../cloud-hub/acl-file.js';
import { EdgemuxError } from '../../shared/errors.js';

const device = { id: 'dev-a', username: 'meter' };
const anonymous = { id: 'anon-1', username: undefined };

describe('ACL file (Mosquitto acl_file format)', () => {
  const acl = AclFile.parse(
    [
      '# anonymous clients',
      'topic read public/#',
      '',
      '   # an indented comment',
      'pattern write devices/%c/telemetry',
      'pattern read devices/%c/commands',
      'pattern readwrite users/%u/#',
      'user meter',
      'topic write meters/+/reading',
      'topic site/status',
      'user ops',
      'topic readwrite #',
      'topic deny secret/#',
      'topic deny test/nosubscribe',
    ].join('\n'),
  );

  it('counts the lines that grant or deny', () => {
    expect(acl.ruleCount).toBe(9);
  });

  it('substitutes %c and %u in patterns, for every client', () => {
    expect(acl.mayWrite(device, 'devices/dev-a/telemetry')).toBe(true);
    expect(acl.mayWrite(device, 'devices/dev-b/telemetry')).toBe(false);
    expect(acl.mayRead(device, 'devices/dev-a/telemetry')).toBe(false);
    expect(acl.maySubscribe(device, 'devices/dev-a/commands')).toBe(true);
    expect(acl.maySubscribe(device, 'devices/dev-b/commands')).toBe(false);
    expect(acl.maySubscribe(device, 'devices/+/commands')).toBe(false);
    expect(acl.mayWrite(device, 'users/meter/x/y')).toBe(true);
    expect(acl.mayWrite(anonymous, 'devices/anon-1/telemetry')).toBe(true);
    // A pattern with %u does not apply to a client without a user name.
    expect(acl.mayWrite(anonymous, 'users/undefined/x')).toBe(false);
  });

  it('does not let a client ID with a wildcard or a slash widen a pattern', () => {
    expect(acl.maySubscribe({ id: '+', username: undefined }, 'devices/+/commands')).toBe(false);
    expect(acl.mayWrite({ id: 'a/b', username: undefined }, 'devices/a/b/telemetry')).toBe(false);
  });

  it('applies topic lines to the user above them, and to anonymous clients before any user line', () => {
    expect(acl.mayWrite(device, 'meters/7/reading')).toBe(true);
    expect(acl.mayRead(device, 'meters/7/reading')).toBe(false);
    expect(acl.mayRead(device, 'site/status')).toBe(true);
    expect(acl.mayWrite(device, 'site/status')).toBe(true);
    expect(acl.mayRead(device, 'public/news')).toBe(false);
    expect(acl.mayRead(anonymous, 'public/news')).toBe(true);
    expect(acl.mayWrite(anonymous, 'public/news')).toBe(false);
    expect(acl.mayRead({ id: 'x', username: 'nobody' }, 'public/news')).toBe(false);
  });

  it('lets deny win over a broader grant, whatever the order', () => {
    const ops = { id: 'app-1', username: 'ops' };
    expect(acl.mayWrite(ops, 'anything/at/all')).toBe(true);
    expect(acl.mayRead(ops, 'secret/plans')).toBe(false);
    expect(acl.maySubscribe(ops, 'secret/#')).toBe(false);
    expect(acl.maySubscribe(ops, 'test/nosubscribe')).toBe(false);
    // Partly denied: granted, and the deny is applied to each message at delivery.
    expect(acl.maySubscribe(ops, '#')).toBe(true);
    // Wildcards at the first level do not reach $ topics.
    expect(acl.mayRead(ops, '$SYS/broker/uptime')).toBe(false);
  });

  it('matches filters only when the grant covers all they match', () => {
    const only = AclFile.parse('topic read a/+/c\ntopic read b/#');
    expect(only.maySubscribe(anonymous, 'a/x/c')).toBe(true);
    expect(only.maySubscribe(anonymous, 'a/+/c')).toBe(true);
    expect(only.maySubscribe(anonymous, 'a/#')).toBe(false);
    expect(only.maySubscribe(anonymous, 'b')).toBe(true);
    expect(only.maySubscribe(anonymous, 'b/+/#')).toBe(true);
    expect(only.maySubscribe(anonymous, '#')).toBe(false);
  });

  it('allows nothing that no line grants', () => {
    const empty = AclFile.parse('# nothing\n\n');
    expect(empty.ruleCount).toBe(0);
    expect(empty.mayWrite(device, 'devices/dev-a/telemetry')).toBe(false);
  });

  it('takes a topic with spaces after an access word, and CRLF line ends', () => {
    const spaced = AclFile.parse('topic read a b/c\r\ntopic deny\r\n');
    expect(spaced.mayRead(anonymous, 'a b/c')).toBe(true);
    // A lone word is the topic, with readwrite access.
    expect(spaced.mayWrite(anonymous, 'deny')).toBe(true);
  });

  it.each([
    ['topic', 'line 2: expected topic'],
    ['toppic read a', 'line 2: unknown keyword "toppic"'],
    ['user', 'line 2: expected user <name>'],
    ['topic read a/#/b', 'line 2: # must be a whole level and the last one'],
    ['topic read a/b+', 'line 2: + must be a whole level'],
    ['pattern read dev-%c/x', 'line 2: %c and %u must be a whole level'],
  ])('names the line of a malformed %j', (line, message) => {
    let thrown: unknown;
    try {
      AclFile.parse(`# first\n${line}\ntopic ok`, (n, problem) => `acl.file: hub.acl line ${n}: ${problem}`);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(EdgemuxError);
    expect((thrown as EdgemuxError).code).toBe('E_CONFIG');
    expect((thrown as Error).message).toContain(`acl.file: hub.acl ${message}`);
  });

  it('names the key and the file it cannot read', () => {
    expect(() => AclFile.read('/nonexistent/acl', 'acl.file')).toThrow('acl.file: cannot read /nonexistent/acl (ENOENT)');
  });
});
