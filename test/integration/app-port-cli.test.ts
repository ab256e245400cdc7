import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually } from '../support/chain.js';
import { freePort, itWithMosquitto } from '../support/mosquitto.js';

const repo = resolve(import.meta.dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'edgemux-app-port-cli-'));
const children: ChildProcess[] = [];

function startHub(args: string[]): { child: ChildProcess; output: () => string } {
  let output = '';
  const child = spawn(process.execPath, [join(repo, 'dist/cloud-hub/cli.js'), '--dev-pki', join(dir, 'pki'), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  children.push(child);
  return { child, output: () => output };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** An address of this machine other than loopback, if it has one. */
function externalAddress(): string | undefined {
  return Object.values(networkInterfaces())
    .flat()
    .find((entry) => entry !== undefined && entry.family === 'IPv4' && !entry.internal)?.address;
}

async function accepts(host: string, port: number): Promise<boolean> {
  return new Promise<boolean>((done) => {
    const socket = net.connect(port, host);
    socket.once('connect', () => {
      socket.destroy();
      done(true);
    });
    socket.once('error', () => done(false));
  });
}

describe('cloud-hub app port as started from the command line', () => {
  afterAll(async () => {
    for (const child of children) await stop(child);
    rmSync(dir, { recursive: true, force: true });
  });

  it('listens on loopback only unless told otherwise', async () => {
    const appPort = await freePort();
    const hub = startHub(['--tunnel-host', '127.0.0.1', '--tunnel-port', String(await freePort()), '--app-port', String(appPort)]);
    await eventually(() => hub.output().includes('hub listening'), 15_000, 'hub to listen');
    const listening = JSON.parse(hub.output().split('\n').find((line) => line.includes('hub listening'))!);
    expect(listening.app).toMatchObject({ address: '127.0.0.1', port: appPort });
    expect(await accepts('127.0.0.1', appPort)).toBe(true);
    const external = externalAddress();
    if (external !== undefined) expect(await accepts(external, appPort)).toBe(false);
    await stop(hub.child);
  });

  itWithMosquitto('beyond loopback without credentials only when --app-allow-anonymous says so', async () => {
    const appPort = await freePort();
    const hub = startHub([
      '--tunnel-host', '127.0.0.1', '--tunnel-port', String(await freePort()), '--app-host', '0.0.0.0', '--app-port', String(appPort), '--app-allow-anonymous',
    ]);
    await eventually(() => hub.output().includes('hub listening'), 15_000, 'hub to listen');
    const anonymous = spawnSync('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(appPort), '-t', 'open/door', '-m', 'x'], { encoding: 'utf8', timeout: 10_000 });
    expect(anonymous.status).toBe(0);
    expect(hub.output()).toContain('application port open without credentials to anyone who reaches it');
    await stop(hub.child);
  });

  itWithMosquitto('beyond loopback with a mosquitto_passwd file: mosquitto_pub/sub need the password, which never reaches the logs', async () => {
    const passwords = join(dir, 'passwords');
    const secret = 'tr0ub4dor&3';
    execFileSync('mosquitto_passwd', ['-c', '-b', passwords, 'ops', secret]);
    const appPort = await freePort();
    const hub = startHub([
      '--tunnel-host', '127.0.0.1', '--tunnel-port', String(await freePort()),
      '--app-host', '0.0.0.0', '--app-port', String(appPort), '--app-password-file', passwords, '--log-level', 'trace',
    ]);
    await eventually(() => hub.output().includes('hub listening'), 15_000, 'hub to listen');
    const mqttArgs = ['-h', '127.0.0.1', '-p', String(appPort), '-t', 'ops/alerts'];

    const anonymous = spawnSync('mosquitto_pub', [...mqttArgs, '-m', 'x', '-i', 'anon-pub'], { encoding: 'utf8', timeout: 10_000 });
    expect(anonymous.status).not.toBe(0);
    expect(anonymous.stderr).toMatch(/not authori[sz]ed/i);
    const wrong = spawnSync('mosquitto_pub', [...mqttArgs, '-m', 'x', '-u', 'ops', '-P', 'guess', '-i', 'wrong-pub'], { encoding: 'utf8', timeout: 10_000 });
    expect(wrong.status).not.toBe(0);
    expect(wrong.stderr).toMatch(/bad user ?name or password/i);

    const sub = spawn('mosquitto_sub', [...mqttArgs, '-u', 'ops', '-P', secret, '-i', 'ops-sub', '-C', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(sub);
    let received = '';
    sub.stdout!.on('data', (chunk: Buffer) => (received += chunk.toString()));
    // The subscriber may not have subscribed yet: publish until it has the alert.
    await eventually(
      () => {
        if (received === '') spawnSync('mosquitto_pub', [...mqttArgs, '-m', 'pump 3 overheating', '-u', 'ops', '-P', secret, '-i', 'ops-pub']);
        return received.trim() === 'pump 3 overheating';
      },
      10_000,
      'the alert to reach the subscriber',
    );
    await stop(hub.child);
    expect(hub.output()).toContain('application refused');
    expect(hub.output()).not.toContain(secret);
  });
});
