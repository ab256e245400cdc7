import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { parseProxyUrl } from '../../shared/http-proxy.js';
import { agentOptions, connectClient, eventually, hubOptions, removePki, testPki } from '../support/chain.js';
import { describeWithTinyproxy, Tinyproxy } from '../support/tinyproxy.js';

function nextMessage(client: MqttClient, topic: string): Promise<Buffer> {
  return new Promise((resolve) => {
    const onMessage = (received: string, payload: Buffer): void => {
      if (received !== topic) return;
      client.off('message', onMessage);
      resolve(payload);
    };
    client.on('message', onMessage);
  });
}

const PASSWORD = 'pr0xy-s3cret';

describeWithTinyproxy('tunnels through a real HTTP CONNECT proxy with basic authentication', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(removePki);

  async function start(proxyUrl: (proxy: Tinyproxy) => string, logLines: string[] = []): Promise<{ hub: CloudHub; agent: EdgeAgent; proxy: Tinyproxy }> {
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki));
    cleanups.push(() => hub.close());
    const proxy = await Tinyproxy.start({ user: 'site', password: PASSWORD, connectPorts: [hub.tunnelAddress.port] });
    cleanups.push(() => proxy.stop());
    const agent = await EdgeAgent.start(
      agentOptions(pki, hub.tunnelAddress.port, {
        transports: ['proxy'],
        proxy: parseProxyUrl(proxyUrl(proxy), 'proxy.url'),
        log: pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) }),
      }),
    );
    cleanups.push(() => agent.close());
    return { hub, agent, proxy };
  }

  it('carries QoS 1 both ways over tunnels the proxy opened', async () => {
    const logLines: string[] = [];
    const { hub, agent, proxy } = await start((p) => p.url('site', PASSWORD), logLines);
    await agent.pool.waitForTunnels(2);
    expect(agent.pool.tunnelsByTransport()).toEqual({ tls: 0, websocket: 0, proxy: 2 });
    await eventually(() => proxy.connects >= 2, 3000, 'tinyproxy to log both CONNECTs');

    const app = await connectClient(hub.appAddress.port, { clientId: 'proxy-app' });
    cleanups.push(() => app.endAsync(true));
    const device = await connectClient(agent.deviceAddress.port, { clientId: 'behind-proxy' });
    cleanups.push(() => device.endAsync(true));
    await app.subscribeAsync('up/#', { qos: 1 });
    await device.subscribeAsync('down/behind-proxy', { qos: 1 });
    const up = nextMessage(app, 'up/behind-proxy');
    await device.publishAsync('up/behind-proxy', 'through the proxy', { qos: 1 });
    expect((await up).toString()).toBe('through the proxy');
    const down = nextMessage(device, 'down/behind-proxy');
    await app.publishAsync('down/behind-proxy', 'and back', { qos: 1 });
    expect((await down).toString()).toBe('and back');

    expect(logLines.some((line) => line.includes('"transport":"proxy"') && line.includes('tunnel up'))).toBe(true);
    expect(logLines.join('\n')).not.toContain(PASSWORD);
  });

  it('does not come up with a wrong password, says why, and never logs the password', async () => {
    const logLines: string[] = [];
    const { agent } = await start((p) => p.url('site', 'wrong-password'), logLines);
    // tinyproxy answers a CONNECT without valid credentials with 401 where RFC 9110 §15.5.8 says 407: either is a refusal.
    await eventually(() => logLines.some((line) => /proxy refused CONNECT: 40[17]/.test(line)), 5000, 'the proxy refusal to be logged');
    expect(agent.pool.readyCount).toBe(0);
    const text = logLines.join('\n');
    expect(text).not.toContain('wrong-password');
    expect(text).not.toContain(Buffer.from('site:wrong-password').toString('base64'));
  });
});
