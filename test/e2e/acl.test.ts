import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { AclFile } from '../../cloud-hub/acl-file.js';
import { type Chain, eventually, removePki, startChain } from '../support/chain.js';

/** The SUBACK's return codes, refusals included (MQTT.js rejects on any). */
async function subackCodes(client: MqttClient, topics: string | string[], qos: 0 | 1 | 2): Promise<number[]> {
  return client.subscribeAsync(topics, { qos }).then(
    (granted) => granted.map((grant) => grant.qos),
    (err: { packet?: { granted?: number[] } }) => {
      if (err.packet?.granted === undefined) throw err;
      return err.packet.granted;
    },
  );
}

describe('the ACL file is enforced on the embedded broker for devices and applications', () => {
  let chain: Chain;
  afterEach(async () => chain.close());
  afterAll(removePki);

  it('lets a device write its telemetry and read its commands, and nothing else', async () => {
    const acl = AclFile.parse(
      ['pattern write devices/%c/telemetry', 'pattern read devices/%c/commands', '', '# the dashboard', 'user app', 'topic readwrite #'].join('\n'),
    );
    chain = await startChain({ hub: { acl } });
    const app = await chain.app({ clientId: 'app-acl', username: 'app' });
    const seen: string[] = [];
    app.on('message', (topic) => seen.push(topic));
    expect(await subackCodes(app, 'devices/#', 1)).toEqual([1]);

    const device = await chain.device({ clientId: 'dev-a' });
    let closed = false;
    device.on('close', () => (closed = true));
    const commands: string[] = [];
    device.on('message', (topic) => commands.push(topic));

    // Acknowledged either way (MQTT 3.1.1 cannot refuse a PUBLISH), delivered only when allowed.
    await device.publishAsync('devices/dev-b/telemetry', 'spoofed', { qos: 1 });
    await device.publishAsync('devices/dev-a/telemetry', 'own', { qos: 1 });
    await eventually(() => seen.length >= 1, 5000, 'own telemetry at the app');
    expect(seen).toEqual(['devices/dev-a/telemetry']);

    expect(await subackCodes(device, ['devices/dev-b/commands', 'devices/dev-a/commands', 'devices/+/commands'], 1)).toEqual([128, 1, 128]);
    await app.publishAsync('devices/dev-b/commands', 'not for dev-a', { qos: 1 });
    await app.publishAsync('devices/dev-a/commands', 'reboot', { qos: 1 });
    await eventually(() => commands.length >= 1, 5000, 'own command at the device');
    expect(commands).toEqual(['devices/dev-a/commands']);
    expect(closed).toBe(false);

    const stats = chain.hub.stats();
    expect(stats.aclDenied.publish).toBe(1);
    expect(stats.aclDenied.subscribe).toBe(2);
    // The refusals are the ACL's alone: the subscription limits counted none.
    expect(stats.subscriptionsRefused).toBe(0);
  });

  it('answers 0x80 for a filter the ACL refuses (Paho interoperability subscribe_failure)', async () => {
    const acl = AclFile.parse('topic readwrite #\ntopic deny test/nosubscribe\n');
    chain = await startChain({ hub: { acl } });
    const app = await chain.app({ clientId: 'paho-interop' });
    expect(await subackCodes(app, ['test/nosubscribe', 'test/ok'], 2)).toEqual([128, 2]);
    // A device (anonymous too) is held to the same file.
    const device = await chain.device({ clientId: 'dev-paho' });
    expect(await subackCodes(device, 'test/nosubscribe', 2)).toEqual([128]);
    expect(chain.hub.stats().aclDenied.subscribe).toBe(2);
  });

  it('allows everything without an ACL file', async () => {
    chain = await startChain();
    const device = await chain.device({ clientId: 'dev-open' });
    expect(await subackCodes(device, ['test/nosubscribe', 'devices/+/commands'], 1)).toEqual([1, 1]);
    expect(chain.hub.stats().aclDenied).toEqual({ publish: 0, subscribe: 0, deliver: 0 });
  });
});
