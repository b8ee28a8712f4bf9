/**
 * Exponential backoff with jitter, for retrying etcd while it is unreachable.
 *
 * Attempt n waits a delay drawn uniformly from [base/2, base], base = min(max, min * 2^n)
 * ("equal jitter"): never longer than `maxMs`, never shorter than half the step, and agents
 * that lost etcd at the same moment spread their retries over the second half of each step.
 * With the defaults the steps are 0.5, 1, 2, 4, 8, 16, 30, 30 ... s (before jitter).
 */
export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 30_000;

export interface BackoffOptions {
  minMs?: number;
  maxMs?: number;
  /** Uniform in [0, 1); default Math.random. */
  random?: () => number;
}

export class Backoff {
  readonly minMs: number;
  readonly maxMs: number;
  private readonly random: () => number;
  private base: number;

  constructor(opts: BackoffOptions = {}) {
    this.minMs = opts.minMs ?? BACKOFF_MIN_MS;
    this.maxMs = opts.maxMs ?? BACKOFF_MAX_MS;
    if (!(this.minMs > 0) || !(this.maxMs >= this.minMs)) throw new RangeError(`backoff: need 0 < minMs (${this.minMs}) <= maxMs (${this.maxMs})`);
    this.random = opts.random ?? Math.random;
    this.base = this.minMs;
  }

  /** The delay before the next attempt, in ms; each call moves one step further. */
  next(): number {
    const base = this.base;
    this.base = Math.min(this.maxMs, base * 2);
    return Math.round(base / 2 + (base / 2) * this.random());
  }

  /** Back to the first step (after a success, or when there is reason to try at once). */
  reset(): void {
    this.base = this.minMs;
  }
}
