import type { Etcd3, IKeyValue, IWatchResponse, Watcher } from 'etcd3';
import type { Logger } from '../log';
import { isTooLargeError, isTransientEtcdError } from './etcd';
import type { EtcdLink } from './etcd-link';
import { parseKey } from './keys';
import type { HostEntry } from './peers';
import { etcdPages, prefixEnd, readPrefix, type PageFetcher } from './range';
import { parseHostRecord, parseLeaseRecord, recordSizeError } from './records';
import type { WatchHealth } from './watch-health';

/**
 * The etcd mirror of one network (registry job 3, watch): load the network prefix at revision R
 * (in pages, range.ts), watch from R+1, and keep hosts, alive keys and leases (values over their
 * size cap skipped). Revocation events go to `onRevocation` (the trust side keeps them sticky).
 *
 * On disconnect the watcher is dropped (etcd3 would redial on its own clock); on the shared
 * `EtcdLink` schedule (backoff with jitter up to 30 s) a one-key read probes etcd, and once it
 * answers the watch resumes from the last applied revision + 1: no reload, the events of the
 * outage arrive on the resumed watch. Only a watch cancel (its revision compacted) or a watch
 * message too large reloads the prefix (in pages). While etcd is down the mirror keeps its last
 * state; a disconnect never empties it.
 *
 * With several etcd members (`health`, watch-health.ts) the watch runs on the member `health`
 * holds and is probed there: a broken stream or a failed probe moves it to the next member, where
 * it resumes the same way (the probe before the resume tells the link whether etcd answers at all).
 *
 * Deltas: every applied key is recorded in `touched` (host names, alive names, lease addresses;
 * `all` after a (re)load replaced the whole mirror) until the owner takes it with `takeTouched()`.
 * `onChange` is called after each applied batch that concerned this network; the owner coalesces.
 */

export interface Touched {
  /** The whole mirror was replaced (a load): every name may have changed. */
  all: boolean;
  hosts: Set<string>;
  alive: Set<string>;
  /** Overlay addresses whose lease changed. */
  leases: Set<string>;
}

export interface NetworkWatchOptions {
  client: Etcd3;
  network: string;
  prefix: string;
  log: Logger;
  link: EtcdLink;
  /** A /revoked/<name> key was put or deleted; true when that changed what the trust side holds. */
  onRevocation: (name: string, value: Buffer, modRevision: string, deleted: boolean) => boolean;
  /** A /tokens-revoked/<id> key was put or deleted; true when that changed what the trust side holds. */
  onTokenRevocation: (token: string, value: Buffer, modRevision: string, deleted: boolean) => boolean;
  /** The /policy key was put or deleted (src/control/policy.ts verifies and keeps it). */
  onPolicy?: (value: Buffer, modRevision: string, deleted: boolean) => void;
  /** Something of this network changed (called after each batch or load). */
  onChange: () => void;
  /** With several etcd members: where the watch runs, and its health check (not owned). */
  health?: WatchHealth;
  /**
   * Keep the hosts' views (/views/<name>, raw) in `views` (the dashboard). Off for agents: they
   * skip those keys without a look.
   */
  keepViews?: boolean;
}

/** A host's view as stored (views.ts parses it). */
export interface RawView {
  readonly modRevision: string;
  readonly value: Buffer;
}

export interface WatchCounters {
  reloads: number; // full prefix loads that succeeded (the first one included)
  loadPages: number; // etcd Range calls made by the last successful load
  loadKeys: number; // keys read by the last successful load
  resumes: number; // watches resumed from the last applied revision after a disconnect
  rangeKeys: number; // keys returned by every Range made (loads and probes)
  rangeBytes: number; // bytes of those keys and values
  oversizedRecords: number; // values over their type's size cap or too large to fetch
  invalidRecords: number; // non-host values skipped as oversized (host ones are counted by the trust side)
  watchEvents: number;
  revision: number; // newest etcd revision applied
}

