import tls from 'node:tls';
import { isDeepStrictEqual } from 'node:util';
import { EdgemuxError, isEdgemuxError } from './errors.js';
import type { Logger } from './logger.js';

/** Top-level settings that differ between the running and the new configuration, split by whether a reload can apply them. */
export interface SettingsDiff {
  changed: string[];
  needsRestart: string[];
}

export function diffSettings(running: object, next: object, reloadable: readonly string[]): SettingsDiff {
  const keys = new Set([...Object.keys(running), ...Object.keys(next)]);
  const diff: SettingsDiff = { changed: [], needsRestart: [] };
  for (const key of keys) {
    if (isDeepStrictEqual((running as Record<string, unknown>)[key], (next as Record<string, unknown>)[key])) continue;
    (reloadable.includes(key) ? diff.changed : diff.needsRestart).push(key);
  }
  return diff;
}

/**
 * Builds a secure context from the material before anything is swapped, so a
 * certificate that does not match its key is refused with the key named
 * instead of leaving a listener half reconfigured.
 */
export function checkTlsMaterial(material: { ca: string; cert: string; key: string }, key: string): void {
  try {
    tls.createSecureContext({ ca: material.ca, cert: material.cert, key: material.key });
  } catch (err) {
    throw new EdgemuxError('E_CONFIG', `${key}: unusable certificate or key (${(err as Error).message})`);
  }
}

/**
 * SIGHUP reloads the configuration instead of ending the process (the default
 * action of SIGHUP). The handler is installed before start-up finishes so a
 * signal that arrives early cannot kill the process; it is remembered and
 * runs once the component is up, since the file may have changed after it was
 * read. Reloads never overlap: one that arrives during another runs after it.
 */
export class ReloadOnSignal {
  private reload: (() => Promise<void>) | null = null;
  private log: Logger | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private pendingBeforeStart = false;

  constructor(signal: NodeJS.Signals = 'SIGHUP') {
    process.on(signal, () => this.request());
  }

  /** From now on a request runs `reload`; failures are logged on `log` and the running configuration stays. */
  use(reload: () => Promise<void>, log: Logger): void {
    this.reload = reload;
    this.log = log;
    if (this.pendingBeforeStart) {
      this.pendingBeforeStart = false;
      this.request();
    }
  }

  request(): void {
    if (this.reload === null) {
      this.pendingBeforeStart = true;
      return;
    }
    if (this.running !== null) {
      this.again = true;
      return;
    }
    this.running = this.runOnce();
  }

  private async runOnce(): Promise<void> {
    const log = this.log!;
    try {
      await this.reload!();
    } catch (err) {
      if (isEdgemuxError(err, 'E_CONFIG')) {
        log.error({ reason: err.message }, 'configuration reload refused; the running configuration stays');
      } else {
        log.error({ err }, 'configuration reload failed; the running configuration stays');
      }
    }
    this.running = null;
    if (this.again) {
      this.again = false;
      this.request();
    }
  }
}

/** Logs the outcome of a reload with stable fields: what took effect and what waits for a restart. */
export function logReload(log: Logger, diff: SettingsDiff): void {
  if (diff.needsRestart.length > 0) {
    log.warn({ needsRestart: diff.needsRestart }, 'changed settings need a restart; their running values stay');
  }
  log.info({ changed: diff.changed }, 'configuration reloaded');
}
