import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { createCertificateAuthority, ensureDevPki, issueCertificate } from '../../shared/pki.js';
import { connectClient, hubOptions } from '../support/chain.js';
import { CliProcess } from '../support/cli-process.js';
import { freePort } from '../support/mosquitto.js';

const repo = resolve(import.meta.dirname, '../..');

describe('edge-agent listeners from its configuration file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgemux-agent-listeners-'));
  const file = (name: string): string => join(dir, name);
  const cleanups: (() => Promise<void> | void)[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves TCP and WebSocket over TLS with a required device certificate read from files', async () => {
    const pki = await ensureDevPki(file('pki'), { agentIds: ['agent-1'] });
    const hub = await CloudHub.start(hubOptions(pki));
    cleanups.push(() => hub.close());
    const ca = createCertificateAuthority({ commonName: 'devices CA' });
    const server = issueCertificate(ca, { commonName: 'agent', role: 'server', altNames: ['127.0.0.1'] });
    const device = issueCertificate(ca, { commonName: 'meter-42', role: 'client' });
    writeFileSync(file('devices-ca.pem'), ca.certPem);
    writeFileSync(file('listener.pem'), server.certPem);
    writeFileSync(file('listener-key.pem'), server.keyPem);
    const [tcpPort, wssPort] = [await freePort(), await freePort()];
    writeFileSync(
      file('agent.yaml'),
      [
        `devPki: ${file('pki')}`,
        `hubs: ['127.0.0.1:${hub.tunnelAddress.port}']`,
        'listeners:',
        `  - { type: tcp, port: ${tcpPort} }`,
        `  - type: wss`,
        `    port: ${wssPort}`,
        `    path: /devices`,
        `    cert: ${file('listener.pem')}`,
        `    key: ${file('listener-key.pem')}`,
        `    ca: ${file('devices-ca.pem')}`,
        '    requireClientCert: true',
        '    identityAs: clientId',
        '',
      ].join('\n'),
    );
    const agent = new CliProcess('dist/edge-agent/cli.js', ['--config', file('agent.yaml')]);
    cleanups.push(() => agent.stop());
    await agent.waitForLog('tunnel up', 2);
    const listening = (await agent.waitForLog('agent listening')) as { devices?: { type: string; address: string; port: number }[] };
    expect(listening.devices).toEqual([
      { type: 'tcp', family: 'IPv4', address: '127.0.0.1', port: tcpPort },
      { type: 'wss', family: 'IPv4', address: '127.0.0.1', port: wssPort },
    ]);

    const app = await connectClient(hub.appAddress.port, { clientId: 'listeners-app' });
    cleanups.push(() => void app.end(true));
    await app.subscribeAsync('meters/#', { qos: 1 });
    const received: string[] = [];
    app.on('message', (topic, payload) => received.push(`${topic} ${payload.toString()}`));

    const overTls = mqtt.connect(`wss://127.0.0.1:${wssPort}/devices`, {
      clientId: 'self-chosen',
      ca: ca.certPem,
      cert: device.certPem,
      key: device.keyPem,
      reconnectPeriod: 0,
    });
    cleanups.push(() => void overTls.end(true));
    await new Promise<void>((done, fail) => {
      overTls.once('connect', () => done());
      overTls.once('error', fail);
    });
    const plain: MqttClient = await connectClient(tcpPort, { clientId: 'meter-plain' });
    cleanups.push(() => void plain.end(true));
    await overTls.publishAsync('meters/wss', 'one', { qos: 1 });
    await plain.publishAsync('meters/tcp', 'two', { qos: 1 });
    await expect.poll(() => received.sort()).toEqual(['meters/tcp two', 'meters/wss one']);
    expect([...hub.sessions].map((session) => session.clientId).sort()).toEqual(['meter-42', 'meter-plain']);
  });

  it('refuses --port beside listeners, and a listener certificate it cannot read, naming the key', () => {
    writeFileSync(file('both.yaml'), [`devPki: ${file('pki')}`, 'listeners: [{ type: ws, port: 0 }]', ''].join('\n'));
    const both = spawnSync(process.execPath, [join(repo, 'dist/edge-agent/cli.js'), '--config', file('both.yaml'), '--port', '1884'], {
      encoding: 'utf8',
      timeout: 15_000,
    });
    expect(both.status).toBe(2);
    expect(both.stderr).toMatch(/listen: listeners replaces the default TCP listener/);

    writeFileSync(
      file('missing.yaml'),
      [`devPki: ${file('pki')}`, `listeners: [{ type: tls, port: 0, cert: ${file('nope.pem')}, key: ${file('nope-key.pem')} }]`, ''].join('\n'),
    );
    const missing = spawnSync(process.execPath, [join(repo, 'dist/edge-agent/cli.js'), '--config', file('missing.yaml')], {
      encoding: 'utf8',
      timeout: 15_000,
    });
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/listeners\[0\]\.cert: cannot read .*nope\.pem \(ENOENT\)/);
  });
});