const CANCEL_WAIT_MS = 1000;
const WATCH_ATTACH_WAIT_MS = 2000;

function emptyTouched(all = false): Touched {
  return { all, hosts: new Set(), alive: new Set(), leases: new Set() };
}

export class NetworkWatch {
  readonly hosts = new Map<string, HostEntry>();
  readonly aliveNames = new Set<string>();
  readonly leases = new Map<string, string | null>();
  /** Hosts' views, only with `keepViews`. */
  readonly views = new Map<string, RawView>();
  readonly counters: WatchCounters = {
    reloads: 0,
    loadPages: 0,
    loadKeys: 0,
    resumes: 0,
    rangeKeys: 0,
    rangeBytes: 0,
    oversizedRecords: 0,
    invalidRecords: 0,
    watchEvents: 0,
    revision: 0,
  };
  private touched: Touched = emptyTouched();
  private closed = false;
  private floor = 0; // events at or below this revision are already in the loaded state
  private pending: IWatchResponse[] | null = null; // events that arrive while a load is in flight
  private watcher: Watcher | null = null;
  private watchConnected = false;
  private watchLost = false;
  private loadedOk = false;
  private syncing = false;
  private syncAgain = false;
  private needWatcher = false;
  private sleepWake: (() => void) | null = null;
  private outageLogged = false;
  /** After a plain disconnect: probe etcd and resume the watch instead of reloading. */
  private resumeNext = false;
  private readonly warnedKeys = new Map<string, string>(); // etcd key -> mod revision warned about

  constructor(private readonly opts: NetworkWatchOptions) {}

  /** What changed since the last call (and resets it). */
  takeTouched(): Touched {
    const t = this.touched;
    this.touched = emptyTouched();
    return t;
  }

  /** True while etcd answers: the last load succeeded and the watch stream has not been lost since. */
  connected(): boolean {
    return this.loadedOk && this.watcher !== null && !this.watchLost;
  }

  /** True once a load succeeded (etcd answered at least once). */
  get loaded(): boolean {
    return this.loadedOk;
  }

  /**
   * First load and watch: true when etcd answered (the watch is started; `attach` resolves once
   * it is attached). False: etcd is retried in the background on the link's schedule.
   */
  async start(): Promise<{ ok: true; attach: () => Promise<void> } | { ok: false }> {
    if (await this.loadOnce()) {
      if (this.closed) return { ok: false };
      const w = this.startWatcher(this.counters.revision + 1);
      return { ok: true, attach: () => this.attached(w) };
    }
    if (this.closed) return { ok: false };
    this.needWatcher = true;
    void this.runSync();
    return { ok: false };
  }

  /**
   * Loads the whole network prefix once, in pages at one revision (range.ts); false (logged once
   * per outage) when etcd fails.
   */
  private async loadOnce(): Promise<boolean> {
    const { log, link } = this.opts;
    this.pending = [];
    let res;
    try {
      res = await readPrefix(this.pages(), this.opts.prefix);
    } catch (e) {
      this.pending = null;
      this.loadedOk = false;
      if (isTransientEtcdError(e)) link.failed(e);
      // (the link logs the outage itself; this says what waits for it)
      if (!this.outageLogged) log.debug({ err: (e as Error).message }, 'cannot load peers from etcd; will retry');
      this.outageLogged = true;
      return false;
    }
    if (this.closed) return false;
    const buffered = this.pending;
    this.pending = null;
    this.hosts.clear();
    this.aliveNames.clear();
    this.leases.clear();
    this.views.clear();
    this.touched = emptyTouched(true);
    for (const kv of res.kvs) this.applyKv(kv, false);
    for (const kv of res.unreadable) this.skipUnreadable(kv);
    this.floor = this.counters.revision = Number(res.revision);
    for (const r of buffered) this.applyResponse(r);
    if (this.outageLogged) log.debug({ revision: this.counters.revision }, 'peers reloaded from etcd');
    if (res.refusedPages > 0) {
      log.warn({ refusedPages: res.refusedPages, unreadable: res.unreadable.length }, 'etcd pages too large for the client: read them in smaller pages (records stuffed by a member?)');
    }
    log.debug({ revision: this.counters.revision, keys: res.kvs.length, pages: res.pages, restarts: res.restarts }, 'network loaded');
    this.counters.loadPages = res.pages;
    this.counters.loadKeys = res.kvs.length;
    this.resumeNext = false;
    link.ok(); // (a registry with a private link hears of no other call)
    this.outageLogged = false;
    this.loadedOk = true;
    this.counters.reloads++;
    this.opts.onChange();
    return true;
  }

