import type { Etcd3, Lease } from 'etcd3';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { DEFAULT_DIAL_TIMEOUT_MS, isTransientEtcdError, keepaliveLease, toEtcdError } from './etcd';
import type { EtcdLink } from './etcd-link';

/**
 * Our liveness key: /alive/<self> on an etcd lease, kept alive by us, not by etcd3.
 *
 * etcd3's automatic keepalive retries a failed keepalive stream every 100 ms and each failure
 * makes it dial a fresh gRPC channel: ten connects a second for two TTLs whenever etcd is away.
 * Here the lease is granted without it and kept alive with one short keepalive exchange every
 * TTL/3. A failed exchange reports to the `EtcdLink` and waits for its next retry round (shared
 * backoff up to 30 s), on the same lease, so a short outage keeps the lease. The lease counts as
 * lost when etcd says it expired, or after two TTLs without an answer (etcd3's rule); then a new
 * one is granted, again on the link's schedule.
 *
 *   1. grant a lease, put the key on it   (retried on the link's schedule until it works)
 *   2. every TTL/3: one keepalive         (failure: wait for the link; 2 TTLs silent: back to 1)
 *
 * With `via` (several etcd members, watch-health.ts) the keepalive goes to the member `via` holds
 * for the watch, which is probed, instead of a member etcd3 picks at random (a keepalive sent to a
 * member cut off from its cluster hangs until its deadline, and a random retry may pick the same
 * member again: two such misses outlast the TTL). A move to another member ends a hung keepalive,
 * or the wait after a failed one, and retries it there at once; a move is not an etcd outage.
 */
/** Where keepalives go with several members: the current member's client, and its moves. */
export interface KeepaliveRoute {
  client(): Etcd3;
  /** Calls `fn` once at the next move; returns the way to take it back. */
  onMove(fn: () => void): () => void;
}

export interface LivenessOptions {
  client: Etcd3;
  key: string;
  /** The key's value, asked for at each grant. */
  value: () => string;
  ttlSec: number;
  log: Logger;
  link: EtcdLink;
  /** Send keepalives through this member's client (watch-health.ts) instead of `client`'s pool. */
  via?: KeepaliveRoute;
  /** Deadline of one keepalive exchange (default the client's dial timeout, 5 s). */
  callTimeoutMs?: number;
  now?: () => number;
}

/** How long a stop waits for etcd to revoke the lease (a healthy etcd answers in milliseconds). */
export const STOP_REVOKE_MS = 1_000;

/** The keepalive was abandoned because its member was left (not an etcd failure). */
const MOVED = new Error('etcd member changed');

export class Liveness {
  private readonly opts: LivenessOptions;
  private readonly now: () => number;
  private readonly callTimeout: number;
  private stopped = false;
  private lease: Lease | null = null;
  private wake: (() => void) | null = null;
  /** More keys on the lease (attach()): their values, those not written since, and a write in flight. */
  private readonly extra = new Map<string, string>();
  private readonly unwritten = new Set<string>();
  private writing = false;
  private readonly refused = new Set<string>(); // keys etcd refused (warned about once)

  constructor(opts: LivenessOptions) {
    this.opts = opts;
    this.now = opts.now ?? Date.now;
    this.callTimeout = opts.callTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  }

