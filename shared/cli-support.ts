import { readFileSync } from 'node:fs';
import { EdgemuxError, isEdgemuxError } from './errors.js';

/** Reads a PEM file named by a config key, failing with the key in the message. */
export function readPem(path: string, key: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new EdgemuxError('E_CONFIG', `${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** "12" → 12; leaves undefined alone; anything else becomes NaN so the schema reports the key. */
export function numberFlag(value: string | undefined): number | undefined {
  return value === undefined ? undefined : Number(value);
}

/** Runs a CLI entry point: configuration errors print plainly and exit 2, anything else exits 1. */
export function runCli(main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    if (isEdgemuxError(err, 'E_CONFIG')) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof TypeError && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`${err.message}\nRun with --help for the list of options.\n`);
      process.exit(2);
    }
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}

/**
 * How long a clean stop may take before the process exits anyway: below
 * Docker's 10 s between SIGTERM and SIGKILL, so the process ends on its own terms.
 */
export const SHUTDOWN_DEADLINE_MS = 8000;

/** Stops cleanly on SIGINT/SIGTERM; a second signal exits at once, a stop that outlasts `deadlineMs` exits 1. */
export function onShutdown(stop: () => Promise<void>, deadlineMs = SHUTDOWN_DEADLINE_MS): void {
  let stopping = false;
  const handler = (): void => {
    if (stopping) process.exit(130);
    stopping = true;
    setTimeout(() => {
      process.stderr.write(`stop did not finish within ${deadlineMs} ms; exiting\n`);
      process.exit(1);
    }, deadlineMs).unref();
    stop().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`stop failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}