  /** A key whose value alone was too large to fetch: a host is rejected (counted by the trust side), others are warned about here. */
  private skipUnreadable(kv: IKeyValue): void {
    const k = parseKey(kv.key);
    if (!k || k.network !== this.opts.network) return;
    const why = 'value too large for the etcd client to fetch';
    if (k.kind === 'host') {
      this.countOversized(kv);
      this.hosts.set(k.name, { modRevision: kv.mod_revision, parsed: { ok: false, error: why } });
      this.touched.hosts.add(k.name);
    } else {
      this.warnOversized(kv, why);
    }
  }

  /** Counts an oversized value once per (key, mod revision); true the first time. */
  private countOversized(kv: IKeyValue): boolean {
    const key = kv.key.toString('utf8');
    if (this.warnedKeys.get(key) === kv.mod_revision) return false;
    this.warnedKeys.set(key, kv.mod_revision);
    if (this.warnedKeys.size > 4096) this.warnedKeys.delete(this.warnedKeys.keys().next().value!);
    this.counters.oversizedRecords++;
    return true;
  }

  /** Skips a non-host value over its cap: warned about and counted as invalid once per (key, mod revision). */
  private warnOversized(kv: IKeyValue, error: string): void {
    if (!this.countOversized(kv)) return;
    this.counters.invalidRecords++;
    this.opts.log.warn({ etcdKey: kv.key.toString('utf8'), modRevision: kv.mod_revision, error }, 'skipping oversized record');
  }

  /** etcd's Range calls, counted (keys and bytes read). */
  private pages(client: Etcd3 = this.opts.client): PageFetcher {
    const fetch = etcdPages(client);
    return async (req) => {
      const res = await fetch(req);
      this.counters.rangeKeys += res.kvs.length;
      for (const kv of res.kvs) this.counters.rangeBytes += kv.key.length + kv.value.length;
      return res;
    };
  }

  /**
   * Before resuming a watch: one Range of a single key, so a down etcd costs one cheap call per
   * retry round (and the link hears of it) instead of a watch stream etcd3 would redial itself.
   * With several members it asks the member the watch will run on; if that one fails, the next
   * retry asks the next member.
   */
  private async probe(): Promise<boolean> {
    const { prefix, link, log, health } = this.opts;
    try {
      await this.pages(health?.client())({ start: Buffer.from(prefix), end: prefixEnd(Buffer.from(prefix)), limit: 1, keysOnly: true });
    } catch (e) {
      if (isTransientEtcdError(e)) link.failed(e);
      else this.resumeNext = false; // not a connection problem: let the reload path deal with it
      if (health && !this.closed) health.fail((e as Error).message);
      if (!this.outageLogged) log.debug({ err: (e as Error).message }, 'cannot reach etcd to resume the watch; will retry');
      this.outageLogged = true;
      return false;
    }
    link.ok();
    this.outageLogged = false;
    return true;
  }

  private requestSync(newWatcher: boolean): void {
    if (newWatcher) this.needWatcher = true;
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    void this.runSync();
  }

