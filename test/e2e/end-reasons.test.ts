import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { EndCode, EndCounts } from '../../shared/end-reasons.js';
import { type Chain, eventually, removePki, startChain } from '../support/chain.js';

function count(counts: EndCounts, code: EndCode): number {
  return new Map(counts.entries()).get(code) ?? 0;
}

describe('end reasons across the tunnel', () => {
  let chain: Chain | null = null;
  afterEach(async () => {
    await chain?.close();
    chain = null;
  });
  afterAll(removePki);

  it('name the same end on both sides: a DISCONNECT, a lost device, a takeover by the broker', async () => {
    chain = await startChain();
    const { agent, hub } = chain;

    const polite = await chain.device({ clientId: 'polite' });
    await polite.endAsync();
    await eventually(() => count(agent.streamEnds, 'device-disconnected') === 1 && count(hub.streamEnds, 'device-disconnected') === 1, 5000, 'a disconnect on both sides');

    const lost = await chain.device({ clientId: 'lost' });
    lost.stream.destroy();
    await eventually(() => count(agent.streamEnds, 'device-lost') === 1 && count(hub.streamEnds, 'device-lost') === 1, 5000, 'a lost device on both sides');

    await chain.device({ clientId: 'taken' });
    await chain.device({ clientId: 'taken' });
    await eventually(() => count(agent.streamEnds, 'broker-closed') === 1 && count(hub.streamEnds, 'broker-closed') === 1, 5000, 'a takeover on both sides');
    expect(count(agent.streamEnds, 'unspecified') + count(hub.streamEnds, 'unspecified')).toBe(0);
  });
});
