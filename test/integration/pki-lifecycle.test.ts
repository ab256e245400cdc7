import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDevPki, issueCertificate } from '../../shared/pki.js';
import { connectClient, eventually } from '../support/chain.js';
import { CliProcess, type LogLine } from '../support/cli-process.js';
import { freePort } from '../support/mosquitto.js';

const repo = resolve(import.meta.dirname, '../..');

function run(script: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [join(repo, script), ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      done({ status: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
    });
  });
}

/** A hub with its own PKI directory on kernel-chosen loopback ports, and helpers to enroll and run agents against it. */
class PkiSite {
  readonly dir = mkdtempSync(join(tmpdir(), 'edgemux-pki-life-'));
  readonly pkiDir = join(this.dir, 'pki');
  readonly processes: CliProcess[] = [];
  readonly clients: MqttClient[] = [];
  hub!: CliProcess;
  tunnelPort = 0;
  appPort = 0;
  caFingerprint = '';

  constructor(private readonly hubArgs: string[] = []) {}

  async start(): Promise<void> {
    const init = await run('dist/cloud-hub/cli.js', ['pki', 'init', '--dir', this.pkiDir, '--json']);
    expect(init.status, init.stderr).toBe(0);
    this.caFingerprint = (JSON.parse(init.stdout) as { caFingerprint: string }).caFingerprint;
    [this.tunnelPort, this.appPort] = [await freePort(), await freePort()];
    await this.startHub();
  }

  async startHub(): Promise<void> {
    this.hub = this.spawn('dist/cloud-hub/cli.js', [
      '--pki-dir', this.pkiDir, '--tunnel-host', '127.0.0.1', '--tunnel-port', String(this.tunnelPort),
      '--app-host', '127.0.0.1', '--app-port', String(this.appPort), ...this.hubArgs,
    ]);
    await this.hub.waitForLog('hub listening');
  }

  spawn(script: string, args: string[]): CliProcess {
    const child = new CliProcess(script, args);
    this.processes.push(child);
    return child;
  }

  async enroll(agentId: string): Promise<string> {
    const issued = await run('dist/cloud-hub/cli.js', ['pki', 'token', '--dir', this.pkiDir, '--agent', agentId, '--json']);
    const { token } = JSON.parse(issued.stdout) as { token: string };
    const identityDir = join(this.dir, `id-${agentId}-${Date.now()}`);
    const enrolled = await run('dist/edge-agent/cli.js', [
      'enroll', '--hub', `127.0.0.1:${this.tunnelPort}`, '--token', token, '--ca-fingerprint', this.caFingerprint, '--dir', identityDir,
    ]);
    expect(enrolled.status, enrolled.stderr).toBe(0);
    return identityDir;
  }

  async agent(args: string[]): Promise<{ agent: CliProcess; devicePort: number }> {
    const devicePort = await freePort();
    const agent = this.spawn('dist/edge-agent/cli.js', [
      '--hub', `127.0.0.1:${this.tunnelPort}`, '--host', '127.0.0.1', '--port', String(devicePort), '--tunnels', '2', '--log-level', 'debug', ...args,
    ]);
    return { agent, devicePort };
  }

  async client(port: number, clientId: string, extra: Parameters<typeof connectClient>[1] = {}): Promise<MqttClient> {
    const connected = await connectClient(port, { clientId, reconnectPeriod: 0, ...extra });
    this.clients.push(connected);
    return connected;
  }

