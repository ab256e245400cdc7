/**
 * Time as the stream rules see it: grace periods, heartbeats, keepalives,
 * CONNECT timeouts. Injected through the agent's and the hub's options so
 * tests drive it instead of sleeping.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /** Calls `fn` once after `ms`. The timer never keeps the process alive. */
  setTimeout(fn: () => void, ms: number): Timer;
  /** Calls `fn` every `ms`. The timer never keeps the process alive. */
  setInterval(fn: () => void, ms: number): Timer;
}

export interface Timer {
  cancel(): void;
}

/** The process's own clock and timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const timer = setTimeout(fn, ms).unref();
    return { cancel: () => clearTimeout(timer) };
  },
  setInterval(fn, ms) {
    const timer = setInterval(fn, ms).unref();
    return { cancel: () => clearInterval(timer) };
  },
};
