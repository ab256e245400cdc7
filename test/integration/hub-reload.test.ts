import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certificateFingerprint, ensureDevPki, issueCertificate } from '../../shared/pki.js';
import { connectClient } from '../support/chain.js';
import { CliProcess } from '../support/cli-process.js';
import { freePort, itWithMosquitto, Mosquitto } from '../support/mosquitto.js';

describe('cloud-hub on SIGHUP', () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgemux-hub-reload-'));
  const file = (name: string): string => join(dir, name);
  const processes: CliProcess[] = [];
  const clients: MqttClient[] = [];
  let hub: CliProcess;
  let devicePort: number;
  let appPort: number;
  let tunnelPort: number;
  let agent: CliProcess;

  /** The hub's config file: TLS files and namespaces, plus whatever a test adds. */
  function writeHubConfig(clientIds: string[], extra: string[] = []): void {
    writeFileSync(
      file('hub.yaml'),
      [
        `tls: { ca: ${file('ca.pem')}, cert: ${file('hub.pem')}, key: ${file('hub-key.pem')} }`,
        'namespaces:',
        `  - { agentId: agent-1, clientIds: [${clientIds.map((id) => `'${id}'`).join(', ')}] }`,
        ...extra,
        '',
      ].join('\n'),
    );
  }

  /** Sends SIGHUP and waits for the hub to log the outcome of that reload. */
  async function reloadHub(outcome: 'configuration reloaded' | 'configuration reload refused; the running configuration stays') {
    const before = hub.logged(outcome).length;
    hub.child.kill('SIGHUP');
    return hub.waitForLog(outcome, before + 1);
  }

  async function device(clientId: string): Promise<MqttClient> {
    const client = await connectClient(devicePort, { clientId });
    clients.push(client);
    return client;
  }

  beforeAll(async () => {
    const pki = await ensureDevPki(file('pki'), { agentIds: ['agent-1'] });
    writeFileSync(file('ca.pem'), pki.ca);
    writeFileSync(file('hub.pem'), pki.hub.cert);
    writeFileSync(file('hub-key.pem'), pki.hub.key);
    writeFileSync(file('agent.pem'), pki.agents['agent-1'].cert);
    writeFileSync(file('agent-key.pem'), pki.agents['agent-1'].key);
    [tunnelPort, appPort, devicePort] = [await freePort(), await freePort(), await freePort()];
    writeHubConfig(['old-*', 'keep-*']);
    hub = new CliProcess('dist/cloud-hub/cli.js', [
      '--config', file('hub.yaml'), '--tunnel-host', '127.0.0.1', '--tunnel-port', String(tunnelPort),
      '--app-host', '127.0.0.1', '--app-port', String(appPort),
    ]);
    processes.push(hub);
    await hub.waitForLog('hub listening');
    agent = new CliProcess('dist/edge-agent/cli.js', [
      '--ca', file('ca.pem'), '--cert', file('agent.pem'), '--key', file('agent-key.pem'),
      '--hub', `127.0.0.1:${tunnelPort}`, '--host', '127.0.0.1', '--port', String(devicePort), '--tunnels', '2',
    ]);
    processes.push(agent);
    await hub.waitForLog('agent tunnel up', 2);
  });

  afterAll(async () => {
    for (const client of clients) client.end(true);
    for (const child of processes.reverse()) await child.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('applies a narrower namespace to new devices while a connected one keeps working', async () => {
    const app = await connectClient(appPort, { clientId: 'reload-app' });
    clients.push(app);
    await app.subscribeAsync('reload/#', { qos: 1 });
    const received: string[] = [];
    app.on('message', (_topic, payload) => received.push(payload.toString()));

    const kept = await device('keep-1');
    let keptClosed = false;
    kept.on('close', () => (keptClosed = true));
    const before = await device('old-1');
    before.end(true);

    writeHubConfig(['keep-*'], ['hubId: renamed-hub']);
    const reloaded = await reloadHub('configuration reloaded');
    expect(reloaded.changed).toEqual(['namespaces']);
    expect(hub.logged('changed settings need a restart; their running values stay').at(-1)?.needsRestart).toEqual(['hubId']);

    await expect(device('old-1')).rejects.toMatchObject({ code: 5 });
    await kept.publishAsync('reload/kept', 'still here', { qos: 1 });
    await expect.poll(() => received).toContain('still here');
    expect(keptClosed).toBe(false);
    expect(hub.running).toBe(true);
  });

  it('logs a bad config with its key and keeps serving with the running one', async () => {
    writeHubConfig(['keep-*', 'old-*'], ['routes:', "  - { match: { clientId: 'x-*' }, backend: { brokers: [{ url: 'http://nope:1883' }] } }"]);
    const refused = await reloadHub('configuration reload refused; the running configuration stays');
    expect(refused.reason).toMatch(/routes\.0\.backend\.brokers\.0\.url: expected mqtt:\/\/host\[:port\]/);

    // The namespace change that came with the bad route was not applied either.
    await expect(device('old-2')).rejects.toMatchObject({ code: 5 });
    const fresh = await device('keep-2');
    await fresh.publishAsync('reload/fresh', 'x', { qos: 1 });
    expect(hub.running).toBe(true);
  });

  it('refuses a certificate that does not match its key, naming the key', async () => {
    const pki = await ensureDevPki(file('pki'));
    writeHubConfig(['keep-*']);
    writeFileSync(file('hub-key.pem'), pki.agents['agent-1'].key);
    const refused = await reloadHub('configuration reload refused; the running configuration stays');
    expect(refused.reason).toMatch(/^tls: unusable certificate or key/);
    writeFileSync(file('hub-key.pem'), pki.hub.key);
    expect(hub.running).toBe(true);
  });

  it('serves a new certificate file to the next tunnel while the tunnels up carry on', async () => {
    const kept = await device('keep-3');
    const ca = { certPem: readFileSync(file('ca.pem'), 'utf8'), keyPem: readFileSync(join(file('pki'), 'ca-key.pem'), 'utf8') };
    const rotated = issueCertificate(ca, { commonName: 'edgemux-hub', role: 'server', altNames: ['localhost', '127.0.0.1'] });
    writeFileSync(file('hub.pem'), rotated.certPem);
    writeFileSync(file('hub-key.pem'), rotated.keyPem);
    writeHubConfig(['keep-*']);
    const reloaded = await reloadHub('configuration reloaded');
    expect(reloaded.changed).toEqual(['tls']);

    const served = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port: tunnelPort,
        ca: readFileSync(file('ca.pem')),
        cert: readFileSync(file('agent.pem')),
        key: readFileSync(file('agent-key.pem')),
        minVersion: 'TLSv1.3',
      });
      socket.once('secureConnect', () => {
        resolve(socket.getPeerCertificate().fingerprint256.replaceAll(':', '').toLowerCase());
        socket.destroy();
      });
      socket.once('error', reject);
    });
    expect(served).toBe(certificateFingerprint(rotated.certPem));
    await kept.publishAsync('reload/after-rotation', 'x', { qos: 1 });
    expect(agent.logged('tunnel down')).toHaveLength(0);
  });

  itWithMosquitto('sends new devices along a new route while a device connected before stays on its broker', async () => {
    const mosquitto = await Mosquitto.start();
    try {
      const embeddedApp = await connectClient(appPort, { clientId: 'route-embedded-app' });
      clients.push(embeddedApp);
      const mosquittoApp = await connectClient(mosquitto.port, { clientId: 'route-mosquitto-app' });
      clients.push(mosquittoApp);
      const seen: string[] = [];
      await embeddedApp.subscribeAsync('route/#', { qos: 1 });
      embeddedApp.on('message', (_topic, payload) => seen.push(`embedded ${payload.toString()}`));
      await mosquittoApp.subscribeAsync('route/#', { qos: 1 });
      mosquittoApp.on('message', (_topic, payload) => seen.push(`mosquitto ${payload.toString()}`));
      const before = await device('keep-route-1');

      writeHubConfig(['keep-*'], ['routes:', `  - { match: { clientId: 'keep-route-*' }, backend: { brokers: [{ url: 'mqtt://127.0.0.1:${mosquitto.port}' }] } }`]);
      const reloaded = await reloadHub('configuration reloaded');
      expect(reloaded.changed).toContain('routes');
      const after = await device('keep-route-2');
      await before.publishAsync('route/t', 'from before', { qos: 1 });
      await after.publishAsync('route/t', 'from after', { qos: 1 });
      await expect.poll(() => seen.sort()).toEqual(['embedded from before', 'mosquitto from after']);
    } finally {
      await mosquitto.remove();
    }
  });
});
