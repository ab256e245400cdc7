import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChaosProxy } from '../../firmware-sim/chaos-proxy.js';
import { createCertificateAuthority, type DevPki, ensureDevPki, issueCertificate } from '../../shared/pki.js';
import { connectClient } from '../support/chain.js';
import { CliProcess } from '../support/cli-process.js';
import { freePort } from '../support/mosquitto.js';

const RELOADED = 'configuration reloaded';

describe('edge-agent on SIGHUP', () => {
  const dir = mkdtempSync(join(tmpdir(), 'edgemux-agent-reload-'));
  const file = (name: string): string => join(dir, name);
  const processes: CliProcess[] = [];
  const clients: MqttClient[] = [];
  let pki: DevPki;
  let hub: CliProcess;
  let proxy: ChaosProxy;
  let appPort: number;
  let app: MqttClient;
  const received: string[] = [];

  async function track(client: Promise<MqttClient>): Promise<MqttClient> {
    clients.push(await client);
    return clients.at(-1)!;
  }

  /** Sends SIGHUP and waits until `count` more reloads have been logged. */
  async function sighup(target: CliProcess, count = 1): Promise<void> {
    const before = target.logged(RELOADED).length;
    target.child.kill('SIGHUP');
    await target.waitForLog(RELOADED, before + count);
  }

  async function roundTrip(device: MqttClient, text: string): Promise<void> {
    await device.publishAsync('agent-reload/t', text, { qos: 1 });
    await expect.poll(() => received).toContain(text);
  }

  beforeAll(async () => {
    pki = await ensureDevPki(file('pki'), { agentIds: ['agent-1'] });
    writeFileSync(file('ca.pem'), pki.ca);
    writeFileSync(file('hub.pem'), pki.hub.cert);
    writeFileSync(file('hub-key.pem'), pki.hub.key);
    writeFileSync(file('agent.pem'), pki.agents['agent-1'].cert);
    writeFileSync(file('agent-key.pem'), pki.agents['agent-1'].key);
    writeFileSync(file('hub.yaml'), `tls: { ca: ${file('ca.pem')}, cert: ${file('hub.pem')}, key: ${file('hub-key.pem')} }\n`);
    const tunnelPort = await freePort();
    appPort = await freePort();
    hub = new CliProcess('dist/cloud-hub/cli.js', [
      '--config', file('hub.yaml'), '--tunnel-host', '127.0.0.1', '--tunnel-port', String(tunnelPort),
      '--app-host', '127.0.0.1', '--app-port', String(appPort), '--open-namespaces',
    ]);
    processes.push(hub);
    await hub.waitForLog('hub listening');
    proxy = await ChaosProxy.start({ host: '127.0.0.1', port: tunnelPort });
    app = await track(connectClient(appPort, { clientId: 'agent-reload-app' }));
    await app.subscribeAsync('agent-reload/#', { qos: 1 });
    app.on('message', (_topic, payload) => received.push(payload.toString()));
  });

  afterAll(async () => {
    for (const client of clients) client.end(true);
    for (const child of processes.reverse()) await child.stop();
    await proxy.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps its devices, takes a new log level, and dials the next tunnel with a rotated certificate', async () => {
    const writeAgentConfig = (logLevel: string): void =>
      writeFileSync(
        file('agent.yaml'),
        [
          `tls: { ca: ${file('ca.pem')}, cert: ${file('agent.pem')}, key: ${file('agent-key.pem')} }`,
          `hubs: ['127.0.0.1:${proxy.port}']`,
          'backoffInitialMs: 50',
          `logLevel: ${logLevel}`,
          '',
        ].join('\n'),
      );
    writeAgentConfig('info');
    const devicePort = await freePort();
    const agent = new CliProcess('dist/edge-agent/cli.js', ['--config', file('agent.yaml'), '--host', '127.0.0.1', '--port', String(devicePort)]);
    processes.push(agent);
    await agent.waitForLog('tunnel up', 2);
    const device = await track(connectClient(devicePort, { clientId: 'steady-1' }));
    let deviceClosed = false;
    device.on('close', () => (deviceClosed = true));

    writeAgentConfig('debug');
    await sighup(agent);
    expect(agent.logged(RELOADED).at(-1)?.changed).toEqual(['logLevel']);
    await roundTrip(device, 'after log level');
    // A takeover is logged at debug only: the new level reached the loggers made before the reload.
    await track(connectClient(devicePort, { clientId: 'taken-over' }));
    await track(connectClient(devicePort, { clientId: 'taken-over' }));
    await agent.waitForLog('hub closed the device session');

    // Rotate onto a new CA: once the hub trusts only it, a tunnel comes up only with the new agent certificate.
    const newCa = createCertificateAuthority({ commonName: 'rotated CA' });
    const rotated = issueCertificate(newCa, { commonName: 'agent-1', role: 'client' });
    writeFileSync(file('agent.pem'), rotated.certPem);
    writeFileSync(file('agent-key.pem'), rotated.keyPem);
    await sighup(agent);
    expect(agent.logged(RELOADED).at(-1)?.changed).toEqual(['tls']);
    writeFileSync(file('hub-agents-ca.pem'), newCa.certPem);
    writeFileSync(file('hub.yaml'), `tls: { ca: ${file('hub-agents-ca.pem')}, cert: ${file('hub.pem')}, key: ${file('hub-key.pem')} }\n`);
    await sighup(hub);
    await roundTrip(device, 'after rotation');

    const tunnelsUp = hub.logged('agent tunnel up').length;
    expect(proxy.breakOne(0)).toBe('killed');
    await hub.waitForLog('agent tunnel up', tunnelsUp + 1);
    expect(hub.logged('tunnel TLS handshake refused')).toHaveLength(0);
    await roundTrip(device, 'after the new tunnel');
    expect(deviceClosed).toBe(false);
    expect(agent.running).toBe(true);
    await agent.stop();
  });

  it('with --workers, the primary passes SIGHUP on to every worker and the devices keep working', async () => {
    // The first test left the hub trusting only the rotated CA; the dev PKI agent needs the original one back.
    writeFileSync(file('hub.yaml'), `tls: { ca: ${file('ca.pem')}, cert: ${file('hub.pem')}, key: ${file('hub-key.pem')} }\n`);
    await sighup(hub);
    const devicePort = await freePort();
    const agent = new CliProcess('dist/edge-agent/cli.js', [
      '--dev-pki', file('pki'), '--hub', `127.0.0.1:${proxy.port}`, '--host', '127.0.0.1', '--port', String(devicePort),
      '--workers', '2', '--tunnels', '1',
    ]);
    processes.push(agent);
    await agent.waitForLog('agent listening', 2);
    await agent.waitForLog('tunnel up', 2);
    const devices = await Promise.all(Array.from({ length: 6 }, (_, i) => track(connectClient(devicePort, { clientId: `worker-dev-${i}` }))));

    await sighup(agent, 2);
    expect(agent.logged('reload passed on to the workers').at(-1)?.workers).toBe(2);
    const reloadedPids = new Set(agent.logged(RELOADED).map((line) => line.pid));
    expect(reloadedPids.size).toBe(2);
    await Promise.all(devices.map((device, i) => roundTrip(device, `worker device ${i}`)));
    expect(agent.logged('agent worker died')).toHaveLength(0);
    expect(agent.running).toBe(true);
  });
});
