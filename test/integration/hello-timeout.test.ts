import { afterEach, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';
import { hubOptions, removePki, testPki } from '../support/chain.js';
import { duplexPair } from '../support/duplex-pair.js';
import { ManualClock } from '../support/manual-clock.js';

describe('a tunnel without HELLO, on the injected clock (docs/protocol.md 4)', () => {
  let hub: CloudHub | null = null;
  afterEach(async () => {
    await hub?.close();
    hub = null;
    await removePki();
  });

  it('is closed by the hub once helloTimeoutMs has passed, and not before', async () => {
    const clock = new ManualClock();
    const { pki } = await testPki();
    // A heartbeat longer than the HELLO timeout keeps the dead-peer rule out of the way.
    hub = await CloudHub.start(hubOptions(pki, { clock, heartbeatMs: 60_000, deadAfterMs: 120_000 }));
    const [hubEnd, agentEnd] = duplexPair();
    let closed = false;
    agentEnd.on('close', () => (closed = true));
    agentEnd.on('end', () => (closed = true));
    agentEnd.resume();
    hub.acceptAuthenticatedConnection(hubEnd, { agentId: 'agent-1' });
    expect(hub.stats().unauthenticated).toBe(1);

    clock.advance(TUNNEL_DEFAULTS.helloTimeoutMs - 1);
    await new Promise((resolve) => setImmediate(resolve));
    expect(closed).toBe(false);
    expect(hub.stats().unauthenticated).toBe(1);

    clock.advance(1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(closed).toBe(true);
    expect(hub.stats().unauthenticated).toBe(0);
  });
});
