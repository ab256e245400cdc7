/**
 * e. WAN cost, counted by byte-counting relays on the WAN leg:
 *    chain: agent ══ relay ══ hub (the tunnel TLS connections);
 *    direct: devices → tls-wrap (one mutual-TLS 1.3 connection per device,
 *    standing in for devices that speak MQTT over TLS) ══ relay ══ node:tls
 *    server → aedes.
 *    Bytes per idle device per hour (chain: beyond the tunnels' shared
 *    heartbeat, which is measured with no device connected) and bytes per
 *    1000 QoS 1 messages of 64 bytes. TCP payload bytes: TLS records
 *    included, TCP/IP headers not.
 */
import type { AedesStats } from './aedes-server.js';
import { guarded, type Harness, Loadgen, Subscriber, waitUntil } from './harness.js';
import type { Plan } from './plan.js';
import { median } from './results-table.js';
import type { RelayCounters } from './relay.js';
import { type RpcProcess, sleep } from './procs.js';
import { HOST, type System, startAedes, startChain } from './systems.js';

export const WAN = 'e wan cost';
const HOUR_MS = 3_600_000;
/** A device that pings once a minute, the common MQTT keepalive. */
const PINGS_PER_HOUR_AT_60S = 60;

interface Side {
  name: string;
  system: System;
  relay: RpcProcess;
  /** Where devices connect: the agent, or the TLS wrapper in front of the direct broker. */
  devicePort: number;
  aedes: RpcProcess | null;
}

async function bytes(side: Side): Promise<RelayCounters> {
  return side.relay.call<RelayCounters>('counters');
}

async function pings(side: Side): Promise<number> {
  return side.aedes === null ? 0 : (await side.aedes.call<AedesStats>('stats')).pings;
}

async function startSides(h: Harness): Promise<{ sides: Side[]; close: () => Promise<void> }> {
  const toClose: (() => Promise<unknown>)[] = [];
  try {
    const chainRelay = await h.registry.forkRpc('relay-chain', new URL('./relay.js', import.meta.url));
    toClose.push(() => chainRelay.stop());
    const chain = await startChain(h, {
      tunnelVia: (tunnelPort) => chainRelay.call<number>('listen', { host: HOST, targetHost: HOST, targetPort: tunnelPort }),
    });
    toClose.push(() => chain.close());

    const aedes = await startAedes(h, { tls: true });
    toClose.push(() => aedes.close());
    const directRelay = await h.registry.forkRpc('relay-direct', new URL('./relay.js', import.meta.url));
    toClose.push(() => directRelay.stop());
    const relayPort = await directRelay.call<number>('listen', { host: HOST, targetHost: HOST, targetPort: aedes.tlsPort });
    const wrap = await h.registry.forkRpc('tls-wrap', new URL('./tls-wrap.js', import.meta.url));
    toClose.push(() => wrap.stop());
    const agent = h.pki.agents['agent-1'];
    const wrapPort = await wrap.call<number>('listen', { host: HOST, targetHost: HOST, targetPort: relayPort, ca: h.pki.ca, cert: agent.cert, key: agent.key });
    return {
      sides: [
        { name: 'chain (tunnel)', system: chain, relay: chainRelay, devicePort: chain.devicePort, aedes: null },
        { name: 'direct MQTT/TLS', system: aedes, relay: directRelay, devicePort: wrapPort, aedes: aedes.procs.aedes as RpcProcess },
      ],
      close: async () => {
        for (const close of toClose.reverse()) await close();
      },
    };
  } catch (err) {
    for (const close of toClose.reverse()) await close();
    throw err;
  }
}

