/** Turns the collected measurements into the tables on stderr, the JSON file and the --quick line. */
import type { Plan } from './plan.js';
import { formatNumber, renderTable, type Results, resultsTable, type Summary } from './results-table.js';

export interface QuickLine {
  qos0Ratio: number | null;
  qos1Ratio: number | null;
  bridgeRatioQos1: number | null;
  p99AddedMs: number | null;
  agentKiBPerIdleDevice: number | null;
  hubKiBPerIdleDevice: number | null;
  connectsPerSec: number | null;
  wanBytesPerIdleDeviceHour: number | null;
}

function round(value: number | null, digits: number): number | null {
  if (value === null || !Number.isFinite(value)) return null;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export function report(results: Results, plan: Plan, meta: Record<string, unknown>): { table: string; quickLine: QuickLine; json: unknown } {
  const summaries = results.summaries();
  const find = (scenario: string, variant: string, metric: string, caseMatch: (c: string) => boolean = () => true): Summary | null =>
    summaries.find((s) => s.scenario === scenario && s.variant === variant && s.metric === metric && caseMatch(s.case)) ?? null;
  const med = (s: Summary | null): number | null => (s !== null && Number.isFinite(s.median) ? s.median : null);
  const ratio = (a: Summary | null, b: Summary | null): number | null => {
    const x = med(a);
    const y = med(b);
    return x !== null && y !== null && y !== 0 ? x / y : null;
  };

  // Ratios for every throughput case.
  const ratioRows: string[][] = [['case', 'chain', 'baseline', 'chain median', 'baseline median', 'ratio']];
  const cases = [...new Set(summaries.filter((s) => s.scenario === 'a throughput').map((s) => s.case))];
  const pairs: [string, string][] = [
    ['chain', 'aedes direct'],
    ['chain to mosquitto', 'mosquitto bridge'],
  ];
  const ratios: Record<string, number | null> = {};
  for (const c of cases) {
    for (const [chain, base] of pairs) {
      const a = find('a throughput', chain, 'delivered', (x) => x === c);
      const b = find('a throughput', base, 'delivered', (x) => x === c);
      if (a === null && b === null) continue;
      const r = ratio(a, b);
      ratios[`${chain} / ${base}, ${c}`] = r;
      ratioRows.push([c, chain, base, formatNumber(med(a) ?? NaN), formatNumber(med(b) ?? NaN), r === null ? 'n/a' : `${r.toFixed(2)}x`]);
    }
  }

  const headline = (qos: 0 | 1) => (x: string) => x === `qos${qos} 100 dev`;
  const connectsMosquitto = med(find('d connect storm', 'chain to mosquitto', 'connects/s'));
  const quickLine: QuickLine = {
    qos0Ratio: round(ratio(find('a throughput', 'chain', 'delivered', headline(0)), find('a throughput', 'aedes direct', 'delivered', headline(0))), 3),
    qos1Ratio: round(ratio(find('a throughput', 'chain', 'delivered', headline(1)), find('a throughput', 'aedes direct', 'delivered', headline(1))), 3),
    bridgeRatioQos1: round(ratio(find('a throughput', 'chain to mosquitto', 'delivered', headline(1)), find('a throughput', 'mosquitto bridge', 'delivered', headline(1))), 3),
    p99AddedMs: (() => {
      const a = med(find('b latency', 'chain', 'p99'));
      const b = med(find('b latency', 'aedes direct', 'p99'));
      return a !== null && b !== null ? round(a - b, 3) : null;
    })(),
    agentKiBPerIdleDevice: round(med(find('c idle memory', 'chain', 'agent RSS per device')), 2),
    hubKiBPerIdleDevice: round(med(find('c idle memory', 'chain', 'hub RSS per device')), 2),
    connectsPerSec: round(connectsMosquitto ?? med(find('d connect storm', 'chain', 'connects/s')), 0),
    wanBytesPerIdleDeviceHour: round(med(find('e wan cost', 'chain (tunnel)', 'bytes per idle device-hour beyond heartbeat')), 1),
  };

  const targets: string[][] = [['target', 'measured', 'holds']];
  const check = (name: string, value: number | null, ok: (v: number) => boolean, unit = ''): void => {
    targets.push([name, value === null ? 'not measured' : `${formatNumber(value)}${unit}`, value === null ? '?' : ok(value) ? 'yes' : 'NO']);
  };
  check('throughput chain / aedes direct >= 1.0, QoS 0 (100 dev)', quickLine.qos0Ratio, (v) => v >= 1, 'x');
  check('throughput chain / aedes direct >= 1.0, QoS 1 (100 dev)', quickLine.qos1Ratio, (v) => v >= 1, 'x');
  for (const [k, v] of Object.entries(ratios)) if (!k.includes('100 dev')) check(`  (${k})`, v, (x) => x >= 1, 'x');
  check('chain to Mosquitto / Mosquitto bridge >= 1.0, QoS 1 (100 dev)', quickLine.bridgeRatioQos1, (v) => v >= 1, 'x');
  check('p99 added at the fixed rate <= 1 ms', quickLine.p99AddedMs, (v) => v <= 1, ' ms');
  check('agent <= 4 KiB RSS per idle device', quickLine.agentKiBPerIdleDevice, (v) => v <= 4, ' KiB');
  check('hub <= 8 KiB RSS per idle device (with its broker)', quickLine.hubKiBPerIdleDevice, (v) => v <= 8, ' KiB');
  check(`>= 10k connects/s through the chain${connectsMosquitto !== null ? ' to Mosquitto' : ' (embedded broker: Mosquitto backend not measured)'}`, quickLine.connectsPerSec, (v) => v >= 10_000, '/s');
  check('0 WAN bytes per idle device-hour beyond the heartbeat', quickLine.wanBytesPerIdleDeviceHour, (v) => Math.abs(v) < 1, ' B');
  for (const c of ['one agent, one process', ...new Set(summaries.filter((s) => s.scenario === 'huge 100k' && s.case.includes('--workers')).map((s) => s.case))]) {
    const huge = find('huge 100k', 'chain', 'devices connected at once', (x) => x === c);
    if (huge !== null) check(`100 000 concurrent devices through one agent (${c})`, med(huge), (v) => v >= 100_000);
  }

  const mainRows = summaries.filter((s) => !s.metric.startsWith('cpu '));
  const cpuRows = summaries.filter((s) => s.metric.startsWith('cpu '));
  const cpuByRun = new Map<string, string[]>();
  for (const s of cpuRows) {
    const key = `${s.scenario} | ${s.case} | ${s.variant}`;
    (cpuByRun.get(key) ?? cpuByRun.set(key, []).get(key)!).push(`${s.metric.slice(4)} ${Math.round(s.median)}%`);
  }
  const parts = [
    `edgemux bench (${plan.mode}): medians of ${plan.reps} repetitions; spread = (max - min) / median. The load generators and the subscriber run on the same 2 cores as the systems under test.`,
    resultsTable(mainRows),
    '',
    'CPU per process during the measurement window (median, % of one core):',
    renderTable([['scenario | case | variant', 'cpu'], ...[...cpuByRun.entries()].map(([k, v]) => [k, v.join(', ')])]),
    '',
    'Throughput ratios (ratio of medians, higher is better):',
    renderTable(ratioRows),
    '',
    'Targets:',
    renderTable(targets),
  ];
  if (results.skipped.length > 0) parts.push('', 'Skipped:', ...[...new Set(results.skipped.map((n) => `  ${n.scenario}: ${n.text}`))]);
  if (results.notes.length > 0) parts.push('', 'Notes:', ...[...new Set(results.notes.map((n) => `  ${n.scenario}: ${n.text}`))]);
  return {
    table: parts.join('\n'),
    quickLine,
    json: { plan, meta, quickLine, ratios, summaries, notes: results.notes, skipped: results.skipped, details: results.details },
  };
}
