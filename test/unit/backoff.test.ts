import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ReconnectPolicy } from '../../shared/backoff.js';

/** A jitter source that replays `values` in turn. */
function sequence(...values: number[]): () => number {
  let next = 0;
  return () => values[next++ % values.length];
}

describe('when the agent dials a hub again', () => {
  const options = { initialMs: 100, maxMs: 5000, probeMs: 200 };

  it('probes an unreachable hub at a short interval that never grows, whatever the jitter', () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 200 }), (jitter) => {
        const policy = new ReconnectPolicy({ ...options, random: sequence(...jitter) });
        for (let i = 0; i < jitter.length; i++) {
          const delay = policy.delayMs('unreachable');
          expect(delay).toBeGreaterThanOrEqual(100);
          expect(delay).toBeLessThan(300);
        }
      }),
    );
  });

  it('spreads probes over the interval with the jitter source', () => {
    const policy = new ReconnectPolicy({ ...options, random: sequence(0, 0.5, 0.999) });
    expect([policy.delayMs('unreachable'), policy.delayMs('unreachable'), policy.delayMs('unreachable')]).toEqual([100, 200, 299]);
  });

  it('backs off exponentially from a hub that refuses, up to the maximum', () => {
    const policy = new ReconnectPolicy({ ...options, random: () => 0.999 });
    const delays = Array.from({ length: 8 }, () => policy.delayMs('refused'));
    expect(delays).toEqual([99, 199, 399, 799, 1598, 3196, 4995, 4995]);
  });

  it('keeps the refusal backoff where it was while the hub is out of reach, and starts over once a tunnel is up', () => {
    const policy = new ReconnectPolicy({ ...options, random: () => 0.999 });
    expect([policy.delayMs('refused'), policy.delayMs('refused')]).toEqual([99, 199]);
    for (let i = 0; i < 50; i++) policy.delayMs('unreachable');
    expect(policy.delayMs('refused')).toBe(399);
    policy.reset();
    expect(policy.delayMs('refused')).toBe(99);
  });
});
