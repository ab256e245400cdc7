import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const repo = resolve(import.meta.dirname, '../..');

/** The installed program each unit runs, mapped to the build that has the same command line. */
const programs: Record<string, string> = {
  '/opt/edgemux/dist/cloud-hub/cli.js': 'dist/cloud-hub/cli.js',
  '/opt/edgemux/edge-agent.mjs': 'dist/edge-agent/cli.js',
};

function directives(unit: string): Map<string, string> {
  const found = new Map<string, string>();
  for (const line of readFileSync(join(repo, 'docs/systemd', unit), 'utf8').split('\n')) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (match) found.set(match[1], match[2]);
  }
  return found;
}

describe.each(['edgemux-hub.service', 'edgemux-agent.service'])('docs/systemd/%s', (unit) => {
  const unitDirectives = directives(unit);

  it('starts its program with flags the CLI accepts', () => {
    const [, program, ...args] = (unitDirectives.get('ExecStart') ?? '').split(' ');
    expect(programs[program], `known program ${program}`).toBeDefined();
    const result = spawnSync(process.execPath, [join(repo, programs[program]), ...args, '--help'], { encoding: 'utf8', timeout: 15_000 });
    expect(result.status, result.stderr).toBe(0);
  });

  it('runs unprivileged and hardened, reloads with SIGHUP and waits for the graceful stop', () => {
    expect(unitDirectives.get('User')).toBe('edgemux');
    expect(unitDirectives.get('NoNewPrivileges')).toBe('yes');
    expect(unitDirectives.get('ProtectSystem')).toBe('strict');
    expect(unitDirectives.get('CapabilityBoundingSet')).toBe('');
    expect(unitDirectives.get('ExecReload')).toContain('-HUP');
    expect(Number(unitDirectives.get('TimeoutStopSec'))).toBeGreaterThanOrEqual(10);
    expect(unitDirectives.get('Restart')).toMatch(/^(always|on-failure)$/);
  });
});
