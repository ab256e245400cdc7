import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDevPki } from '../../shared/pki.js';
import { CliProcess } from '../support/cli-process.js';
import { freePort } from '../support/mosquitto.js';

const TOKEN = 'cli-admin-token-5f0c1d9e8b7a6f5e';
const ROTATED = 'cli-admin-token-rotated-0a1b2c3d4e';

describe('cloud-hub admin API', () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgemux-admin-cli-'));
  const file = (name: string): string => join(dir, name);
  let hub: CliProcess;
  let base: string;

  function writeConfig(extra: string[] = []): void {
    writeFileSync(file('hub.yaml'), [`devPki: ${file('pki')}`, `admin: { port: ${adminPort}, tokenFile: ${file('token')} }`, ...extra, ''].join('\n'));
  }
  let adminPort = 0;

  const post = (path: string, token: string): Promise<Response> => fetch(`${base}${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });

  beforeAll(async () => {
    await ensureDevPki(file('pki'));
    adminPort = await freePort();
    writeFileSync(file('token'), `${TOKEN}\n`, { mode: 0o600 });
    writeConfig();
    hub = new CliProcess('dist/cloud-hub/cli.js', ['--config', file('hub.yaml'), '--tunnel-host', '127.0.0.1', '--tunnel-port', '0', '--app-host', '127.0.0.1', '--app-port', '0']);
    const listening = await hub.waitForLog('admin API listening');
    expect(listening.admin).toMatchObject({ address: '127.0.0.1', port: adminPort });
    base = `http://127.0.0.1:${adminPort}`;
  });

  afterAll(async () => {
    await hub?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reloads the configuration like SIGHUP, and says what changed and what needs a restart', async () => {
    writeConfig(['logLevel: debug', 'hubId: renamed']);
    const response = await post('/api/v1/reload', TOKEN);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ changed: ['logLevel'], needsRestart: ['hubId'] });
    expect((await hub.waitForLog('configuration reloaded')).changed).toEqual(['logLevel']);
  });

  it('refuses a bad file with 422 naming the key, and keeps running', async () => {
    writeConfig(['maxQueuedBytes: 5']);
    const response = await post('/api/v1/reload', TOKEN);
    expect(response.status).toBe(422);
    expect(((await response.json()) as { error: string }).error).toMatch(/maxQueuedBytes/);
    expect((await hub.waitForLog('configuration reload refused; the running configuration stays')).reason).toMatch(/maxQueuedBytes/);
    expect(hub.running).toBe(true);
  });

  it('takes a rotated token file on reload, and never logs a token', async () => {
    writeConfig();
    writeFileSync(file('token'), ROTATED);
    expect((await post('/api/v1/reload', TOKEN)).status).toBe(200);
    expect((await fetch(`${base}/api/v1/agents`, { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(401);
    expect((await fetch(`${base}/api/v1/agents`, { headers: { authorization: `Bearer ${ROTATED}` } })).status).toBe(200);
    const everything = JSON.stringify(hub.lines);
    expect(everything).not.toContain(TOKEN);
    expect(everything).not.toContain(ROTATED);
  });
});
