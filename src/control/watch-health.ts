import type { Etcd3 } from 'etcd3';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { normalizeEndpoint } from './etcd';

/**
 * Which member of a multi-member etcd cluster our streams (the registry's watch, the liveness
 * keepalive) use, and whether that member still serves the cluster's data.
 *
 * A watch only says something when there is a change: on a member cut off from the other two it
 * stays open and silent, and every change the rest of the cluster commits is missed for as long as
 * the partition lasts. etcd3's own pool picks a member at random per stream and never looks back.
 * Here the streams run on a client bound to one member (createMemberClient: no retries, etcd's
 * require-leader flag on every call), and that member is checked:
 *
 * 1. require-leader: etcd cancels a flagged watch once its member has had no leader for three
 *    election timeouts ("etcdserver: no leader"); the registry sees a disconnect and calls fail().
 * 2. probe: while a watch is attached, every `intervalMs` (default 1 s) a linearizable read of one
 *    key on that member, with a `timeoutMs` deadline (default 1.5 s). A member cut off from the
 *    quorum cannot answer one (it needs the leader's read index), nor can a hung member; one that
 *    knows it has no leader refuses it at once. A failed probe counts as a hang: we move, then
 *    tell the registry (`onHung`), which drops the watch and resumes it from its last applied
 *    revision on the new member. Worst case from the partition to the move: interval + timeout.
 * 3. move: the next member in the configured order becomes current; the old member's client is
 *    closed (its streams end) and a fresh one is made for the new member on first use. Callers of
 *    `onMove()` (the liveness keepalive) are released so they retry on the new member at once.
 *
 * Probes run only while a watch is attached, so an etcd that is down altogether costs nothing here
 * (the registry's retry rounds, on the shared EtcdLink, find out when it is back). With one
 * endpoint there is nowhere to move: the registry is not given a WatchHealth then.
 */
export interface WatchHealthOptions {
  /** The cluster's client endpoints, at least two. */
  endpoints: readonly string[];
  /** Makes a client bound to one member (etcd.ts createMemberClient). */
  connect: (endpoint: string) => Etcd3;
  log: Logger;
  /** Between the end of one probe and the start of the next (default 1000 ms). */
  intervalMs?: number;
  /** Deadline of one probe (default 1500 ms). */
  timeoutMs?: number;
  now?: () => number;
}

export interface WatchHealthStats {
  /** The member streams use now. */
  member: string;
  /** Moves to another member (after a failed probe or a broken stream). */
  moves: number;
  /** Of those, moves after a failed probe (a hung or cut-off member). */
  hangs: number;
  probes: number;
  /** When the last hang was detected (ms, `now()`), null before the first. */
  lastHangAt: number | null;
}

export const PROBE_INTERVAL_MS = 1000;
export const PROBE_TIMEOUT_MS = 1500;

export class WatchHealth {
  private readonly endpoints: readonly string[];
  private readonly connect: (endpoint: string) => Etcd3;
  private readonly log: Logger;
  private readonly intervalMs: number;
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private index = 0;
  private current: Etcd3 | null = null;
  private moves = 0;
  private hangs = 0;
  private probes = 0;
  private lastHangAt: number | null = null;
  private watching: { key: Buffer; onHung: (reason: string) => void; generation: number } | null = null;
  private generation = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly moveWaiters = new Set<() => void>();
  private closed = false;

  constructor(opts: WatchHealthOptions) {
    if (opts.endpoints.length < 2) throw new CladnetError('ECONFIG', 'etcd: a watch health check needs at least two endpoints', { field: 'etcd' });
    this.endpoints = opts.endpoints.map(normalizeEndpoint);
    this.connect = opts.connect;
    this.log = opts.log.child({ component: 'etcd-member' });
    this.intervalMs = opts.intervalMs ?? PROBE_INTERVAL_MS;
    this.timeoutMs = opts.timeoutMs ?? PROBE_TIMEOUT_MS;
    this.now = opts.now ?? Date.now;
  }

  /** The client bound to the current member (made on first use after a move). */
  client(): Etcd3 {
    if (this.closed) throw new Error('watch health is closed');
    this.current ??= this.connect(this.endpoints[this.index]!);
    return this.current;
  }

  /** The current member's endpoint. */
  member(): string {
    return this.endpoints[this.index]!;
  }

  /**
   * A watch is attached on the current member: probe it (reading `probeKey`) until `detached()` or
   * a move. `onHung` is called after a failed probe, once we have moved to the next member.
   */
  attached(probeKey: string, onHung: (reason: string) => void): void {
    if (this.closed) return;
    this.detached();
    this.watching = { key: Buffer.from(probeKey), onHung, generation: this.generation };
    this.schedule();
  }

  /** The watch is gone (dropped, or the registry closes): stop probing. */
  detached(): void {
    this.watching = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** The current member failed us (its stream broke, or a probe failed): use the next one. */
  fail(reason: string): void {
    if (this.closed) return;
    this.detached();
    const from = this.member();
    this.index = (this.index + 1) % this.endpoints.length;
    this.generation++;
    this.moves++;
    const old = this.current;
    this.current = null;
    // After the caller has cancelled what it ran there (this tick), close the old channels.
    if (old) setImmediate(() => old.close());
    this.log.info({ from, to: this.member(), reason }, 'etcd streams move to another member');
    this.wakeMoveWaiters();
  }

  /** Calls `fn` once at the next move (or close); returns the way to take it back. */
  onMove(fn: () => void): () => void {
    if (this.closed) {
      fn();
      return () => undefined;
    }
    this.moveWaiters.add(fn);
    return () => void this.moveWaiters.delete(fn);
  }

  stats(): WatchHealthStats {
    return { member: this.member(), moves: this.moves, hangs: this.hangs, probes: this.probes, lastHangAt: this.lastHangAt };
  }

  close(): void {
    if (this.closed) return;
    this.detached();
    this.closed = true;
    this.current?.close();
    this.current = null;
    this.wakeMoveWaiters();
  }

  private wakeMoveWaiters(): void {
    const waiters = [...this.moveWaiters];
    this.moveWaiters.clear();
    for (const w of waiters) w();
  }

  private schedule(): void {
    if (!this.watching || this.closed) return;
    this.timer = setTimeout(() => void this.probe(), this.intervalMs);
    this.timer.unref();
  }

  private async probe(): Promise<void> {
    this.timer = null;
    const w = this.watching;
    if (!w || this.closed || w.generation !== this.generation) return;
    this.probes++;
    const member = this.member();
    let failure: string | null = null;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.client().kv.range({ key: w.key, limit: 1, keys_only: true, serializable: false }, { deadline: this.now() + this.timeoutMs }),
        new Promise<never>((_, reject) => {
          // gRPC's deadline should end it; this is in case the call never gets that far.
          timer = setTimeout(() => reject(new Error(`no answer in ${this.timeoutMs} ms`)), this.timeoutMs + 500);
          timer.unref();
        }),
      ]);
    } catch (e) {
      failure = (e as Error).message;
    } finally {
      clearTimeout(timer);
    }
    // A move or a new watch while the probe ran makes its result moot.
    if (this.watching !== w || w.generation !== this.generation || this.closed) return;
    if (failure === null) {
      this.schedule();
      return;
    }
    this.hangs++;
    this.lastHangAt = this.now();
    this.log.warn({ member, err: failure }, 'etcd member does not serve linearizable reads (cut off from its cluster, or hung); moving the watch');
    this.fail('probe failed');
    w.onHung(failure);
  }
}
