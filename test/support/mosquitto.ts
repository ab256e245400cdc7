import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { accessSync, chmodSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { describe, it } from 'vitest';

export interface MosquittoOptions {
  /** user → password; when given, anonymous clients are refused. */
  passwords?: Record<string, string>;
  /** Keep sessions and queued messages on disk across a restart. */
  persistence?: boolean;
  extraConfig?: string[];
}

/** Debian puts the broker in /usr/sbin, which a non-root PATH leaves out. */
const SEARCH_DIRS = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin', '/sbin'];

function findExecutable(name: string): string | null {
  for (const dir of SEARCH_DIRS) {
    if (dir === '') continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return null;
}

const mosquittoBinary = findExecutable('mosquitto');
const mosquittoPasswdBinary = findExecutable('mosquitto_passwd');
const clientBinaries = ['mosquitto_pub', 'mosquitto_sub'].filter((name) => findExecutable(name) === null);

/** Set by CI, where a skipped Mosquitto test would hide a broken install. */
export const MOSQUITTO_REQUIRED = process.env.EDGEMUX_REQUIRE_MOSQUITTO === '1';

export const mosquittoAvailable = mosquittoBinary !== null && mosquittoPasswdBinary !== null && clientBinaries.length === 0;

let skipNoticeShown = false;

/** True when Mosquitto tests may run; otherwise says once how to enable them, or fails where CI demands them. */
function mosquittoReady(): boolean {
  if (mosquittoAvailable) return true;
  const missing = mosquittoBinary === null ? 'mosquitto' : mosquittoPasswdBinary === null ? 'mosquitto_passwd' : clientBinaries.join(', ');
  if (MOSQUITTO_REQUIRED) {
    throw new Error(`EDGEMUX_REQUIRE_MOSQUITTO=1 but ${missing} was not found on PATH or in /usr/sbin`);
  }
  if (!skipNoticeShown) {
    skipNoticeShown = true;
    process.stderr.write(`skipping the Mosquitto tests: ${missing} not found (enable them with: apt-get install mosquitto mosquitto-clients)\n`);
  }
  return false;
}

/** `describe` for suites that need a real Mosquitto: skipped with a how-to line when it is absent. */
export function describeWithMosquitto(name: string, body: () => void): void {
  if (mosquittoReady()) describe(name, body);
  else describe.skip(name, body);
}

/** `it` for a single test that needs a real Mosquitto inside a suite that does not. */
export function itWithMosquitto(name: string, body: () => Promise<void>, timeoutMs?: number): void {
  if (mosquittoReady()) it(name, body, timeoutMs);
  else it.skip(name, body, timeoutMs);
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * A real Mosquitto on a free loopback port with its own config, started by
 * the test. Run as root it drops to the mosquitto user, so its directory and
 * files are made readable (and, for persistence, writable) by that user.
 */
export class Mosquitto {
  private child: ChildProcess | null = null;
  output = '';

  private constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  static async start(options: MosquittoOptions = {}): Promise<Mosquitto> {
    const dir = mkdtempSync(join(tmpdir(), 'edgemux-mosquitto-'));
    chmodSync(dir, 0o777);
    const port = await freePort();
    const lines = [
      `listener ${port} 127.0.0.1`,
      // Mosquitto 2.0.11 with a finite max_queued_messages was seen to drop QoS 1
      // messages silently under sustained load; tests that count losses need none dropped.
      'max_queued_messages 0',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
    ];
    if (options.passwords !== undefined) {
      const passwordFile = join(dir, 'passwd');
      writeFileSync(passwordFile, '');
      for (const [user, password] of Object.entries(options.passwords)) {
        execFileSync(mosquittoPasswdBinary ?? 'mosquitto_passwd', ['-b', passwordFile, user, password]);
      }
      chmodSync(passwordFile, 0o644);
      lines.push('allow_anonymous false', `password_file ${passwordFile}`);
    } else {
      lines.push('allow_anonymous true');
    }
    if (options.persistence) lines.push('persistence true', `persistence_location ${dir}/`, 'autosave_interval 1');
    lines.push(...(options.extraConfig ?? []));
    const configFile = join(dir, 'mosquitto.conf');
    writeFileSync(configFile, `${lines.join('\n')}\n`);
    chmodSync(configFile, 0o644);
    const mosquitto = new Mosquitto(port, dir);
    await mosquitto.launch();
    return mosquitto;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** Stops the process without ending it (SIGSTOP): the kernel still completes TCP handshakes, nothing answers. */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child === null) return;
    this.child = null;
    if (child.exitCode !== null) return;
    // A stopped process would hold SIGTERM until the SIGKILL below.
    child.kill('SIGCONT');
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.launch();
  }

  async remove(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async launch(): Promise<void> {
    const child = spawn(mosquittoBinary ?? 'mosquitto', ['-c', join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr!.on('data', (chunk: Buffer) => {
      this.output += chunk.toString();
    });
    try {
      await waitForPort(this.port, 5000);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${this.output}`);
    }
  }
}
