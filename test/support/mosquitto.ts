import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface MosquittoOptions {
  /** user → password; when given, anonymous clients are refused. */
  passwords?: Record<string, string>;
  /** Keep sessions and queued messages on disk across a restart. */
  persistence?: boolean;
  extraConfig?: string[];
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
        execFileSync('mosquitto_passwd', ['-b', passwordFile, user, password]);
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
    const binary = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto';
    const child = spawn(binary, ['-c', join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
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
