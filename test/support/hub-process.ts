import { type ChildProcess, spawn } from 'node:child_process';
import { join, resolve } from 'node:path';

const repo = resolve(import.meta.dirname, '../..');

export interface HubExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * The real `cloud-hub` binary (dist/cloud-hub/cli.js, built by `npm test`) as
 * a child process on loopback ports chosen by the kernel, with its JSON log lines
 * collected. `close()` always leaves no process behind.
 */
export class HubProcess {
  /** Parsed pino lines from stdout, in order. */
  readonly logs: Record<string, unknown>[] = [];
  stderr = '';
  tunnelPort = 0;
  appPort = 0;
  readonly exited: Promise<HubExit>;
  private exit: HubExit | null = null;

  private constructor(readonly child: ChildProcess) {
    this.exited = new Promise((resolveExit) => {
      child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        resolveExit(this.exit);
      });
    });
  }

  /** Starts the hub with `args` besides the loopback listeners, resolving once it listens. */
  static async start(args: string[]): Promise<HubProcess> {
    const child = spawn(
      process.execPath,
      [join(repo, 'dist/cloud-hub/cli.js'), '--tunnel-host', '127.0.0.1', '--tunnel-port', '0', '--app-host', '127.0.0.1', '--app-port', '0', ...args],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const hub = new HubProcess(child);
    child.stderr!.on('data', (chunk: Buffer) => {
      hub.stderr += chunk.toString();
    });
    let partial = '';
    const listening = new Promise<void>((resolveListening, reject) => {
      child.stdout!.on('data', (chunk: Buffer) => {
        const lines = (partial + chunk.toString()).split('\n');
        partial = lines.pop()!;
        for (const line of lines) {
          if (line.trim() === '') continue;
          const entry = JSON.parse(line) as Record<string, unknown>;
          hub.logs.push(entry);
          if (entry.msg === 'hub listening') {
            hub.tunnelPort = (entry.tunnel as { port: number }).port;
            hub.appPort = (entry.app as { port: number }).port;
            resolveListening();
          }
        }
      });
      void hub.exited.then((exit) => reject(new Error(`cloud-hub exited (${exit.code ?? exit.signal}) before listening:\n${hub.stderr}`)));
    });
    await listening;
    return hub;
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.exit === null;
  }

  /** Sends `signal` and resolves with how the process ended and how long that took, or rejects past `withinMs`. */
  async stop(signal: NodeJS.Signals, withinMs: number): Promise<HubExit & { elapsedMs: number }> {
    const started = performance.now();
    this.child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`cloud-hub still running ${withinMs} ms after ${signal}`)), withinMs);
    });
    try {
      const exit = await Promise.race([this.exited, late]);
      return { ...exit, elapsedMs: performance.now() - started };
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }
}
