import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { MqttClient } from 'mqtt';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ENROLL_ALPN } from '../../shared/enrollment-wire.js';
import { decodeFrames, FrameType } from '../../shared/frame-codec.js';
import { connectClient, eventually } from '../support/chain.js';
import { CliProcess } from '../support/cli-process.js';
import { freePort } from '../support/mosquitto.js';

const repo = resolve(import.meta.dirname, '../..');

interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

/** A CLI run to completion without blocking this process, whose MQTT clients must keep running meanwhile. */
function run(script: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((done) => {
    execFile(process.execPath, [join(repo, script), ...args], { timeout: 20_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      done({ status: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
    });
  });
}

describe('enrollment with one-time tokens against the real binaries', () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgemux-enroll-'));
  const pkiDir = join(dir, 'pki');
  const processes: CliProcess[] = [];
  const clients: MqttClient[] = [];
  let hub: CliProcess;
  let tunnelPort: number;
  let appPort: number;
  let caFingerprint: string;
  const tokensSeen: string[] = [];

  async function token(agentId: string, ttl = '10m'): Promise<string> {
    const issued = await run('dist/cloud-hub/cli.js', ['pki', 'token', '--dir', pkiDir, '--agent', agentId, '--ttl', ttl, '--json']);
    expect(issued.status, issued.stderr).toBe(0);
    const parsed = JSON.parse(issued.stdout) as { token: string; caFingerprint: string };
    expect(parsed.caFingerprint).toBe(caFingerprint);
    tokensSeen.push(parsed.token);
    return parsed.token;
  }

  function enroll(tokenValue: string, identityDir: string): Promise<Run> {
    return run('dist/edge-agent/cli.js', ['enroll', '--hub', `127.0.0.1:${tunnelPort}`, '--token', tokenValue, '--ca-fingerprint', caFingerprint, '--dir', identityDir]);
  }

  async function startAgent(identityDir: string, extra: string[] = []): Promise<{ agent: CliProcess; devicePort: number }> {
    const devicePort = await freePort();
    const agent = new CliProcess('dist/edge-agent/cli.js', [
      '--identity-dir', identityDir, '--hub', `127.0.0.1:${tunnelPort}`, '--host', '127.0.0.1', '--port', String(devicePort), '--tunnels', '2', ...extra,
    ]);
    processes.push(agent);
    return { agent, devicePort };
  }

  async function client(port: number, clientId: string, extra: Parameters<typeof connectClient>[1] = {}): Promise<MqttClient> {
    const connected = await connectClient(port, { clientId, reconnectPeriod: 0, ...extra });
    clients.push(connected);
    return connected;
  }

  beforeAll(async () => {
    const init = await run('dist/cloud-hub/cli.js', ['pki', 'init', '--dir', pkiDir, '--json']);
    expect(init.status, init.stderr).toBe(0);
    caFingerprint = (JSON.parse(init.stdout) as { caFingerprint: string }).caFingerprint;
    [tunnelPort, appPort] = [await freePort(), await freePort()];
    hub = new CliProcess('dist/cloud-hub/cli.js', [
      '--pki-dir', pkiDir, '--tunnel-host', '127.0.0.1', '--tunnel-port', String(tunnelPort), '--app-host', '127.0.0.1', '--app-port', String(appPort),
    ]);
    processes.push(hub);
    await hub.waitForLog('hub listening');
  });

  afterAll(async () => {
    for (const connected of clients) connected.end(true);
    for (const child of processes.reverse()) await child.stop();
    // No token, whole or secret half, in any log line of hub or agents.
    for (const child of processes) {
      const text = JSON.stringify(child.lines);
      for (const seen of tokensSeen) expect(text).not.toContain(seen.split('.')[1]);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps the CA key and the token store private to the hub user', () => {
    expect(statSync(join(pkiDir, 'ca-key.pem')).mode & 0o777).toBe(0o600);
    expect(statSync(join(pkiDir, 'pki.sqlite')).mode & 0o777).toBe(0o600);
  });

  it('enrolls an agent with a token and carries a device QoS 1 message over mutual TLS', async () => {
    const identityDir = join(dir, 'agent-a');
    const enrolled = await enroll(await token('site-a'), identityDir);
    expect(enrolled.status, enrolled.stderr).toBe(0);
    expect(enrolled.stdout).toContain('enrolled as site-a');
    expect(statSync(join(identityDir, 'agent-key.pem')).mode & 0o777).toBe(0o600);
    expect(readdirSync(identityDir).sort()).toEqual(['agent-key.pem', 'agent.pem', 'ca.pem']);
    expect((await hub.waitForLog('agent enrolled')).agentId).toBe('site-a');

    const { agent, devicePort } = await startAgent(identityDir);
    await agent.waitForLog('tunnel up', 2);
    expect(hub.logged('agent tunnel up').filter((line) => line.agentId === 'site-a')).toHaveLength(2);

    const app = await client(appPort, 'enroll-app');
    await app.subscribeAsync('enrolled/#', { qos: 1 });
    const received: string[] = [];
    app.on('message', (_topic, payload) => received.push(payload.toString()));
    const device = await client(devicePort, 'site-a:dev-1');
    await device.publishAsync('enrolled/hello', 'from an enrolled agent', { qos: 1 });
    await eventually(() => received.includes('from an enrolled agent'), 5000, 'the message at the application');
  });

  it('refuses a token used once already, on both sides', async () => {
    const once = await token('site-b');
    expect((await enroll(once, join(dir, 'agent-b'))).status).toBe(0);
    const again = await enroll(once, join(dir, 'agent-b-again'));
    expect(again.status).toBe(3);
    expect(again.stderr).toMatch(/enrollment failed: hub refused: token-used: enrollment token [0-9a-f]{16} was already used/);
    const refused = await hub.waitForLog('enrollment refused');
    expect(refused.code).toBe('token-used');
    expect(() => statSync(join(dir, 'agent-b-again', 'agent.pem'))).toThrow();
  });

  it('refuses an expired token and a made-up one, telling the stranger nothing more', async () => {
    const expired = await token('site-c', '1ms');
    const late = await enroll(expired, join(dir, 'agent-c'));
    expect(late.status).toBe(3);
    expect(late.stderr).toMatch(/token-expired: enrollment token [0-9a-f]{16} expired at /);
    expect(hub.logged('enrollment refused').some((line) => line.code === 'token-expired')).toBe(true);

    // The right id with a wrong secret is as unknown as any other guess.
    const guessed = `${expired.split('.')[0]}.${'A'.repeat(43)}`;
    const stranger = await enroll(guessed, join(dir, 'agent-stranger'));
    expect(stranger.status).toBe(3);
    expect(stranger.stderr).toContain('token-invalid: enrollment token not recognised');
  });

  it('refuses to send the token to a hub whose CA does not match the fingerprint', async () => {
    const tokenValue = await token('site-d');
    const wrong = await run('dist/edge-agent/cli.js', ['enroll', '--hub', `127.0.0.1:${tunnelPort}`, '--token', tokenValue, '--ca-fingerprint', '00'.repeat(32), '--dir', join(dir, 'agent-d')]);
    expect(wrong.status).toBe(3);
    expect(wrong.stderr).toContain('is not the expected');
    // Never sent: the token still works.
    expect((await enroll(tokenValue, join(dir, 'agent-d'))).status).toBe(0);
  });

  /** Everything a raw TLS client gets from the tunnel port until the hub closes the connection. */
  async function strangerReads(options: tls.ConnectionOptions, send?: Buffer): Promise<Buffer> {
    const socket = tls.connect({ host: '127.0.0.1', port: tunnelPort, rejectUnauthorized: false, ...options });
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('secureConnect', () => {
      if (send !== undefined) socket.write(send);
    });
    await new Promise<void>((done) => {
      socket.once('close', () => done());
      socket.once('error', () => {});
    });
    return Buffer.concat(chunks);
  }

  it('gives a stranger without a certificate nothing but a refusal on the tunnel port', async () => {
    const bytes = await strangerReads({});
    expect(decodeFrames(bytes, 1024)).toEqual([
      { type: FrameType.GOODBYE, streamId: 0, body: { code: 'certificate-refused', reason: 'no certificate presented', problem: 'no-certificate' } },
    ]);
    expect(hub.logged('tunnel refused').some((line) => line.problem === 'no-certificate')).toBe(true);
  });

  it('refuses an enrollment request that announces more than 16 KiB, before reading it', async () => {
    const header = Buffer.alloc(4);
    header.writeUInt32BE(1024 * 1024);
    const bytes = await strangerReads({ ALPNProtocols: [ENROLL_ALPN] }, header);
    const answer = JSON.parse(bytes.subarray(4).toString()) as { ok: boolean; code: string; reason: string };
    expect(answer).toMatchObject({ ok: false, code: 'bad-request' });
    expect(answer.reason).toContain('1048576 bytes announced, at most 16384 accepted');
  });

  it('enrolls at start with a token from the environment, then connects', async () => {
    const identityDir = join(dir, 'agent-e');
    const tokenValue = await token('site-e');
    // From the environment, so the token is not in the process list; spawn copies it now.
    process.env.EDGEMUX_ENROLL_TOKEN = tokenValue;
    let agent: CliProcess;
    try {
      ({ agent } = await startAgent(identityDir, ['--ca-fingerprint', caFingerprint]));
    } finally {
      delete process.env.EDGEMUX_ENROLL_TOKEN;
    }
    expect((await agent.waitForLog('agent enrolled')).agentId).toBe('site-e');
    await agent.waitForLog('tunnel up', 2);
    expect(statSync(join(identityDir, 'agent-key.pem')).mode & 0o777).toBe(0o600);
  });
});
