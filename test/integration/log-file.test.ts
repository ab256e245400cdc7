import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually } from '../support/chain.js';
import { CliProcess } from '../support/cli-process.js';
import { freePort } from '../support/mosquitto.js';

const dir = mkdtempSync(join(tmpdir(), 'edgemux-log-file-'));
const file = (name: string): string => join(dir, name);
const processes: CliProcess[] = [];

/** The messages of the pino lines in a log file, in order; none when it does not exist yet. */
function messages(path: string): string[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => (JSON.parse(line) as { msg: string }).msg);
}

async function waitForMessage(path: string, msg: string, count = 1): Promise<void> {
  await eventually(() => messages(path).filter((logged) => logged === msg).length >= count, 15_000, `${count} × "${msg}" in ${path}`);
}

async function startHub(name: string, extra: string[] = []): Promise<CliProcess> {
  // logFile is relative: a configuration file's paths are resolved against its directory.
  writeFileSync(
    file(`${name}.yaml`),
    [`devPki: pki`, `logFile: logs/${name}.log`, `tunnel: { host: 127.0.0.1, port: ${await freePort()} }`, `app: { port: ${await freePort()} }`, ...extra, ''].join('\n'),
  );
  const hub = new CliProcess('dist/cloud-hub/cli.js', ['--config', file(`${name}.yaml`)]);
  processes.push(hub);
  await waitForMessage(file(`logs/${name}.log`), 'hub listening');
  return hub;
}

afterAll(async () => {
  for (const child of processes.reverse()) await child.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('cloud-hub with a log file', () => {
  it('writes its log to the file, not stdout, readable by owner and group only', async () => {
    const hub = await startHub('hub');
    expect(hub.lines).toEqual([]);
    expect(statSync(file('logs/hub.log')).mode & 0o027).toBe(0);
  });

  it('reopens the file on SIGUSR1 after logrotate renamed it, and keeps running', async () => {
    const hub = processes[0];
    renameSync(file('logs/hub.log'), file('logs/hub.log.1'));
    hub.child.kill('SIGUSR1');
    await waitForMessage(file('logs/hub.log'), 'log file reopened');
    hub.child.kill('SIGHUP');
    await waitForMessage(file('logs/hub.log'), 'configuration reloaded');

    expect(hub.running).toBe(true);
    expect(messages(file('logs/hub.log')).slice(0, 2)).toEqual(['log file reopened', 'configuration reloaded']);
    const earlier = messages(file('logs/hub.log.1'));
    expect(earlier).toContain('hub listening');
    expect(earlier).not.toContain('log file reopened');
    expect(statSync(file('logs/hub.log')).mode & 0o027).toBe(0);
    expect(hub.lines).toEqual([]);
  });

  it('rotates by size past logMaxBytes, keeping logKeep old files', async () => {
    const hub = await startHub('sized', ['logMaxBytes: 4096', 'logKeep: 2']);
    // Each reopen writes one line of about 150 bytes: enough for three rotations.
    for (let sent = 0; sent < 100; sent++) {
      hub.child.kill('SIGUSR1');
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await eventually(() => existsSync(file('logs/sized.log.2')), 15_000, 'sized.log.2');
    // The last rotation may have left the current file empty: one more line goes to it.
    const before = messages(file('logs/sized.log')).length;
    hub.child.kill('SIGUSR1');
    await eventually(() => messages(file('logs/sized.log')).length > before, 15_000, 'a line in sized.log');
    expect(existsSync(file('logs/sized.log.3'))).toBe(false);
    expect(statSync(file('logs/sized.log.1')).size).toBeGreaterThanOrEqual(4096);
    expect(statSync(file('logs/sized.log.1')).size).toBeLessThan(4096 + 1024);
    expect(hub.running).toBe(true);
  });
});

describe('edge-agent with workers and a log file', () => {
  it('survives SIGUSR1 and passes it on to its workers, which reopen the file', async () => {
    const log = file('logs/agent.log');
    const agent = new CliProcess('dist/edge-agent/cli.js', [
      '--dev-pki', file('pki'), '--hub', `127.0.0.1:${await freePort()}`, '--host', '127.0.0.1', '--port', String(await freePort()),
      '--workers', '2', '--log-file', log,
    ]);
    processes.push(agent);
    await waitForMessage(log, 'agent listening', 2);
    renameSync(log, `${log}.1`);
    agent.child.kill('SIGUSR1');
    // The primary's line and one from each worker.
    await waitForMessage(log, 'log file reopened', 3);
    expect(agent.running).toBe(true);
    expect(messages(`${log}.1`)).toContain('agent listening');
    expect(agent.lines).toEqual([]);
  });
});
