import { renameSync, statSync } from 'node:fs';
import { pino } from 'pino';
import type { Logger } from './logger.js';

/**
 * Owner and group only: log lines name agents, client IDs and addresses,
 * which other users of the box have no business reading. The umask can only
 * make it stricter.
 */
const LOG_FILE_MODE = 0o640;

const SHARED_SIZE_CHECK_BYTES = 64 * 1024;

export interface LogFileSettings {
  path: string;
  /** Past this size the file becomes `path.1` and a fresh one is started; no limit when absent. */
  maxBytes?: number;
  /** How many rotated files (`path.1` .. `path.N`) are kept. */
  keep: number;
}

export type LogDestination = ReturnType<typeof pino.destination>;

function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function renameIfPresent(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/**
 * The log file of one process, written through pino's own asynchronous
 * destination (flushed on exit by pino). `reopen()` is what logrotate's
 * `postrotate kill -USR1` needs: the renamed file keeps what was written,
 * later lines go to a new file under the configured name.
 */
export class LogFile {
  readonly destination: LogDestination;
  /** Bytes in the file under `path`, as far as this process knows; only kept when there is a size limit. */
  private size: number;
  private sinceCheck = 0;
  private readonly rotate: () => void;

  /**
   * With --workers several processes append to one file and each counts only
   * its own bytes, so `shared` makes each look at the real size every
   * SHARED_SIZE_CHECK_BYTES it writes (the file passes the limit by at most
   * that much per worker), and `rotate` lets one owner (the primary) do the
   * renames so two workers never shift the same files.
   */
  constructor(
    private readonly settings: LogFileSettings,
    options: { shared?: boolean; rotate?: () => void } = {},
  ) {
    this.rotate = options.rotate ?? (() => this.rotateNow());
    this.destination = pino.destination({ dest: settings.path, sync: false, mkdir: true, mode: LOG_FILE_MODE });
    this.size = sizeOf(settings.path);
    const { maxBytes } = settings;
    if (maxBytes !== undefined) {
      this.destination.on('write', (bytes: number) => {
        this.size += bytes;
        this.sinceCheck += bytes;
        if (options.shared && this.sinceCheck >= SHARED_SIZE_CHECK_BYTES) {
          this.sinceCheck = 0;
          this.size = sizeOf(settings.path);
        }
        // Checked after the write, so the line that passes the limit stays whole in the old file.
        if (this.size >= maxBytes) {
          this.size = 0;
          this.rotate();
        }
      });
    }
  }

  get path(): string {
    return this.settings.path;
  }

  /** Writes from now on go to a file opened again under the configured name. */
  reopen(): void {
    this.size = sizeOf(this.settings.path);
    this.destination.reopen();
  }

  /** path.N-1 → path.N, ..., path → path.1 (the oldest beyond `keep` is overwritten), then reopen. */
  rotateNow(): void {
    const { path, keep } = this.settings;
    // Several workers may ask at once: only a file that is still over the limit is rotated.
    if (sizeOf(path) < (this.settings.maxBytes ?? 0)) return this.reopen();
    for (let index = keep - 1; index >= 1; index--) renameIfPresent(`${path}.${index}`, `${path}.${index + 1}`);
    renameIfPresent(path, `${path}.1`);
    this.reopen();
  }
}

/**
 * SIGUSR1 reopens the log file. Node's default for SIGUSR1 is to start the
 * inspector, which would open a debugger port on a production box: the
 * handler is installed before anything else so that never happens, and a
 * signal that arrives before the log file is open is dropped (the file is
 * about to be opened under its name anyway). Without a log file the signal
 * does nothing.
 */
export class ReopenLogOnSignal {
  private reopen: (() => void) | null = null;

  constructor() {
    process.on('SIGUSR1', () => this.request());
  }

  /** From now on SIGUSR1 reopens `file` (if there is one) and logs it on `log`, then runs `also` (passing it on to workers). */
  use(file: LogFile | null, log: Logger, also: () => Record<string, unknown> = () => ({})): void {
    this.reopen = () => {
      file?.reopen();
      const passedOn = also();
      if (file !== null) log.info({ logFile: file.path, ...passedOn }, 'log file reopened');
    };
  }

  request(): void {
    this.reopen?.();
  }
}
