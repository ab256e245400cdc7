import os from 'node:os';
import { pino } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Chain, connectClient, removePki, startChain } from '../support/chain.js';

interface LogLine {
  msg: string;
  remote?: string;
  reason?: string;
}

/** Loopback is exempt from the limit, so the test connects from the machine's own network address. */
const external = Object.values(os.networkInterfaces())
  .flat()
  .find((info) => info !== undefined && info.family === 'IPv4' && !info.internal)?.address;

describe.skipIf(external === undefined)('the agent limits CONNECTs per second from one source address', () => {
  let chain: Chain;
  let logs: LogLine[];
  let now: number;
  beforeEach(async () => {
    now = 1_000_000;
    logs = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    chain = await startChain({ agent: { log, deviceHost: '0.0.0.0', connectsPerSecondPerAddress: 5, now: () => now } });
  });
  afterEach(async () => {
    await chain.close();
  });
  afterAll(removePki);

  async function attempt(host: string, clientId: string): Promise<number | 'connected'> {
    return connectClient(chain.devicePort, { host, clientId }).then(
      (client) => {
        client.end(true);
        return 'connected' as const;
      },
      (err: { code?: number }) => err.code ?? -1,
    );
  }

  it('refuses the excess with CONNACK server unavailable, logged once, and admits again once a second has passed; loopback is not limited', async () => {
    const results: (number | 'connected')[] = [];
    for (let i = 0; i < 8; i++) results.push(await attempt(external!, `dev-${i}`));
    // The limit's clock stands still: nothing refills however long the connects take.
    expect(results.slice(0, 5)).toEqual(Array(5).fill('connected'));
    expect(results.slice(5)).toEqual([3, 3, 3]);
    expect(chain.agent.stats().connectsRateLimited).toBe(3);
    const lines = logs.filter((line) => line.msg === 'device refused' && line.reason?.includes('connects per second'));
    expect(lines).toEqual([expect.objectContaining({ remote: external })]);

    expect(await attempt('127.0.0.1', 'dev-local')).toBe('connected');
    now += 1000;
    expect(await attempt(external!, 'dev-later')).toBe('connected');
  });
});
