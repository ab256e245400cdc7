import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { type Chain, connectClient, eventually, removePki, startChain } from '../support/chain.js';

type Line = Record<string, unknown>;

function capturingLogger(): { lines: Line[]; log: pino.Logger } {
  const lines: Line[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Line);
      done();
    },
  });
  return { lines, log: pino({ level: 'info' }, sink) };
}

describe('device connect and disconnect logs', () => {
  let chain: Chain | null = null;
  afterEach(async () => {
    await chain?.close();
    chain = null;
  });
  afterAll(removePki);

  it('logs who connected and who left and why, at info, with agent and client ID', async () => {
    const { lines, log } = capturingLogger();
    chain = await startChain({ hub: { log } });
    const polite = await chain.device({ clientId: 'polite' });
    const rude = await connectClient(chain.devicePort, { clientId: 'rude' });
    await polite.endAsync();
    rude.stream.destroy();
    await eventually(() => lines.filter((line) => line.msg === 'device disconnected').length === 2, 5000, 'two disconnect lines');

    const connected = lines.filter((line) => line.msg === 'device connected');
    expect(connected.map((line) => line.clientId).sort()).toEqual(['polite', 'rude']);
    expect(connected[0]).toMatchObject({ level: 30, agentId: 'agent-1', route: 'embedded', backend: 'embedded' });
    const disconnected = Object.fromEntries(lines.filter((line) => line.msg === 'device disconnected').map((line) => [line.clientId, line]));
    expect(disconnected.polite).toMatchObject({ level: 30, agentId: 'agent-1', reason: 'device-disconnected', detail: 'device sent DISCONNECT' });
    expect(disconnected.rude).toMatchObject({ level: 30, agentId: 'agent-1', reason: 'device-lost', detail: 'device closed the connection' });
  });

  it('a connect storm writes a burst of lines and then one summary line, not a line per device', async () => {
    const { lines, log } = capturingLogger();
    chain = await startChain({ hub: { log, deviceLogLimit: { perSecond: 1, burst: 5 } } });
    const storm = 60;
    const devices = await Promise.all(Array.from({ length: storm }, (_, i) => chain!.device({ clientId: `storm-${i}` })));
    expect(devices).toHaveLength(storm);
    await eventually(() => lines.some((line) => typeof line.suppressed === 'number'), 3000, 'the summary line');

    const perDevice = lines.filter((line) => line.msg === 'device connected');
    const summary = lines.find((line) => line.event === 'device connected')!;
    expect(perDevice.length).toBeGreaterThanOrEqual(5);
    expect(perDevice.length).toBeLessThanOrEqual(7);
    expect(summary.suppressed).toBe(storm - perDevice.length);
    expect(summary.msg).toBe(`${storm - perDevice.length} more device connects in the last second`);
  });
});
