import { type ChildProcess, spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { eventually } from './chain.js';

const repo = resolve(import.meta.dirname, '../..');

export type LogLine = Record<string, unknown> & { msg?: string; pid?: number };

/** A compiled CLI (dist/...) run as its own process, its pino lines parsed as they arrive. */
export class CliProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  private text = '';

  constructor(script: string, args: string[]) {
    this.child = spawn(process.execPath, [join(repo, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const collect = (chunk: Buffer): void => {
      this.text += chunk.toString();
      let newline: number;
      while ((newline = this.text.indexOf('\n')) >= 0) {
        const line = this.text.slice(0, newline);
        this.text = this.text.slice(newline + 1);
        try {
          this.lines.push(JSON.parse(line) as LogLine);
        } catch {
          this.lines.push({ msg: line });
        }
      }
    };
    this.child.stdout!.on('data', collect);
    this.child.stderr!.on('data', collect);
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Log lines with this message, in order. */
  logged(msg: string): LogLine[] {
    return this.lines.filter((line) => line.msg === msg);
  }

  /** Waits until `count` lines carry this message; fails early if the process ends meanwhile. */
  async waitForLog(msg: string, count = 1, timeoutMs = 15_000): Promise<LogLine> {
    await eventually(() => this.logged(msg).length >= count || !this.running, timeoutMs, `${count} × "${msg}"`);
    if (this.logged(msg).length < count) {
      throw new Error(`process ended (${this.child.exitCode ?? this.child.signalCode}) before logging "${msg}"`);
    }
    return this.logged(msg)[count - 1];
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    const exited = new Promise<void>((done) => this.child.once('exit', () => done()));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
}
