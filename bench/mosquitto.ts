import { chmodSync, copyFileSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ProcessRegistry, RpcProcess } from './procs.js';

export const MOSQUITTO = process.env.MOSQUITTO ?? '/usr/sbin/mosquitto';

export function mosquittoInstalled(): boolean {
  return existsSync(MOSQUITTO);
}

/**
 * A directory Mosquitto can read after it drops from root to its own user:
 * mode 755, files 644 (keys included: they are throwaway bench keys).
 */
export function mosquittoDir(parent: string, files: Record<string, string>): { dir: string; path: (name: string) => string } {
  chmodSync(parent, 0o755);
  const dir = mkdtempSync(join(parent, 'mosquitto-'));
  chmodSync(dir, 0o755);
  for (const [name, source] of Object.entries(files)) {
    const target = join(dir, name);
    copyFileSync(source, target);
    chmodSync(target, 0o644);
  }
  return { dir, path: (name) => join(dir, name) };
}

/**
 * Settings common to every bench Mosquitto. `max_queued_messages 0` (no
 * limit): Mosquitto 2.0.11 drops QoS 1 messages silently under sustained
 * load with a finite limit, which would flatter its throughput.
 */
const COMMON = ['per_listener_settings false', 'allow_anonymous true', 'persistence false', 'max_queued_messages 0', 'log_dest stderr', 'log_type error', 'log_type warning'];

export function writeConfig(dir: string, name: string, lines: string[]): string {
  const path = join(dir, name);
  writeFileSync(path, [...COMMON, ...lines, ''].join('\n'));
  chmodSync(path, 0o644);
  return path;
}

/** Starts Mosquitto under a guard; resolves with the guard and Mosquitto's own pid (for RSS). */
export async function startMosquitto(registry: ProcessRegistry, name: string, configPath: string): Promise<{ guard: RpcProcess; pid: number }> {
  const guard = await registry.forkRpc(name, new URL('./guard.js', import.meta.url), [MOSQUITTO, '-c', configPath]);
  const pid = await guard.call<number>('pid');
  guard.extraPids.push(pid);
  return { guard, pid };
}
