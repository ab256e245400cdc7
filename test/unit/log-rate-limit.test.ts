import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { RateLimitedLog } from '../../shared/log-rate-limit.js';

function capture(): { lines: Record<string, unknown>[]; log: pino.Logger } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { lines, log: pino({ level: 'info' }, sink) };
}

describe('RateLimitedLog', () => {
  it('logs a burst, then counts the rest into one summary line a second', async () => {
    const { lines, log } = capture();
    let now = 0;
    const timers: (() => void)[] = [];
    const limited = new RateLimitedLog(log, {
      msg: 'device connected',
      plural: 'device connects',
      perSecond: 10,
      burst: 5,
      now: () => now,
      schedule: (fn) => timers.push(fn),
    });
    for (let i = 0; i < 1000; i++) limited.info({ clientId: `d-${i}` });
    expect(timers).toHaveLength(1);
    now = 1000;
    timers.shift()!();
    // Refilled by one second's worth of tokens.
    for (let i = 0; i < 20; i++) limited.info({ clientId: `e-${i}` });
    now = 2000;
    timers.shift()!();
    await new Promise((resolve) => setImmediate(resolve));

    const messages = lines.map((line) => line.msg);
    expect(messages.slice(0, 5)).toEqual(Array(5).fill('device connected'));
    expect(lines[5]).toMatchObject({ msg: '995 more device connects in the last second', suppressed: 995, event: 'device connected' });
    expect(messages.slice(6, 11)).toEqual(Array(5).fill('device connected'));
    expect(lines[11]).toMatchObject({ msg: '15 more device connects in the last second', suppressed: 15 });
    expect(lines).toHaveLength(12);
    expect(lines[0]).toMatchObject({ clientId: 'd-0' });
  });

  it('keeps logging every event at a pace within the rate', () => {
    const { lines, log } = capture();
    let now = 0;
    const limited = new RateLimitedLog(log, { msg: 'm', plural: 'ms', perSecond: 10, burst: 1, now: () => now, schedule: () => {} });
    for (let i = 0; i < 50; i++) {
      limited.info({ i });
      now += 100;
    }
    return new Promise<void>((resolve) =>
      setImmediate(() => {
        expect(lines).toHaveLength(50);
        resolve();
      }),
    );
  });
});
