/**
 * One timer that fires at the earliest time anyone asked for, instead of a fixed tick: an idle
 * agent wakes only when some peer's timer is actually due. Asking for a later time than the one
 * armed changes nothing; the callback re-arms it (usually with its owner's nextDue()).
 */
export interface DeadlineClock {
  now(): number;
  /** Runs fn once after ms; the handle must not keep the process alive. */
  after(ms: number, fn: () => void): { cancel(): void };
}

/** Node's clock: Date.now and unref'd setTimeout. */
export const nodeDeadlineClock: DeadlineClock = {
  now: Date.now,
  after(ms, fn) {
    const h = setTimeout(fn, ms);
    h.unref();
    return { cancel: () => clearTimeout(h) };
  },
};

/** setTimeout's longest delay (about 24.8 days); a later deadline is armed at this and re-armed. */
const MAX_DELAY_MS = 2 ** 31 - 1;

export class DeadlineTimer {
  private handle: { cancel(): void } | null = null;
  private at = Infinity;
  private closed = false;

  constructor(
    private readonly fn: () => void,
    private readonly clock: DeadlineClock = nodeDeadlineClock,
  ) {}

  /** Asks for a call at `at` (ms on the clock) or soon after; Infinity or NaN asks for nothing. */
  arm(at: number): void {
    if (this.closed || !(at < this.at)) return;
    this.handle?.cancel();
    this.at = at;
    const delay = Math.min(MAX_DELAY_MS, Math.max(0, Math.ceil(at - this.clock.now())));
    this.handle = this.clock.after(delay, () => {
      this.handle = null;
      this.at = Infinity;
      this.fn();
    });
  }

  /** The armed time (Infinity when idle). */
  get armedAt(): number {
    return this.at;
  }

  close(): void {
    this.closed = true;
    this.handle?.cancel();
    this.handle = null;
    this.at = Infinity;
  }
}
