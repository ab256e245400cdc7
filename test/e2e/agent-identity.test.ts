import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { agentMetrics, agentReadiness } from '../../edge-agent/agent-metrics.js';
import { createCertificateAuthority, issueCertificate } from '../../shared/pki.js';
import { agentOptions, connectClient, eventually, hubOptions, removePki, testPki } from '../support/chain.js';
import { HoldRelay } from '../support/hold-relay.js';

/** A second process holding agent-1's certificate, started with another --agent-id. */
async function impostor(hubPort: number, backoff = { backoffInitialMs: 50, backoffMaxMs: 200 }): Promise<EdgeAgent> {
  const { pki } = await testPki();
  return EdgeAgent.start({ ...agentOptions(pki, hubPort, backoff), agentId: 'agent-1-copy' });
}

describe('one certificate, two agent processes', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
    await removePki();
  });

  it('refuses the second process with a reason both sides show, and leaves the running agent alone', async () => {
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki));
    cleanups.push(() => hub.close());
    const real = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port));
    cleanups.push(() => real.close());
    await real.pool.waitForTunnels(2);
    const device = await connectClient(real.deviceAddress.port, { clientId: 'steady-sensor' });
    cleanups.push(() => device.endAsync(true));
    const app = await connectClient(hub.appAddress.port, { clientId: 'steady-watcher' });
    cleanups.push(() => app.endAsync(true));
    await app.subscribeAsync('steady/#', { qos: 1 });

    const copy = await impostor(hub.tunnelAddress.port);
    let copyClosed = false;
    cleanups.push(async () => copyClosed || copy.close());
    await eventually(() => copy.pool.refusals().length === copy.pool.size, 5000, 'both tunnels of the copy refused');
    expect(copy.pool.readyCount).toBe(0);
    const [refusal] = copy.pool.refusals();
    expect(refusal.code).toBe('identity-in-use');
    expect(refusal.reason).toMatch(/agent agent-1 worker 0 is already connected as another instance/);
    const readiness = agentReadiness(copy);
    expect(readiness.ready).toBe(false);
    expect(readiness.refusals).toEqual(copy.pool.refusals());
    expect(readiness.reasons).toContainEqual(expect.stringMatching(/refused tunnel 0 \(identity-in-use\): agent agent-1 worker 0 is already connected/));
    const metrics = await agentMetrics(copy).metrics();
    expect(metrics).toMatch(/edgemux_agent_tunnel_refusals_total\{code="identity-in-use"\} [1-9]/);
    expect(metrics).toMatch(/edgemux_agent_tunnels_refused 2/);
    expect(hub.stats().refusedTunnels).toBeGreaterThanOrEqual(2);

    // The copy keeps redialling (as the reported one did for 3 s); none of its dials changes anything for the running agent.
    await eventually(() => hub.stats().refusedTunnels >= 10, 10_000, 'the copy refused again and again');
    await copy.close();
    copyClosed = true;
    expect(real.pool.readyCount).toBe(2);
    expect(real.stats().devices).toBe(1);
    expect(hub.stats().sessions).toBe(1);
    const got = new Promise<string>((resolve) => app.once('message', (_topic, payload) => resolve(payload.toString())));
    await device.publishAsync('steady/1', 'still here', { qos: 1 });
    expect(await got).toBe('still here');
  });

  it('lets a new instance in once the old one is gone, and the old one back once the new one leaves', async () => {
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki));
    cleanups.push(() => hub.close());
    const relay = await HoldRelay.start(hub.tunnelAddress.port);
    cleanups.push(() => relay.close());
    // The first process sits behind a path the test can cut at the hub's end.
    const first = await EdgeAgent.start(
      agentOptions(pki, relay.port, { heartbeatMs: 200, deadAfterMs: 1000, backoffInitialMs: 50, backoffMaxMs: 200 }),
    );
    cleanups.push(() => first.close());
    await first.pool.waitForTunnels(2);

    for (const tunnel of first.pool.liveTunnels()) relay.sever(relay.byAgentPort((tunnel.socket as Socket).localPort));
    await eventually(() => hub.stats().tunnels === 0, 5000, 'the hub to see the first process gone');
    const second = await impostor(hub.tunnelAddress.port);
    let secondClosed = false;
    cleanups.push(async () => secondClosed || second.close());
    await second.pool.waitForTunnels(2);

    // The first process finds its tunnels dead, redials and is refused while the second holds the identity.
    // Each of its tunnels finds the path dead on its own heartbeat, so the second refusal may trail the first.
    await eventually(() => first.pool.refusals().length > 0 && first.pool.readyCount === 0, 5000, 'the first process refused on every tunnel');
    expect(first.pool.readyCount).toBe(0);

    await second.close();
    secondClosed = true;
    await first.pool.waitForTunnels(2, 5000);
    expect(first.pool.refusals()).toEqual([]);
    expect(agentReadiness(first)).toMatchObject({ ready: true, reasons: [] });
  });

  it('records a certificate refused in place of HELLO as a refusal too, with the failed check', async () => {
    const { pki } = await testPki();
    const hub = await CloudHub.start(hubOptions(pki));
    cleanups.push(() => hub.close());
    const foreign = issueCertificate(createCertificateAuthority({ commonName: 'foreign CA' }), { commonName: 'agent-1', role: 'client' });
    const stranger = await EdgeAgent.start({ ...agentOptions(pki, hub.tunnelAddress.port), tls: { ca: pki.ca, cert: foreign.certPem, key: foreign.keyPem } });
    cleanups.push(() => stranger.close());

    await eventually(() => stranger.pool.refusals().length === stranger.pool.size, 5000, 'both tunnels refused');
    const [refusal] = stranger.pool.refusals();
    expect(refusal).toMatchObject({ code: 'certificate-refused', problem: 'unknown-ca' });
    const readiness = agentReadiness(stranger);
    expect(readiness.ready).toBe(false);
    expect(readiness.refusals).toEqual(stranger.pool.refusals());
    expect(readiness.reasons.join('\n')).toMatch(/certificate-refused: unknown-ca/);
    expect(await agentMetrics(stranger).metrics()).toMatch(/edgemux_agent_tunnel_refusals_total\{code="certificate-refused"\} [1-9]/);
    expect(hub.stats().tunnels).toBe(0);
  });
});
