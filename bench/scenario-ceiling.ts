/**
 * f. The ceiling for the chain's data path: DATA frames of 64-byte payloads
 *    over one TLS 1.3 connection (the tunnel without anything else), gathered
 *    writes against one write() per frame, and over plain TCP for reference.
 */
import type { CeilingSend } from './frame-ceiling.js';
import { guarded, type Harness, waitForQuiet } from './harness.js';
import type { Plan } from './plan.js';
import { sleep } from './procs.js';
import { HOST } from './systems.js';

export const CEILING = 'f ceiling';

const CASES: { name: string; tls: boolean; mode: CeilingSend['mode'] }[] = [
  { name: 'TLS 1.3, gathered writes (FrameWriter)', tls: true, mode: 'batched' },
  { name: 'TLS 1.3, one write per frame', tls: true, mode: 'per-frame' },
  { name: 'TCP, gathered writes (FrameWriter)', tls: false, mode: 'batched' },
];

export async function ceilingScenario(h: Harness, plan: Plan): Promise<void> {
  const c = plan.ceiling ?? { warmupMs: 500, windowMs: 2000 };
  const agent = h.pki.agents['agent-1'];
  for (let rep = 0; rep < plan.reps; rep++) {
    for (const k of rep % 2 === 0 ? CASES : [...CASES].reverse()) {
      await guarded(h, CEILING, `${k.name} rep ${rep + 1}`, async () => {
        const receiver = await h.registry.forkRpc('ceiling-receiver', new URL('./frame-ceiling.js', import.meta.url));
        const sender = await h.registry.forkRpc('ceiling-sender', new URL('./frame-ceiling.js', import.meta.url));
        try {
          await waitForQuiet(h, [receiver.pid, sender.pid]);
          const port = await receiver.call<number>('listen', { host: HOST, tls: k.tls ? { ca: h.pki.ca, cert: h.pki.hub.cert, key: h.pki.hub.key } : null });
          const running = sender.call<{ frames: number }>(
            'send',
            { host: HOST, port, tls: k.tls ? { ca: h.pki.ca, cert: agent.cert, key: agent.key } : null, mode: k.mode, durationMs: c.warmupMs + c.windowMs + 500, payloadBytes: 64 },
            c.warmupMs + c.windowMs + 30_000,
          );
          await sleep(c.warmupMs);
          const a = await receiver.call<{ frames: number; bytes: number }>('count');
          const t0 = performance.now();
          await sleep(c.windowMs);
          const b = await receiver.call<{ frames: number; bytes: number }>('count');
          const elapsed = performance.now() - t0;
          await running;
          const perSec = ((b.frames - a.frames) * 1000) / elapsed;
          h.results.add(CEILING, '64 B payload DATA frames', k.name, 'frames/s', '1/s', 'higher', perSec);
          h.results.add(CEILING, '64 B payload DATA frames', k.name, 'payload MB/s', 'MB/s', 'higher', (((b.bytes - a.bytes) * 1000) / elapsed) / 1e6);
          h.progress(`${CEILING} ${k.name} rep ${rep + 1}: ${(perSec / 1e6).toFixed(2)} M frames/s`);
        } finally {
          await sender.stop();
          await receiver.stop();
        }
      });
    }
  }
}
