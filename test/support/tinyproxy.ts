import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, chmodSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { describe } from 'vitest';
import { freePort } from './mosquitto.js';

const SEARCH_DIRS = [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/sbin', '/usr/local/bin', '/usr/local/sbin'];

function findTinyproxy(): string | null {
  for (const dir of SEARCH_DIRS) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, 'tinyproxy'), constants.X_OK);
      return join(dir, 'tinyproxy');
    } catch {
      // not in this directory
    }
  }
  return null;
}

const tinyproxyBinary = findTinyproxy();

/** Set by CI, where a skipped proxy test would hide a broken install. */
export const TINYPROXY_REQUIRED = process.env.EDGEMUX_REQUIRE_TINYPROXY === '1';

let skipNoticeShown = false;

function tinyproxyReady(): boolean {
  if (tinyproxyBinary !== null) return true;
  if (TINYPROXY_REQUIRED) throw new Error('EDGEMUX_REQUIRE_TINYPROXY=1 but tinyproxy was not found on PATH or in /usr/bin, /usr/sbin');
  if (!skipNoticeShown) {
    skipNoticeShown = true;
    process.stderr.write('skipping the HTTP proxy tests: tinyproxy not found (enable them with: apt-get install tinyproxy)\n');
  }
  return false;
}

/** `describe` for suites that need a real tinyproxy: skipped with a how-to line when it is absent, failing when CI requires it. */
export function describeWithTinyproxy(name: string, body: () => void): void {
  if (tinyproxyReady()) describe(name, body);
  else describe.skip(name, body);
}

export interface TinyproxyOptions {
  /** Basic authentication the proxy demands of every client. */
  user?: string;
  password?: string;
  /** The only ports CONNECT may reach; any when absent. */
  connectPorts?: number[];
}

/**
 * A real tinyproxy on a free loopback port, in the foreground with its
 * configuration in a directory of its own. Started as root it drops to
 * nobody/nogroup, so the directory and file are made readable by them.
 */
export class Tinyproxy {
  private child: ChildProcess | null = null;
  output = '';

  private constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  static async start(options: TinyproxyOptions = {}): Promise<Tinyproxy> {
    const dir = mkdtempSync(join(tmpdir(), 'edgemux-tinyproxy-'));
    chmodSync(dir, 0o755);
    const port = await freePort();
    const lines = [`Port ${port}`, 'Listen 127.0.0.1', 'Timeout 30', 'MaxClients 200', 'LogLevel Connect', 'Allow 127.0.0.1'];
    if (process.getuid?.() === 0) lines.push('User nobody', 'Group nogroup');
    if (options.user !== undefined) lines.push(`BasicAuth ${options.user} ${options.password ?? ''}`);
    for (const connectPort of options.connectPorts ?? []) lines.push(`ConnectPort ${connectPort}`);
    const configFile = join(dir, 'tinyproxy.conf');
    writeFileSync(configFile, `${lines.join('\n')}\n`);
    chmodSync(configFile, 0o644);
    const proxy = new Tinyproxy(port, dir);
    const child = spawn(tinyproxyBinary ?? 'tinyproxy', ['-d', '-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    proxy.child = child;
    for (const stream of [child.stdout!, child.stderr!]) stream.on('data', (chunk: Buffer) => (proxy.output += chunk.toString()));
    await proxy.waitForPort(5000);
    return proxy;
  }

  /** `http://user:password@127.0.0.1:port`, as HTTPS_PROXY would hold it. */
  url(user?: string, password?: string): string {
    const credentials = user !== undefined ? `${encodeURIComponent(user)}:${encodeURIComponent(password ?? '')}@` : '';
    return `http://${credentials}127.0.0.1:${this.port}`;
  }

  /** CONNECT requests tinyproxy logged as established. */
  get connects(): number {
    return (this.output.match(/Established connection to host/g) ?? []).length;
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child !== null && child.exitCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async waitForPort(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const open = await new Promise<boolean>((resolve) => {
        const socket = net.connect(this.port, '127.0.0.1');
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      });
      if (open) return;
      if (this.child?.exitCode !== null || Date.now() > deadline) {
        throw new Error(`tinyproxy did not listen on ${this.port} within ${timeoutMs} ms\n${this.output}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}
