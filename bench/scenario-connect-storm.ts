/**
 * d. Connect storm: N devices start connecting at the same instant (no
 *    concurrency limit). Connects per second over the whole storm and the
 *    slowest device's wait (until CONNACK and SUBACK of its command topic).
 *    Fresh processes every repetition.
 */
import { type Harness, Loadgen, QUIET_PCT, waitForQuiet } from './harness.js';
import type { Plan } from './plan.js';
import { cpuMs, sleep, tcpExtCounters } from './procs.js';
import { alternate, type Variant } from './scenario-throughput.js';
import { HOST, startAedes, startChain, startChainToMosquitto, startMosquittoBroker } from './systems.js';

export const STORM = 'd connect storm';

export async function connectStormScenario(h: Harness, plan: Plan): Promise<void> {
  const n = plan.storm.devices;
  const pairs: Variant[][] = [
    [
      { name: 'aedes direct', start: () => startAedes(h) },
      { name: 'chain', start: () => startChain(h) },
    ],
  ];
  if (plan.storm.mosquitto) {
    pairs.push([
      { name: 'mosquitto direct', start: () => startMosquittoBroker(h) },
      { name: 'chain to mosquitto', start: () => startChainToMosquitto(h) },
    ]);
  }
  for (const variants of pairs) {
    for (let rep = 0; rep < plan.reps; rep++) {
      await alternate(
        h,
        STORM,
        rep % 2 === 0 ? variants : [...variants].reverse(),
        1,
        async (variant, system) => {
          await sleep(300);
          const quiet = await waitForQuiet(h, Object.values(system.pids));
          if (quiet.lastPct >= QUIET_PCT) h.results.note(STORM, `${variant} rep ${rep + 1}: machine busy (${quiet.lastPct}% of a core besides this run) when the storm started`);
          const launched = await Loadgen.launch(
            h,
            'loadgen',
            {
              host: HOST,
              port: system.devicePort,
              devices: n,
              clientIdPrefix: h.prefix('storm'),
              ratePerDevice: 0,
              keepaliveSeconds: 60,
              sourceAddresses: h.addresses.take(n),
              connectConcurrency: n,
              connectTimeoutMs: 60_000,
            },
            { pollMs: 5 },
            90_000,
          );
          const pids: Record<string, number> = { ...system.pids, loadgen: launched.proc.pid };
          const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuMs(pid)]));
          const tcp0 = tcpExtCounters();
          try {
            const r = await launched.ramp;
            const tcp1 = tcpExtCounters();
            const cpuSec = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, Math.round(cpuMs(pid) - cpu0[k]) / 1000]));
            const overflows = (tcp1.ListenOverflows ?? 0) - (tcp0.ListenOverflows ?? 0);
            const synRetrans = (tcp1.TCPSynRetrans ?? 0) - (tcp0.TCPSynRetrans ?? 0);
            const perSec = (r.connected * 1000) / r.t100Ms;
            const name = `${n} dev at once`;
            h.results.add(STORM, name, variant, 'connects/s', '1/s', 'higher', perSec);
            h.results.add(STORM, name, variant, 'slowest wait', 'ms', 'lower', r.t100Ms);
            h.results.add(STORM, name, variant, 'half connected after', 'ms', 'lower', r.t50Ms);
            h.results.add(STORM, name, variant, 'failed', 'devices', 'lower', r.failures);
            h.results.add(STORM, name, variant, 'listen queue overflows', 'SYNs', 'lower', overflows);
            h.results.detail(STORM, { variant, rep, ...r, cpuSeconds: cpuSec, listenOverflows: overflows, synRetransmits: synRetrans });
            h.progress(
              `${STORM} ${n} ${variant} rep ${rep + 1}: ${Math.round(perSec)} connects/s, 50% after ${Math.round(r.t50Ms)} ms, 99% ${Math.round(r.t99Ms)} ms, slowest ${Math.round(r.t100Ms)} ms, ${r.failures} failed ${JSON.stringify(r.failureReasons)}; listen overflows ${overflows}, SYN retransmits ${synRetrans}; cpu s ${JSON.stringify(cpuSec)}`,
            );
          } finally {
            await launched.proc.call('stop', {}, 30_000).catch(() => undefined);
            await launched.proc.stop();
          }
        },
        Math.max(8000, n * 1.5),
      );
    }
  }
}
