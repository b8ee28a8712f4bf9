import type { Logger } from '../log';
import { Backoff } from './backoff';

/**
 * Whether etcd answers, as one agent sees it, and when to try it again.
 *
 * Every etcd user in the process reports here: unary calls through the client's retry policy
 * (etcd.ts), the watch and the liveness keepalive through the registry. A recoverable failure
 * makes the link `down`; any answer makes it `up`. Each transition is logged once (warn when
 * etcd is lost, info when it is back), never each retry.
 *
 * While down, every retry loop (peer reload, liveness, publish) waits in `wait()` for the same
 * round: one shared timer per round, its delay from an exponential backoff with jitter capped at
 * 30 s (backoff.ts). So an outage costs a few calls per round whatever the error (refused, no
 * route, black hole, hung server), instead of each loop and each library layer retrying on its
 * own clock. `ok()` and `kick()` end the wait at once: the first when another loop got through,
 * the second when our own network changed (a new address may reach etcd where the old did not).
 */
export type EtcdLinkState = 'unknown' | 'up' | 'down';

export interface LinkTimers {
  set(fn: () => void, ms: number): { cancel(): void };
}

export const unrefTimers: LinkTimers = {
  set(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
};

export interface EtcdLinkOptions {
  log: Logger;
  backoff?: Backoff;
  timers?: LinkTimers;
  /** Milliseconds, monotonic enough for durations; default Date.now. */
  now?: () => number;
}

export interface EtcdLinkStats {
  state: EtcdLinkState;
  /** When the link last went down (ms since epoch), null while up. */
  downSince: number | null;
  /** Transitions to down since start. */
  outages: number;
  /** Retry rounds run since start (each wakes every waiting loop once). */
  rounds: number;
}

export class EtcdLink {
  private readonly log: Logger;
  private readonly backoff: Backoff;
  private readonly timers: LinkTimers;
  private readonly now: () => number;
  private current: EtcdLinkState = 'unknown';
  private downSince: number | null = null;
  private outages = 0;
  private rounds = 0;
  private round: { timer: { cancel(): void }; waiters: Array<() => void> } | null = null;
  private closed = false;

  constructor(opts: EtcdLinkOptions) {
    this.log = opts.log.child({ component: 'etcd' });
    this.backoff = opts.backoff ?? new Backoff();
    this.timers = opts.timers ?? unrefTimers;
    this.now = opts.now ?? Date.now;
  }

  state(): EtcdLinkState {
    return this.current;
  }

  /** False only while down: unknown counts as up (worth trying at once). */
  up(): boolean {
    return this.current !== 'down';
  }

  /** etcd answered a call. */
  ok(): void {
    if (this.current === 'up') return;
    const was = this.current;
    const since = this.downSince;
    this.current = 'up';
    this.downSince = null;
    this.backoff.reset();
    if (was === 'down') this.log.info({ downMs: since === null ? undefined : this.now() - since }, 'etcd reachable again');
    this.wake();
  }

  /** An etcd call failed for a reason that retrying later may fix (connection, timeout). */
  failed(err: unknown): void {
    if (this.current === 'down' || this.closed) return;
    this.current = 'down';
    this.downSince = this.now();
    this.outages++;
    this.backoff.reset();
    const msg = err instanceof Error ? err.message : String(err);
    this.log.warn({ err: msg, maxRetryMs: this.backoff.maxMs }, 'etcd unreachable; retrying with backoff');
  }

  /**
   * Resolves when the caller should try etcd again: at the end of the current retry round (all
   * waiters share one), or at once on `ok()`, `kick()` or `close()`.
   */
  wait(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      if (!this.round) {
        const delay = this.backoff.next();
        const timer = this.timers.set(() => this.wake(), delay);
        this.round = { timer, waiters: [] };
      }
      this.round.waiters.push(resolve);
    });
  }

  /** Our own network changed: start the backoff over and let every waiting loop try now. */
  kick(): void {
    if (this.current !== 'down') return;
    this.backoff.reset();
    this.wake();
  }

  stats(): EtcdLinkStats {
    return { state: this.current, downSince: this.downSince, outages: this.outages, rounds: this.rounds };
  }

  /** Releases every waiter; later waits resolve at once. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  private wake(): void {
    const r = this.round;
    if (!r) return;
    this.round = null;
    this.rounds++;
    r.timer.cancel();
    for (const w of r.waiters) w();
  }
}
