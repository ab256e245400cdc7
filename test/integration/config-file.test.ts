import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hubConfigSchema } from '../../cloud-hub/config.js';
import { agentConfigSchema } from '../../edge-agent/config.js';
import { readConfigFile, validateConfig } from '../../shared/config-loader.js';
import { type ConfigKey, configKeys } from '../../shared/config-reference.js';
import { removePki, testPki } from '../support/chain.js';

const repo = resolve(import.meta.dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'edgemux-config-file-'));

function configError(schema: Parameters<typeof validateConfig>[0], layer: Record<string, unknown>): string {
  try {
    validateConfig(schema, [layer], 'test');
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('configuration was accepted');
}

/** The rows of one component's table in docs/configuration.md. */
function documentedKeys(section: string): ConfigKey[] {
  const doc = readFileSync(join(repo, 'docs/configuration.md'), 'utf8');
  const body = doc.split(/^## /m).find((part) => part.startsWith(section));
  if (body === undefined) throw new Error(`docs/configuration.md has no section ${section}`);
  const rows: ConfigKey[] = [];
  for (const line of body.split('\n')) {
    const match = /^\| `([^`]+)` \| (.*?) \| (`(.*)`)? \| .+ \|$/.exec(line);
    if (match) rows.push({ key: match[1], type: match[2], ...(match[4] !== undefined ? { default: match[4] } : {}) });
  }
  return rows;
}

describe('configuration files', () => {
  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
    await removePki();
  });

  it('name an unknown key with the key it was probably meant to be', () => {
    const hub = configError(hubConfigSchema, { devPki: dir, heartbeatMS: 100, routes: [{ match: { clientID: 'a*' }, backend: 'embedded' }] });
    expect(hub).toMatch(/heartbeatMS: unknown key; did you mean "heartbeatMs"\?/);
    expect(hub).toMatch(/routes\.0\.match\.clientID: unknown key; did you mean "clientId"\? \(known here: clientId, username, agentId\)/);
    const agent = configError(agentConfigSchema, { devPki: dir, tunels: 2 });
    expect(agent).toMatch(/tunels: unknown key; did you mean "tunnels"\?/);
    expect(configError(agentConfigSchema, { devPki: dir, zzzzzz: 1 })).toMatch(/zzzzzz: unknown key \(known here: /);
  });

  it('resolve relative file paths against their own directory, so a service may start anywhere', async () => {
    const { pki } = await testPki();
    const etc = join(dir, 'etc');
    mkdirSync(join(etc, 'tls'), { recursive: true });
    writeFileSync(join(etc, 'tls', 'ca.pem'), pki.ca);
    writeFileSync(join(etc, 'tls', 'hub.pem'), pki.hub.cert);
    writeFileSync(join(etc, 'tls', 'hub-key.pem'), pki.hub.key, { mode: 0o600 });
    const file = join(etc, 'hub.yaml');
    writeFileSync(file, ['tls: { ca: tls/ca.pem, cert: tls/hub.pem, key: /abs/elsewhere.pem }', 'statePath: state/hub.db', 'tunnel: { host: 127.0.0.1, port: 0 }', 'app: { port: 0 }', ''].join('\n'));
    expect(readConfigFile(file)).toMatchObject({
      tls: { ca: join(etc, 'tls/ca.pem'), cert: join(etc, 'tls/hub.pem'), key: '/abs/elsewhere.pem' },
      statePath: join(etc, 'state/hub.db'),
      tunnel: { host: '127.0.0.1' },
    });

    writeFileSync(file, ['tls: { ca: tls/ca.pem, cert: tls/hub.pem, key: tls/hub-key.pem }', 'tunnel: { host: 127.0.0.1, port: 0 }', 'app: { port: 0 }', ''].join('\n'));
    const hub = spawn(process.execPath, [join(repo, 'dist/cloud-hub/cli.js'), '--config', file], { cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let output = '';
      const listening = await new Promise<boolean>((resolveStarted) => {
        hub.stdout!.on('data', (chunk: Buffer) => {
          output += chunk.toString();
          if (output.includes('hub listening')) resolveStarted(true);
        });
        hub.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
        hub.once('exit', () => resolveStarted(false));
      });
      expect(listening, output).toBe(true);
    } finally {
      hub.kill('SIGKILL');
    }
  });

  it('are documented key by key in docs/configuration.md, with the types and defaults the schemas have', () => {
    expect(documentedKeys('cloud-hub')).toEqual(configKeys(hubConfigSchema));
    expect(documentedKeys('edge-agent')).toEqual(configKeys(agentConfigSchema));
  });
});
