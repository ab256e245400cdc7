import type { Clock, Timer } from '../../shared/clock.js';

interface Scheduled {
  at: number;
  fn: () => void;
  every: number | null;
  cancelled: boolean;
}

/** A clock that moves only when a test says so; timers fall due in order of their time. */
export class ManualClock implements Clock {
  private time: number;
  private scheduled: Scheduled[] = [];

  constructor(start = 1_700_000_000_000) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    return this.schedule(fn, ms, null);
  }

  setInterval(fn: () => void, ms: number): Timer {
    return this.schedule(fn, ms, ms);
  }

  /** Moves time forward by `ms`, running every timer that falls due on the way at its own time. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      const next = this.scheduled.filter((timer) => !timer.cancelled && timer.at <= end).sort((a, b) => a.at - b.at)[0];
      if (next === undefined) break;
      this.time = next.at;
      if (next.every === null) next.cancelled = true;
      else next.at += next.every;
      next.fn();
    }
    this.scheduled = this.scheduled.filter((timer) => !timer.cancelled);
    this.time = end;
  }

  /** Timers still to fall due. */
  get pending(): number {
    return this.scheduled.filter((timer) => !timer.cancelled).length;
  }

  private schedule(fn: () => void, ms: number, every: number | null): Timer {
    const timer: Scheduled = { at: this.time + Math.max(ms, every === null ? 0 : 1), fn, every, cancelled: false };
    this.scheduled.push(timer);
    return { cancel: () => (timer.cancelled = true) };
  }
}
