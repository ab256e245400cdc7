/**
 * Loaded into every node process the bench starts (node --import).
 * - SIGUSR2 runs a full garbage collection (with --expose-gc), so RSS is read
 *   after a GC settle rather than at a random point of the heap's life.
 * - The process ends itself if the bench that started it goes away, even if
 *   the bench was killed without a chance to clean up.
 */
const ORPHAN_CHECK_MS = 500;
const HARD_EXIT_MS = 5000;

const parent = process.ppid;

process.on('SIGUSR2', () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) return;
  gc();
  gc();
});

setInterval(() => {
  if (process.ppid === parent) return;
  // Let the program's own SIGTERM handling run (it writes CPU profiles on exit), then make sure.
  setTimeout(() => process.exit(1), HARD_EXIT_MS).unref();
  process.kill(process.pid, 'SIGTERM');
}, ORPHAN_CHECK_MS).unref();

export {};
