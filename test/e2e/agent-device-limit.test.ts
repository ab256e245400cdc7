import { pino } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, connectClient, eventually, removePki, startChain } from '../support/chain.js';

interface LogLine {
  msg: string;
  agentId?: string;
  limit?: number;
}

describe('an agent holds at most maxDevicesPerAgent devices at the hub', () => {
  let chain: Chain;
  let logs: LogLine[];
  beforeEach(async () => {
    logs = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    chain = await startChain({ hub: { log, maxDevicesPerAgent: 3 } });
  });
  afterEach(async () => {
    await chain.close();
  });
  afterAll(removePki);

  async function refusalCode(clientId: string): Promise<number | undefined> {
    return connectClient(chain.devicePort, { clientId }).then(
      (client) => {
        client.end(true);
        return undefined;
      },
      (err: { code?: number }) => err.code,
    );
  }

  it('refuses the next one with CONNACK server unavailable, lets a device of its own take over, and admits again below the limit', async () => {
    const devices = [await chain.device({ clientId: 'dev-1' }), await chain.device({ clientId: 'dev-2' }), await chain.device({ clientId: 'dev-3' })];
    expect(await refusalCode('dev-4')).toBe(3);
    expect(await refusalCode('dev-5')).toBe(3);
    expect(chain.hub.stats().agentDeviceLimitRefused).toBe(2);
    expect(logs.filter((line) => line.msg === 'refusing new devices of this agent')).toEqual([
      expect.objectContaining({ agentId: 'agent-1', limit: 3 }),
    ]);

    // Taking over a session the agent already holds is no new device.
    const again = await chain.device({ clientId: 'dev-3' });
    await devices[0].endAsync();
    await eventually(() => chain.hub.stats().sessions === 3, 5000, 'dev-1 to leave');
    const fourth = await chain.device({ clientId: 'dev-4' });
    expect(fourth.connected).toBe(true);
    expect(again.connected).toBe(true);
  });
});
