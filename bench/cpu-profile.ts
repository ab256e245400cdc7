/**
 * Summarises a V8 .cpuprofile (node --cpu-prof): self time per function and
 * per file/package, the way one reads "where does the time go".
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface ProfileEntry {
  name: string;
  /** Self time in ms. */
  selfMs: number;
  /** Share of busy (non-idle) time, percent. */
  pct: number;
}

export interface ProfileSummary {
  file: string;
  totalMs: number;
  busyMs: number;
  idlePct: number;
  gcPct: number;
  topFunctions: ProfileEntry[];
  topFiles: ProfileEntry[];
}

/** Where a script lives, shortened: "shared/tunnel.js", "aedes/lib/client.js", "node:net". */
function location(url: string): string {
  if (url === '') return '(native)';
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) return url.slice(nm + 'node_modules/'.length);
  const dist = url.indexOf('/dist/');
  if (dist >= 0) return url.slice(dist + '/dist/'.length);
  return url.replace(/^file:\/\//, '');
}

function top(map: Map<string, number>, busyMs: number, n: number): ProfileEntry[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([name, ms]) => ({ name, selfMs: Math.round(ms), pct: Math.round((ms / busyMs) * 1000) / 10 }));
}

export function summarizeProfile(file: string, n = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<number, number>();
  if (profile.samples && profile.timeDeltas) {
    for (let i = 0; i < profile.samples.length; i++) {
      // timeDeltas[i] is the time before sample i; attribute the next delta to it.
      const delta = profile.timeDeltas[i + 1] ?? 0;
      selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + Math.max(0, delta));
    }
  }
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  let idleMs = 0;
  let gcMs = 0;
  let totalMs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (node === undefined) continue;
    const ms = us / 1000;
    totalMs += ms;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === '(idle)') {
      idleMs += ms;
      continue;
    }
    if (functionName === '(garbage collector)') gcMs += ms;
    const where = location(url);
    const fnName = `${functionName || '(anonymous)'} ${where}${url ? `:${lineNumber + 1}` : ''}`;
    byFunction.set(fnName, (byFunction.get(fnName) ?? 0) + ms);
    const fileKey = url ? where : functionName;
    byFile.set(fileKey, (byFile.get(fileKey) ?? 0) + ms);
  }
  const busyMs = Math.max(1, totalMs - idleMs);
  return {
    file,
    totalMs: Math.round(totalMs),
    busyMs: Math.round(busyMs),
    idlePct: Math.round((idleMs / Math.max(1, totalMs)) * 1000) / 10,
    gcPct: Math.round((gcMs / busyMs) * 1000) / 10,
    topFunctions: top(byFunction, busyMs, n),
    topFiles: top(byFile, busyMs, n),
  };
}

export function renderProfile(summary: ProfileSummary, label: string): string {
  const lines = [`${label}: ${summary.busyMs} ms busy of ${summary.totalMs} ms (idle ${summary.idlePct}%, GC ${summary.gcPct}% of busy)`];
  lines.push('  top functions by self time:');
  for (const e of summary.topFunctions) lines.push(`    ${e.pct.toFixed(1).padStart(5)}%  ${e.name}`);
  lines.push('  by file:');
  for (const e of summary.topFiles.slice(0, 10)) lines.push(`    ${e.pct.toFixed(1).padStart(5)}%  ${e.name}`);
  return lines.join('\n');
}

// `node dist/bench/cpu-profile.js FILE...` prints the summary of each profile.
if (process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/^.*\/dist\//, '/dist/'))) {
  for (const file of process.argv.slice(2)) process.stdout.write(`${renderProfile(summarizeProfile(file), file)}\n\n`);
}
