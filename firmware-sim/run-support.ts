/** Writes a one-line status to stderr: rewritten in place on a terminal, one line each otherwise. */
export function statusLine(text: string): void {
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[2K${text}`);
  else process.stderr.write(`${text}\n`);
}

export function endStatus(): void {
  if (process.stderr.isTTY) process.stderr.write('\n');
}

/** Resolves after `seconds` (never when 0), or at the first SIGINT/SIGTERM. */
export function runFor(seconds: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      clearTimeout(timer);
      resolve();
    };
    const timer = seconds > 0 ? setTimeout(done, seconds * 1000) : undefined;
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
}

export function nonNegativeInteger(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0) {
    process.stderr.write(`${flag}: expected a whole number >= 0 (got ${JSON.stringify(value)})\n`);
    process.exit(2);
  }
  return parsed;
}

export function fraction(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!(parsed >= 0 && parsed <= 1)) {
    process.stderr.write(`${flag}: expected a number between 0 and 1 (got ${JSON.stringify(value)})\n`);
    process.exit(2);
  }
  return parsed;
}

/**
 * Resident set size in bytes, or 0 when it cannot be read. Node reads it
 * from /proc, which needs a descriptor: a simulator holding all of its
 * descriptors in sockets gets EMFILE, and a status report must not crash it.
 */
export function residentSetBytes(): number {
  try {
    return process.memoryUsage.rss();
  } catch {
    return 0;
  }
}