export async function wanScenario(h: Harness, plan: Plan): Promise<void> {
  const w = plan.wan;
  const needMs = (w.windows + (plan.mode === 'quick' ? 1 : w.windows)) * w.windowMs + 15_000;
  if (!h.budget.allows(needMs)) {
    h.results.note(WAN, `not run: time budget (needs about ${Math.round(needMs / 1000)} s)`);
    return;
  }
  const { sides, close } = await startSides(h);
  const [chain, direct] = sides;
  try {
    const idleCase = `${w.idleDevices} idle dev, keepalive ${w.keepaliveSeconds}s`;
    // 1. The tunnels' own heartbeat, with no device behind them; meanwhile the
    //    direct devices connect (their bytes go through the other relay).
    const startFleet = (side: Side): Promise<Loadgen> =>
      Loadgen.start(h, `loadgen-${side.aedes ? 'direct' : 'chain'}`, {
        host: HOST,
        port: side.devicePort,
        devices: w.idleDevices,
        clientIdPrefix: h.prefix('wan'),
        ratePerDevice: 0,
        keepaliveSeconds: w.keepaliveSeconds,
        sourceAddresses: h.addresses.take(w.idleDevices),
        connectConcurrency: 200,
        connectTimeoutMs: 30_000,
      });
    const heartbeat: number[] = [];
    const heartbeatWindows = plan.mode === 'quick' ? 1 : w.windows;
    await sleep(500);
    const directFleet = startFleet(direct);
    directFleet.catch(() => undefined);
    for (let i = 0; i < heartbeatWindows; i++) {
      const b0 = await bytes(chain);
      await sleep(w.windowMs);
      const b1 = await bytes(chain);
      heartbeat.push(b1.up + b1.down - (b0.up + b0.down));
    }
    const heartbeatBytes = median(heartbeat);
    h.results.add(WAN, 'no devices', chain.name, 'tunnel heartbeat per hour (whole site)', 'B/h', 'lower', (heartbeatBytes * HOUR_MS) / w.windowMs);
    h.progress(`${WAN} heartbeat alone: ${heartbeat.join(', ')} bytes per ${w.windowMs} ms`);

    // 2. Idle devices on both sides.
    const fleets = await Promise.allSettled([startFleet(chain), directFleet]).then((settled) => {
      const ok = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      const failed = settled.find((r) => r.status === 'rejected');
      if (failed !== undefined) {
        void Promise.all(ok.map((f) => f.stop()));
        throw (failed as PromiseRejectedResult).reason;
      }
      return ok;
    });
    try {
      for (const f of fleets) if (f.ramp.connected < w.idleDevices) throw new Error(`only ${f.ramp.connected} of ${w.idleDevices} devices connected: ${JSON.stringify(f.ramp.failureReasons)}`);
      // Stream ACKs of the connects go out within 50 ms; 1 s leaves nothing of the ramp in the windows.
      await sleep(1000);
      for (let i = 0; i < w.windows; i++) {
        const c0 = await Promise.all(sides.map(bytes));
        const p0 = await pings(direct);
        await sleep(w.windowMs);
        const c1 = await Promise.all(sides.map(bytes));
        const p1 = await pings(direct);
        const [chainBytes, directBytes] = [0, 1].map((k) => c1[k].up + c1[k].down - (c0[k].up + c0[k].down));
        const perHour = (b: number): number => (b * HOUR_MS) / w.windowMs / w.idleDevices;
        h.results.add(WAN, idleCase, chain.name, 'bytes per idle device-hour beyond heartbeat', 'B', 'lower', perHour(chainBytes - heartbeatBytes));
        h.results.add(WAN, idleCase, chain.name, 'bytes per idle device-hour incl. heartbeat', 'B', 'lower', perHour(chainBytes));
        h.results.add(WAN, idleCase, direct.name, `bytes per idle device-hour at keepalive ${w.keepaliveSeconds}s`, 'B', 'lower', perHour(directBytes));
        const perExchange = p1 > p0 ? directBytes / (p1 - p0) : NaN;
        h.results.add(WAN, idleCase, direct.name, 'bytes per PINGREQ/PINGRESP', 'B', 'none', perExchange);
        h.results.add(WAN, idleCase, direct.name, 'bytes per idle device-hour at keepalive 60s', 'B', 'lower', perExchange * PINGS_PER_HOUR_AT_60S);
        h.results.detail(WAN, { window: i, windowMs: w.windowMs, chainBytes, directBytes, heartbeatBytes, directPings: p1 - p0 });
        h.progress(`${WAN} idle window ${i + 1}: chain ${chainBytes} B (heartbeat alone ${heartbeatBytes} B), direct ${directBytes} B over ${p1 - p0} pings`);
      }
      for (const side of sides) {
        const c = await bytes(side);
        h.results.add(WAN, idleCase, side.name, 'WAN connections', 'conns', 'lower', c.open);
      }
    } finally {
      await Promise.all(fleets.map((f) => f.stop()));
    }

    // 3. Messages: QoS 1, 64-byte payloads; devices held until counting starts, so their connects are not counted.
    const msgCase = `qos1 64 B from ${w.messageDevices} dev`;
    for (let rep = 0; rep < plan.reps; rep++) {
      // Both sides at once: each relay counts only its own side.
      await Promise.all(
        sides.map((side) =>
          guarded(h, WAN, `${side.name} messages rep ${rep + 1}`, async () => {
            const cost = await messageCost(h, side, w.messageDevices, w.messages, side === chain ? heartbeatBytes / w.windowMs : 0);
            h.results.add(WAN, msgCase, side.name, 'bytes per 1000 msgs', 'B', 'lower', cost.total);
            h.results.add(WAN, msgCase, side.name, 'bytes per 1000 msgs upstream', 'B', 'lower', cost.up);
            h.progress(`${WAN} ${msgCase} ${side.name} rep ${rep + 1}: ${Math.round(cost.total)} B per 1000 msgs (${Math.round(cost.up)} up)`);
          }),
        ),
      );
    }
  } finally {
    await close();
  }
}

async function messageCost(h: Harness, side: Side, devices: number, messages: number, heartbeatPerMs: number): Promise<{ total: number; up: number }> {
  const subscriber = await Subscriber.start(h, side.system.appPort, 1);
  const durationS = 1;
  const loadgen = await Loadgen.start(
    h,
    'loadgen',
    {
      host: HOST,
      port: side.devicePort,
      devices,
      clientIdPrefix: h.prefix('wanmsg'),
      ratePerDevice: messages / devices / durationS,
      qos: 1,
      payloadSize: 64,
      keepaliveSeconds: 60,
      sourceAddresses: h.addresses.take(devices),
      connectConcurrency: 100,
    },
    { hold: true },
  );
  try {
    await sleep(500);
    const c0 = await bytes(side);
    const t0 = performance.now();
    await loadgen.release();
    await waitUntil(async () => (await loadgen.stats()).sent >= messages, 20_000);
    await loadgen.pause();
    const done = await waitUntil(async () => {
      const [s, r] = await Promise.all([loadgen.stats(), subscriber.read()]);
      return s.acked >= s.sent && r.total >= s.sent;
    }, 15_000);
    if (!done) throw new Error('messages were not all acknowledged and delivered within 15 s');
    // Let the tunnels' delayed stream ACKs (50 ms) go out.
    await sleep(300);
    const c1 = await bytes(side);
    const elapsed = performance.now() - t0;
    const sent = (await loadgen.stats()).sent;
    const up = c1.up - c0.up;
    const total = c1.up + c1.down - (c0.up + c0.down) - heartbeatPerMs * elapsed;
    return { total: (total / sent) * 1000, up: (up / sent) * 1000 };
  } finally {
    await loadgen.stop();
    await subscriber.stop();
  }
}