  async close(): Promise<void> {
    for (const connected of this.clients) connected.end(true);
    for (const child of [...this.processes].reverse()) await child.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

describe('certificate rotation', () => {
  // Six-second certificates renewed at half their validity: several rotations within one test,
  // with room for a slow start on a loaded machine before the first one expires.
  const site = new PkiSite(['--cert-validity', '6s']);
  beforeAll(() => site.start());
  afterAll(() => site.close());

  it('renews the agent certificate while a device keeps publishing QoS 1: no disconnect, nothing lost', async () => {
    const identityDir = await site.enroll('site-rot');
    const { agent, devicePort } = await site.agent(['--identity-dir', identityDir, '--renew-at', '0.5']);
    await agent.waitForLog('tunnel up', 2);
    const firstSerial = readFileSync(join(identityDir, 'agent.pem'), 'utf8');

    const app = await site.client(site.appPort, 'rot-app');
    await app.subscribeAsync('rot/#', { qos: 1 });
    const received = new Set<number>();
    app.on('message', (_topic, payload) => received.add(Number(payload.toString())));
    const device = await site.client(devicePort, 'site-rot:dev');
    let disconnects = 0;
    device.on('close', () => disconnects++);

    let sent = 0;
    const renewedBefore = agent.logged('agent certificate renewed').length;
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      await device.publishAsync('rot/seq', String(sent), { qos: 1 });
      sent++;
      await new Promise((resolveWait) => setTimeout(resolveWait, 20));
    }
    await eventually(() => received.size === sent, 10_000, `all ${sent} messages at the application`);

    expect(disconnects).toBe(0);
    expect([...received].sort((a, b) => a - b)).toEqual(Array.from({ length: sent }, (_, i) => i));
    // Renewed at least twice while publishing, and the hub retired tunnels on the expired certificates.
    expect(agent.logged('agent certificate renewed').length - renewedBefore).toBeGreaterThanOrEqual(2);
    expect(site.hub.logged('agent certificate renewed').length).toBeGreaterThanOrEqual(2);
    expect(site.hub.logged('agent certificate expired; closing the tunnel it carried').length).toBeGreaterThanOrEqual(2);
    expect(agent.logged('tunnel up').length).toBeGreaterThan(2);
    expect(readFileSync(join(identityDir, 'agent.pem'), 'utf8')).not.toBe(firstSerial);
    expect(statSync(join(identityDir, 'agent-key.pem')).mode & 0o777).toBe(0o600);
    expect(readdirSync(identityDir).sort()).toEqual(['agent-key.pem', 'agent.pem', 'ca.pem']);
    console.log(`rotation: ${sent} QoS 1 messages, ${agent.logged('agent certificate renewed').length} renewals, ${disconnects} disconnects, ${sent - received.size} lost`);
  }, 40_000);
});

describe('revocation', () => {
  const site = new PkiSite();
  beforeAll(() => site.start());
  afterAll(() => site.close());

  it('closes a revoked agent\'s tunnels within 2 s with the reason, publishes its devices\' wills, refuses it afterwards and after a hub restart', async () => {
    const identityDir = await site.enroll('site-rev');
    const { agent, devicePort } = await site.agent(['--identity-dir', identityDir]);
    await agent.waitForLog('tunnel up', 2);

    const app = await site.client(site.appPort, 'rev-app');
    await app.subscribeAsync('wills/#', { qos: 1 });
    let willAt = 0;
    app.on('message', (topic) => {
      if (topic === 'wills/site-rev-dev') willAt = performance.now();
    });
    await site.client(devicePort, 'site-rev:dev', { will: { topic: 'wills/site-rev-dev', payload: Buffer.from('gone'), qos: 1, retain: false } });

    const revoked = await run('dist/cloud-hub/cli.js', ['pki', 'revoke', 'site-rev', '--dir', site.pkiDir, '--reason', 'box stolen']);
    const revokedAt = performance.now();
    expect(revoked.status, revoked.stderr).toBe(0);

    const closedLines = (): LogLine[] => agent.logged('hub closed the tunnel').filter((line) => line.code === 'revoked');
    await eventually(() => closedLines().length === 2 && willAt > 0, 2000, 'both tunnels closed and the will published');
    const elapsed = performance.now() - revokedAt;
    expect(elapsed).toBeLessThan(2000);
    expect(closedLines()[0].reason).toContain('box stolen');
    expect(site.hub.logged('agent revoked; closing its tunnels and ending its sessions')[0].agentId).toBe('site-rev');

    // It keeps dialling and is refused at the handshake, by name.
    await eventually(() => agent.logged('hub refused the tunnel').some((line) => line.code === 'revoked'), 5000, 'a refused redial');
    const upAfter = (): number => site.hub.logged('agent tunnel up').filter((line) => line.agentId === 'site-rev').length;
    expect(upAfter()).toBe(2);
    expect(site.hub.logged('tunnel refused').some((line) => line.problem === 'revoked' && line.agentId === 'site-rev')).toBe(true);

    // The revocation is on disk: a restarted hub refuses it too.
    await site.hub.stop();
    const refusedBefore = agent.logged('hub refused the tunnel').length;
    await site.startHub();
    await eventually(() => agent.logged('hub refused the tunnel').length > refusedBefore, 10_000, 'a refusal from the restarted hub');
    expect(site.hub.logged('agent tunnel up')).toHaveLength(0);
    console.log(`revocation: tunnels closed and will published ${Math.round(elapsed)} ms after the revoke command returned`);
  }, 40_000);

  it('admits the agent again only through a new enrollment token', async () => {
    const identityDir = await site.enroll('site-rev');
    const { agent } = await site.agent(['--identity-dir', identityDir]);
    await agent.waitForLog('tunnel up', 2);
  });
});

describe('TLS failures are named on both sides', () => {
  const site = new PkiSite();
  let foreignDir: string;
  beforeAll(async () => {
    await site.start();
    foreignDir = join(site.dir, 'foreign');
    await ensureDevPki(foreignDir, { agentIds: ['site-x'] });
  });
  afterAll(() => site.close());

  function files(name: string, cert: string, key: string): string[] {
    writeFileSync(join(site.dir, `${name}.pem`), cert);
    writeFileSync(join(site.dir, `${name}-key.pem`), key, { mode: 0o600 });
    return ['--cert', join(site.dir, `${name}.pem`), '--key', join(site.dir, `${name}-key.pem`)];
  }

  function droppedHandshakes(): number {
    return site.hub.logged('tunnel TLS handshake refused').filter((line) => String(line.hint).includes('refused the hub certificate')).length;
  }

  async function refusedWith(args: string[], problem: string, agentMsg: string): Promise<{ agent: CliProcess }> {
    const { agent } = await site.agent(args);
    await eventually(() => agent.logged(agentMsg).some((line) => line.problem === problem), 10_000, `agent: ${agentMsg} (${problem})`);
    await agent.stop();
    return { agent };
  }

  it('a certificate from another CA: unknown-ca, not a socket hang-up', async () => {
    const foreign = { cert: readFileSync(join(foreignDir, 'agent-site-x.pem'), 'utf8'), key: readFileSync(join(foreignDir, 'agent-site-x-key.pem'), 'utf8') };
    await refusedWith(['--ca', join(site.pkiDir, 'ca.pem'), ...files('foreign', foreign.cert, foreign.key)], 'unknown-ca', 'hub refused the tunnel');
    const hubLine = site.hub.logged('tunnel refused').find((line) => line.problem === 'unknown-ca');
    expect(hubLine?.presentedCn).toBe('site-x');
  });

  it('an expired certificate: expired', async () => {
    const ca = { certPem: readFileSync(join(site.pkiDir, 'ca.pem'), 'utf8'), keyPem: readFileSync(join(site.pkiDir, 'ca-key.pem'), 'utf8') };
    const expired = issueCertificate(ca, { commonName: 'site-old', role: 'client', validMs: 1 });
    await new Promise((resolveWait) => setTimeout(resolveWait, 20));
    await refusedWith(['--ca', join(site.pkiDir, 'ca.pem'), ...files('expired', expired.certPem, expired.keyPem)], 'expired', 'hub refused the tunnel');
    expect(site.hub.logged('tunnel refused').some((line) => line.problem === 'expired')).toBe(true);
  });

  it('a hub certificate without the dialled name: wrong-name at the agent, a hint at the hub', async () => {
    const identityDir = await site.enroll('site-name');
    const droppedBefore = droppedHandshakes();
    await refusedWith(['--identity-dir', identityDir, '--server-name', 'not-the-hub.example'], 'wrong-name', 'hub certificate refused');
    await eventually(() => droppedHandshakes() > droppedBefore, 5000, 'the hub explaining the dropped handshake');
  });

  it('a hub certificate from a CA the agent does not trust: unknown-ca at the agent', async () => {
    const identityDir = await site.enroll('site-trust');
    const own = { cert: readFileSync(join(identityDir, 'agent.pem'), 'utf8'), key: readFileSync(join(identityDir, 'agent-key.pem'), 'utf8') };
    const droppedBefore = droppedHandshakes();
    await refusedWith(['--ca', join(foreignDir, 'ca.pem'), ...files('trusting-foreign', own.cert, own.key)], 'unknown-ca', 'hub certificate refused');
    await eventually(() => droppedHandshakes() > droppedBefore, 5000, 'the hub explaining the dropped handshake');
  });
});