  /** Starts; resolves once the key is written, rejects (EETCD) if the first attempt fails (retrying on regardless). */
  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      let first: ((e?: Error) => void) | null = (e) => (e ? reject(e) : resolve());
      void this.run((e) => {
        first?.(e);
        first = null;
      });
    });
  }

  /**
   * Puts `key` = `value` on the lease beside the alive key, so it vanishes with it (a revoke on
   * stop, an expiry), and again on every new lease. Fire and forget: nothing is written while there
   * is no lease or the etcd link is down (the newest value goes out once it is back), one write at
   * a time, and values given meanwhile are coalesced to the newest. Never throws.
   */
  attach(key: string, value: string): void {
    if (this.stopped) return;
    this.extra.set(key, value);
    this.unwritten.add(key);
    void this.writeExtra();
  }

  private async writeExtra(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.unwritten.size > 0 && !this.stopped && this.lease && this.opts.link.up()) {
        const lease = this.lease;
        const key = this.unwritten.values().next().value!;
        const value = this.extra.get(key)!;
        this.unwritten.delete(key);
        try {
          await lease.put(key).value(value).exec();
        } catch (e) {
          if (isTransientEtcdError(e)) {
            // Retried after the next keepalive that gets through (unless a newer value came meanwhile).
            if (this.extra.get(key) === value) this.unwritten.add(key);
            this.opts.link.failed(e);
            this.opts.log.debug({ err: (e as Error).message, etcdKey: key }, 'could not write a key on the liveness lease; will retry');
          } else if (!this.refused.has(key)) {
            // etcd said no (permission denied: an RBAC role without this key): tried again only with the next value.
            this.refused.add(key);
            this.opts.log.warn({ err: (e as Error).message, etcdKey: key }, 'etcd refused a key on the liveness lease; not retrying it');
          }
          return;
        }
        this.refused.delete(key);
      }
    } finally {
      this.writing = false;
    }
  }

  /**
   * Revokes the lease, so the key disappears now; if etcd does not answer within STOP_REVOKE_MS,
   * it expires with its TTL (a stop does not wait for a hung etcd: peers heard our bye already).
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.wake?.();
    const lease = this.lease;
    this.lease = null;
    if (!lease) return;
    try {
      await lease.revoke({ deadline: this.now() + Math.min(this.callTimeout, STOP_REVOKE_MS) });
      this.opts.log.info('liveness revoked');
    } catch (e) {
      lease.release();
      this.opts.log.warn({ err: (e as Error).message }, 'could not revoke liveness lease; it will expire');
    }
  }

  private async run(settled: (e?: Error) => void): Promise<void> {
    const { log, link } = this.opts;
    while (!this.stopped) {
      // 1. grant and put
      let lease: Lease;
      try {
        lease = await this.establish();
      } catch (e) {
        if (this.stopped) break;
        settled(toEtcdError(e, 'establish liveness'));
        log.debug({ err: (e as Error).message }, 'liveness not established; retrying');
        await this.pause(link.wait());
        continue;
      }
      if (this.stopped) {
        // stop() came while we were granting: revoke this one ourselves.
        void lease.revoke({ deadline: this.now() + this.callTimeout }).catch(() => lease.release());
        break;
      }
      this.lease = lease;
      settled();
      log.info({ ttl: this.opts.ttlSec }, 'liveness established');
      for (const k of this.extra.keys()) this.unwritten.add(k); // (a new lease carries none of them)
      void this.writeExtra();
      // 2. keep alive until lost
      await this.keepAlive(lease);
      if (!this.stopped && this.lease === lease) {
        this.lease = null;
        lease.release();
      }
    }
    settled(new Error('liveness stopped'));
  }

  private async establish(): Promise<Lease> {
    const lease = this.opts.client.lease(this.opts.ttlSec, { autoKeepAlive: false });
    lease.on('lost', () => undefined); // reported through grant() and keepaliveOnce()
    try {
      await lease.grant();
      await lease.put(this.opts.key).value(this.opts.value()).exec();
      return lease;
    } catch (e) {
      lease.release();
      throw e;
    }
  }

  /** Returns when the lease is lost (or we stop). */
  private async keepAlive(lease: Lease): Promise<void> {
    const { log, link } = this.opts;
    const ttlMs = this.opts.ttlSec * 1000;
    let lastOk = this.now();
    let retrying = false;
    let now = false; // the last exchange was abandoned for a move to another member: retry there at once
    for (;;) {
      // Until the next keepalive (TTL/3, or the link's next round after a failure), but no longer
      // than the moment the lease must count as lost.
      const untilLost = lastOk + 2 * ttlMs - this.now();
      if (!now) await this.pause(retrying ? this.retryRound() : null, retrying ? untilLost : Math.min(ttlMs / 3, untilLost));
      now = false;
      if (this.stopped) return;
      if (this.now() - lastOk >= 2 * ttlMs) {
        log.warn({ silentMs: this.now() - lastOk }, 'liveness lease lost; granting a new one');
        return;
      }
      try {
        await this.keepaliveOnce(lease);
        lastOk = this.now();
        retrying = false;
        link.ok();
        if (this.unwritten.size > 0) void this.writeExtra(); // (held back while etcd was down)
      } catch (e) {
        if (this.stopped) return;
        if (e === MOVED) {
          log.debug('liveness keepalive moves to another etcd member');
          now = true;
          continue;
        }
        if ((e as Error).constructor?.name === 'EtcdLeaseInvalidError' || (e as Error).name === 'EtcdLeaseInvalidError') {
          link.ok();
          log.warn({ err: (e as Error).message }, 'liveness lease lost; granting a new one');
          return;
        }
        if (isTransientEtcdError(e)) link.failed(e);
        log.debug({ err: (e as Error).message }, 'liveness keepalive failed');
        retrying = true;
      }
    }
  }

  /** The link's next round, or a move to another member (`via`), whichever comes first. */
  private retryRound(): Promise<void> {
    const via = this.opts.via;
    if (!via) return this.opts.link.wait();
    let unsubscribe = (): void => undefined;
    const moved = new Promise<void>((resolve) => (unsubscribe = via.onMove(resolve)));
    return Promise.race([this.opts.link.wait(), moved]).finally(() => unsubscribe());
  }

  /** One keepalive exchange with a deadline (etcd3's has none of its own); MOVED when `via` moves first. */
  private keepaliveOnce(lease: Lease): Promise<unknown> {
    let timer: NodeJS.Timeout | undefined;
    let unsubscribe = (): void => undefined;
    const deadline = this.now() + this.callTimeout;
    const via = this.opts.via;
    const attempts: Promise<unknown>[] = [
      via ? lease.grant().then((id) => keepaliveLease(via.client(), id, deadline)) : lease.keepaliveOnce({ deadline }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new CladnetError('EETCD', 'etcd: keepalive timed out', { transient: true })), this.callTimeout + 1000);
        timer.unref();
      }),
    ];
    if (via) attempts.push(new Promise<never>((_, reject) => (unsubscribe = via.onMove(() => reject(MOVED)))));
    return Promise.race(attempts).finally(() => {
      clearTimeout(timer);
      unsubscribe();
    });
  }

  /** Waits for `p` (if any), at most `maxMs` (if given), and returns early on stop(). */
  private pause(p: Promise<void> | null, maxMs?: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        if (this.wake === done) this.wake = null;
        resolve();
      };
      this.wake = done;
      if (maxMs !== undefined) {
        timer = setTimeout(done, Math.max(0, maxMs));
        timer.unref();
      }
      void p?.then(done);
    });
  }
}