  private async runSync(): Promise<void> {
    if (this.syncing) return;
    this.syncing = true;
    try {
      while (!this.closed) {
        this.syncAgain = false;
        const resume = this.resumeNext && this.needWatcher;
        const ok = resume ? await this.probe() : await this.loadOnce();
        if (this.closed) break;
        if (ok) {
          if (this.needWatcher) {
            this.needWatcher = false;
            if (resume) {
              this.counters.resumes++;
              this.opts.log.debug({ revision: this.counters.revision }, 'etcd watch reconnected; resuming from the last applied revision');
            } else if (this.watchLost) this.opts.log.debug('etcd watch reconnected; reloaded');
            this.resumeNext = false;
            this.startWatcher(this.counters.revision + 1);
          }
          if (!this.syncAgain) break;
          continue;
        }
        await this.sleep();
      }
    } finally {
      this.syncing = false;
    }
  }

  /** Until the link's next retry round (or close()). */
  private sleep(): Promise<void> {
    return new Promise((resolve) => {
      this.sleepWake = resolve;
      void this.opts.link.wait().then(() => {
        if (this.sleepWake === resolve) this.sleepWake = null;
        resolve();
      });
    });
  }

  /** Resolves when `w` is attached to etcd (or lost, or after WATCH_ATTACH_WAIT_MS). */
  private attached(w: Watcher): Promise<void> {
    if (this.watchConnected) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        w.off('connected', done).off('disconnected', done).off('error', done);
        resolve();
      };
      const timer = setTimeout(done, WATCH_ATTACH_WAIT_MS);
      w.on('connected', done).on('disconnected', done).on('error', done);
    });
  }

  private startWatcher(fromRevision: number): Watcher {
    const { prefix, log, link, health } = this.opts;
    const client = health?.client() ?? this.opts.client;
    const w = client.watch().prefix(prefix).startRevision(String(fromRevision)).watcher();
    this.watcher = w;
    this.watchLost = false;
    w.on('connected', () => {
      if (w !== this.watcher) return;
      this.watchConnected = true;
      health?.attached(prefix, () => this.watchHung(w));
    });
    w.on('disconnected', (err) => {
      if (w !== this.watcher) return;
      // Left attached, etcd3 would redial on its own clock (and each failed dial opens a fresh
      // gRPC channel). Drop the watcher; runSync retries on the link's schedule and watches again.
      this.dropWatcher(w, true);
      if (isTooLargeError(err)) {
        // A catch-up batch (events since our revision, sent as one message) over the receive
        // limit: resuming would ask for the same batch again, forever. Reload in pages and watch
        // from the new revision instead.
        log.warn({ err: err.message }, 'etcd watch message too large (records stuffed by a member?); reloading and watching from now');
        this.resumeNext = false;
      } else {
        // Every event up to the applied revision is in the mirror: the resumed watch brings the rest.
        this.resumeNext = this.counters.reloads > 0;
        if (!this.watchLost) log.debug({ err: err.message }, 'etcd watch disconnected; keeping the last peer set');
        this.watchLost = true;
        if (health) health.fail(err.message);
        else link.failed(err);
      }
      this.requestSync(true);
    });
    w.on('data', (res) => {
      if (w !== this.watcher) return;
      if (this.pending) this.pending.push(res);
      else this.applyResponse(res);
    });
    w.on('error', (err) => {
      if (w !== this.watcher) return;
      log.warn({ err: err.message }, 'etcd watch cancelled (compacted?); reloading and watching again');
      // etcd3 has already dropped a cancelled watcher; cancelling it again would send a cancel for
      // a watch id the stream no longer knows.
      this.dropWatcher(w, false);
      this.resumeNext = false;
      this.requestSync(true);
    });
    return w;
  }

  /** The member under `w` failed a probe (watch-health.ts has moved on): resume on the next one. */
  private watchHung(w: Watcher): void {
    if (w !== this.watcher) return;
    this.dropWatcher(w, true);
    this.resumeNext = this.counters.reloads > 0;
    this.watchLost = true;
    this.requestSync(true);
  }

  /** Forgets `w` (and detaches it from etcd3 when `cancel`), ignoring its later events. */
  private dropWatcher(w: Watcher, cancel: boolean): void {
    if (this.watcher === w) this.opts.health?.detached();
    w.removeAllListeners();
    w.on('error', () => undefined);
    if (cancel) void w.cancel().catch(() => undefined);
    if (this.watcher === w) this.watcher = null;
    this.watchConnected = false;
  }

  private applyResponse(res: IWatchResponse): void {
    let changed = false;
    let rev = 0;
    for (const ev of res.events) {
      const mod = Number(ev.kv.mod_revision);
      if (mod > rev) rev = mod;
      if (mod <= this.floor) continue;
      this.counters.watchEvents++;
      changed = this.applyKv(ev.kv, ev.type === 'Delete') || changed;
    }
    // The resume point. With events, their newest revision: a catch-up batch's header carries
    // etcd's current revision although later batches may still be on their way. Without events
    // (a progress notification, sent only to a watch that has caught up), the header's.
    if (res.events.length === 0) rev = Number(res.header.revision);
    if (rev > this.counters.revision) this.counters.revision = rev;
    if (changed) this.opts.onChange();
  }

  /** Applies one key's new state; true when it concerns this network. */
  private applyKv(kv: IKeyValue, deleted: boolean): boolean {
    const k = parseKey(kv.key);
    if (!k || k.network !== this.opts.network) return false;
    switch (k.kind) {
      case 'host': {
        this.touched.hosts.add(k.name);
        if (deleted) {
          this.hosts.delete(k.name);
          return true;
        }
        // Over the cap: keep only the reason, not the value (it is warned about and counted by the trust side).
        const big = recordSizeError('host', kv.value);
        if (big !== null) this.countOversized(kv);
        const parsed = big !== null ? ({ ok: false, error: big } as const) : parseHostRecord(kv.value, { network: k.network, name: k.name });
        this.hosts.set(k.name, { modRevision: kv.mod_revision, parsed });
        return true;
      }
      case 'alive': {
        this.touched.alive.add(k.name);
        const big = deleted ? null : recordSizeError('alive', kv.value);
        if (big !== null) this.warnOversized(kv, big);
        if (deleted || big !== null) this.aliveNames.delete(k.name);
        else this.aliveNames.add(k.name);
        return true;
      }
      case 'lease': {
        this.touched.leases.add(k.ip);
        if (deleted) {
          this.leases.delete(k.ip);
        } else {
          const lease = parseLeaseRecord(kv.value);
          this.leases.set(k.ip, lease.ok ? lease.value.host : null);
        }
        return true;
      }
      case 'view': {
        if (!this.opts.keepViews) return false;
        if (deleted) this.views.delete(k.name);
        else this.views.set(k.name, { modRevision: kv.mod_revision, value: kv.value });
        return true;
      }
      case 'revoked':
        return this.opts.onRevocation(k.name, kv.value, kv.mod_revision, deleted);
      case 'tokenRevoked':
        return this.opts.onTokenRevocation(k.token, kv.value, kv.mod_revision, deleted);
      case 'policy':
        this.opts.onPolicy?.(kv.value, kv.mod_revision, deleted);
        return false;
      default:
        return false;
    }
  }

  /** Stops the watch and the retries (the etcd client stays open). */
  async close(): Promise<void> {
    this.closed = true;
    this.sleepWake?.();
    this.sleepWake = null;
    const w = this.watcher;
    this.watcher = null;
    this.watchConnected = false;
    this.opts.health?.detached();
    if (w) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        w.cancel().catch(() => undefined),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, CANCEL_WAIT_MS);
        }),
      ]);
      clearTimeout(timer);
    }
  }
}
