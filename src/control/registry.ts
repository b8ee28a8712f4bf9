import type { Etcd3 } from 'etcd3';
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { parseOverlayCidr, Prefix } from '../util/ipv4';
import { TrustAnchor } from './cert';
import { EtcdLink } from './etcd-link';
import { MemberEvaluator, type EvaluatorWork, type PeerDelta } from './evaluator';
import type { AddressConflict } from './holders';
import { aliveKey, checkName, networkPrefix, viewKey, viewsPrefix } from './keys';
import { Liveness } from './liveness';
import { PeerCache, type CacheChange } from './peer-cache';
import { Publisher, type PublishResult } from './publisher';
import { checkRecordSize, HostCert, HostRecord, NetworkSpec } from './records';
import { Revocations } from './revocations';
import { VIEW_CAP_BYTES } from './views';
import { NetworkWatch, type RawView } from './watch';
import { LATE, settleWithin } from '../util/settle';
import type { WatchHealth } from './watch-health';

export type { PublishResult } from './publisher';

/**
 * One network's registry, seen from one host: a small object that wires five jobs, one module each.
 *
 * 1. publish: our host record with a monotonic epoch, never over a newer writer's (publisher.ts).
 * 2. alive:   an etcd lease (TTL 10 s, keepalive) carrying /alive/<self>; re-granted if lost
 *             (liveness.ts).
 * 3. watch:   the etcd mirror of the network prefix: paged load, watch, resume after a disconnect
 *             from the last applied revision (watch.ts). After each change of the peer set (same-
 *             tick bursts coalesced) the watcher hears of it. While etcd is down the last peer set
 *             stays; a disconnect never empties it.
 * 4. cache:   optionally the last snapshot on disk, used at start when etcd is unreachable
 *             (peer-cache.ts).
 * 5. trust:   certificates, sticky revocations (revocations.ts), address holders, remembered
 *             certificates and membership (evaluator.ts over peers.ts and roster.ts). A network
 *             spec without a trust anchor (made before certificates) is not verified at all; the
 *             agent refuses to join such a network.
 *
 * Two ways to watch, one per registry:
 *
 * - `watch(onPeers)`: a fresh frozen snapshot of every peer after each change (simple; O(N) per
 *   change to build, for tools and tests).
 * - `watchChanges(onChange)`: only what changed (`PeerChange`: added, changed, removed), with
 *   work proportional to the change all the way: the watch records which keys changed, the
 *   evaluator re-checks those hosts and the ones whose outcome can depend on them (the claimants
 *   of the same overlay address), and the peer set is patched. The agent uses this one.
 *   `peers()` still gives a full snapshot on demand (built once per change, when asked).
 *
 * Full evaluations (every host) happen only after a (re)load of the prefix, on a certificate or
 * silence timer, when a revocation arrives or our own standing changes (evaluator.ts). The cache
 * file is written at most once every few seconds and on close (peer-cache.ts).
 *
 * The registry does not own the etcd client: `close()` stops timers, watch and liveness only.
 */

export interface RegistryOptions {
  client: Etcd3;
  network: NetworkSpec;
  /** Our host name; none for an observer. */
  self?: string;
  /**
   * Watch only, as no host (`cladnet dashboard`): every valid host is a member, nothing is
   * published, and the hosts' views are kept (`views()`).
   */
  observer?: boolean;
  /** Called after every change etcd brought (coalesced by the caller), peer set changed or not. */
  onMirrorChange?: () => void;
  log: Logger;
  /** Milliseconds since the Unix epoch; drives epochs and `updated`. */
  now?: () => number;
  /** Where to keep the last peer snapshot (JSON, mode 0600). */
  cacheFile?: string;
  /** Liveness lease TTL in seconds (default 10). */
  aliveTtlSec?: number;
  /**
   * The anchor host records are checked against. Default: the spec's `trustAnchor`. The agent
   * passes the one from its local certificate file, pinned, so a rewritten spec cannot swap it.
   */
  trust?: TrustAnchor;
  /** Our own certificate: if it is revoked or expires, we drop every peer. */
  selfCert?: HostCert;
  /**
   * When the newest authenticated packet from a peer arrived (ms since the epoch; 0 or null:
   * never). A member with no record and no alive key stays while it was heard within SILENCE_MS.
   */
  heardAt?: (name: string) => number | null;
  /** Shared etcd up/down state and retry schedule (give the same one to createEtcd); default a private one. */
  link?: EtcdLink;
  /**
   * With several etcd members: the member the watch and the liveness keepalive run on, probed so a
   * watch held by a member cut off from its cluster moves (watch-health.ts). Not owned: the caller
   * closes it after the registry.
   */
  health?: WatchHealth;
  /** The network's /policy key was put or deleted (the agent verifies it: src/control/policy.ts). */
  onPolicy?: (value: Buffer, modRevision: string, deleted: boolean) => void;
}

export type PeerSnapshot = ReadonlyMap<string, HostRecord>;
export type PeersCallback = (peers: PeerSnapshot) => void;

/** One change of the peer set (`watchChanges`). The first one lists every peer as added. */
export interface PeerChange {
  /** New peers with their records. */
  readonly added: ReadonlyMap<string, HostRecord>;
  /** Peers whose record changed (a republish), with the new record. */
  readonly changed: ReadonlyMap<string, HostRecord>;
  readonly removed: ReadonlySet<string>;
}
export type PeerChangeCallback = (change: PeerChange) => void;

/** Where the first snapshot came from: etcd, the cache file (etcd unreachable), or nowhere yet. */
export type WatchSource = 'etcd' | 'cache' | 'none';

export interface RegistryStats {
  invalidRecords: number; // distinct (key, mod revision) pairs skipped as invalid (untrusted ones included)
  untrustedRecords: number; // of those, the ones that parsed but failed the certificate checks
  revokedHosts: number; // hosts currently skipped because their certificate is revoked
  addressConflicts: number; // certificates currently refused because an earlier one holds their address
  revocations: number; // verified revocations held (sticky)
  invalidRevocations: number; // distinct (key, mod revision) revocation records ignored as invalid
  reloads: number; // full prefix loads that succeeded (the first one included)
  loadPages: number; // etcd Range calls made by the last successful load (it reads in pages)
  loadKeys: number; // keys read by the last successful load
  resumes: number; // watches resumed from the last applied revision after a disconnect (no reload)
  rangeKeys: number; // keys returned by every Range this registry made (loads and probes)
  rangeBytes: number; // bytes of those keys and values
  oversizedRecords: number; // of invalidRecords, values over their type's size cap or too large to fetch
  watchEvents: number;
  peers: number;
  revision: number; // newest etcd revision applied
  connected: boolean;
  source: WatchSource;
}

export const ALIVE_TTL_SEC = 10;

function freezeMap<K, V>(m: Map<K, V>): ReadonlyMap<K, V> {
  const readOnly = (): never => {
    throw new TypeError('peer snapshot is read-only');
  };
  Object.defineProperties(m, { set: { value: readOnly }, delete: { value: readOnly }, clear: { value: readOnly } });
  return Object.freeze(m);
}

function sortedCopy(m: ReadonlyMap<string, HostRecord>): Map<string, HostRecord> {
  return new Map([...m.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

export class Registry {
  private readonly client: Etcd3;
  private readonly spec: NetworkSpec;
  private readonly self: string;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly aliveTtl: number;
  private readonly cidr: Prefix;
  private readonly cacheFile: string | undefined;
  private readonly observer: boolean;
  private viewValue: string | null = null;
  private closed = false;

  private readonly publisher: Publisher;
  private alive: Liveness | null = null;
  private readonly link: EtcdLink;
  private readonly health: WatchHealth | undefined;
  private readonly ownLink: boolean;
  private readonly mirror: NetworkWatch;
  /** An observer's second watch: the hosts' views (outside the network's prefix, keys.ts). */
  private readonly viewsWatch: NetworkWatch | null;
  private readonly cache: PeerCache | null;
  private readonly revocations: Revocations;
  private readonly evaluator: MemberEvaluator;

  private onChange: PeerChangeCallback | null = null;
  private emitScheduled: NodeJS.Immediate | null = null;
  /** The full snapshot, built when asked for (null: stale). */
  private snapshot: PeerSnapshot | null = freezeMap(new Map());
  private delivered = false;
  /** The next evaluation re-checks every host (a revocation arrived, a timer fired). */
  private fullNext = false;
  private source: WatchSource = 'none';

  constructor(opts: RegistryOptions) {
    this.client = opts.client;
    this.spec = opts.network;
    this.observer = opts.observer === true;
    if (this.observer && opts.self !== undefined) throw new CladnetError('ECONFIG', 'self: an observer is no host', { field: 'self' });
    this.self = this.observer ? '' : checkName(opts.self, 'self');
    this.log = opts.log.child({ component: 'registry', network: opts.network.name });
    this.now = opts.now ?? Date.now;
    this.aliveTtl = opts.aliveTtlSec ?? ALIVE_TTL_SEC;
    if (!Number.isInteger(this.aliveTtl) || this.aliveTtl < 2) {
      throw new CladnetError('ECONFIG', `aliveTtlSec: ${this.aliveTtl} must be an integer >= 2`, { field: 'aliveTtlSec' });
    }
    this.cidr = parseOverlayCidr(opts.network.cidr, 'cidr');
    this.cacheFile = opts.cacheFile;
    const trust = opts.trust ?? null;
    this.ownLink = opts.link === undefined;
    this.link = opts.link ?? new EtcdLink({ log: opts.log });
    this.health = opts.health;
    if (trust && trust.network !== opts.network.name) {
      throw new CladnetError('ECONFIG', `trust: anchor of network ${trust.network}, not ${opts.network.name}`, { field: 'trust' });
    }
    if (trust && opts.network.trustAnchor !== undefined && opts.network.trustAnchor !== trust.publicKey) {
      throw new CladnetError('EKEY', `trustAnchor: the network spec's anchor differs from the pinned one (${trust.publicKey})`, {
        field: 'trustAnchor',
      });
    }
    this.publisher = new Publisher({
      client: this.client,
      network: this.spec,
      cidr: this.cidr,
      self: this.self,
      log: this.log,
      now: this.now,
      closed: () => this.closed,
    });
    this.revocations = new Revocations(this.spec.name, this.log);
    this.evaluator = new MemberEvaluator({
      self: this.self,
      cidr: this.cidr,
      cidrText: this.spec.cidr,
      network: this.spec.name,
      log: this.log,
      revocations: this.revocations,
      selfCert: opts.selfCert,
      heardAt: opts.heardAt,
      onTimer: () => {
        this.fullNext = true;
        this.emit();
      },
    });
    this.evaluator.trust = trust;
    this.mirror = new NetworkWatch({
      client: this.client,
      network: this.spec.name,
      prefix: networkPrefix(this.spec.name),
      log: this.log,
      link: this.link,
      health: opts.health,
      onRevocation: (name, value, modRevision, deleted) => {
        if (deleted) {
          if (this.revocations.has(name)) this.log.warn({ host: name }, 'revocation deleted from etcd; still honouring it');
          return false;
        }
        const added = this.revocations.apply(this.evaluator.trust, name, value, modRevision);
        if (added) this.fullNext = true;
        return added;
      },
      onTokenRevocation: (token, value, modRevision, deleted) => {
        if (deleted) return false; // sticky, like host revocations
        const added = this.revocations.applyToken(this.evaluator.trust, this.evaluator.tokens, token, value, modRevision);
        if (added) this.fullNext = true;
        return added;
      },
      onPolicy: opts.onPolicy,
      onChange: () => {
        if (this.mirror.loaded) this.source = 'etcd';
        this.scheduleEmit();
        opts.onMirrorChange?.();
      },
    });
    this.viewsWatch = this.observer
      ? new NetworkWatch({
          client: this.client,
          network: this.spec.name,
          prefix: viewsPrefix(this.spec.name),
          log: this.log,
          link: this.link,
          keepViews: true,
          onRevocation: () => false,
          onTokenRevocation: () => false,
          onChange: () => opts.onMirrorChange?.(),
        })
      : null;
    this.cache = opts.cacheFile
      ? new PeerCache({ file: opts.cacheFile, network: this.spec, cidr: this.cidr, self: this.self, log: this.log, now: this.now })
      : null;
  }

  // ---- 1. publish (publisher.ts) -------------------------------------------------------------

  /** Writes our host record (see publisher.ts: monotonic epoch, never over a newer writer's). */
  publish(record: HostRecord): Promise<PublishResult> {
    return this.publisher.publish(record);
  }

  /** Abandons the publish in flight (see Publisher.abort): our addresses changed under it. */
  abortPublish(): boolean {
    return this.publisher.abort();
  }

  // ---- 2. alive (liveness.ts) ------------------------------------------------------------------

  /**
   * Grants a lease (TTL `aliveTtlSec`) with keepalive and puts /alive/<self> on it. Resolves once
   * the key is written; rejects (EETCD) if the first attempt fails, but keeps retrying in the
   * background either way, and re-grants whenever the lease is lost, until `stopAlive()`.
   */
  async startAlive(): Promise<void> {
    if (this.closed) throw new Error('registry is closed');
    if (this.observer) throw new Error('an observer has no liveness');
    if (this.alive) return;
    this.alive = new Liveness({
      client: this.client,
      key: aliveKey(this.spec.name, this.self),
      value: () => {
        const value = JSON.stringify({ version: 1, host: this.self, since: new Date(this.now()).toISOString() });
        checkRecordSize('alive', value);
        return value;
      },
      ttlSec: this.aliveTtl,
      log: this.log,
      link: this.link,
      via: this.health,
    });
    if (this.viewValue !== null) this.alive.attach(viewKey(this.spec.name, this.self), this.viewValue);
    await this.alive.start();
  }

  /**
   * Our view of the peers (views.ts, serialized), put on the liveness lease: written once etcd
   * answers and we hold the lease, again on every new lease, gone with it. Fire and forget
   * (Liveness.attach): never waits, never throws, coalesced.
   */
  publishView(value: string): void {
    if (this.closed || this.observer) return;
    if (Buffer.byteLength(value) > VIEW_CAP_BYTES) {
      this.log.debug({ bytes: Buffer.byteLength(value) }, 'view too large to publish; skipped');
      return;
    }
    this.viewValue = value;
    this.alive?.attach(viewKey(this.spec.name, this.self), value);
  }

  /** Revokes the lease, so /alive/<self> disappears now (the host record stays). */
  async stopAlive(): Promise<void> {
    const alive = this.alive;
    this.alive = null;
    await alive?.stop();
  }

  // ---- 3. watch (watch.ts) ---------------------------------------------------------------------

  /**
   * Starts watching; `onPeers` gets a fresh frozen snapshot after every change of the peer set.
   * Resolves once a first snapshot was delivered: from etcd, else from the cache file ('cache'),
   * else none ('none', etcd unreachable and no cache); etcd is retried in the background.
   */
  watch(onPeers: PeersCallback): Promise<WatchSource> {
    return this.watchChanges(() => onPeers(this.peers()));
  }

  /**
   * Starts watching; `onChange` gets what changed in the peer set after every change (the first
   * call lists every peer as added, and comes even when there are none). Resolves like `watch`.
   * With a cache and `cacheAfterMs`, etcd gets that long: then the cached peers are delivered
   * ('cache'), and etcd's, when its load completes, as a change from them.
   */
  async watchChanges(onChange: PeerChangeCallback, opts: { cacheAfterMs?: number } = {}): Promise<WatchSource> {
    if (this.closed) throw new Error('registry is closed');
    if (this.onChange) throw new Error('registry is already watching');
    this.onChange = onChange;
    if (!this.evaluator.trust && this.spec.trustAnchor !== undefined) {
      this.evaluator.trust = new TrustAnchor(await loadEd25519(), this.spec.name, this.spec.trustAnchor);
    }
    const trust = this.evaluator.trust;
    if (!trust) this.log.warn('network has no trust anchor: host records are NOT verified (made before certificates?)');
    const doc = this.cache ? await this.cache.read() : null;
    let cached: PeerSnapshot | null = null;
    if (doc && this.cache) {
      this.revocations.load(trust, doc.revocations);
      this.evaluator.knownCerts.load(doc.certs, this.spec.name);
      if (trust) this.evaluator.tokens.load(doc.tokens, trust);
      cached = freezeMap(this.cache.peersOf(doc, trust, this.revocations));
      // The last peer set stays the membership: its records stand in for missing ones in etcd.
      const savedAt = Date.parse(String(doc.savedAt));
      this.evaluator.seed(cached, Number.isFinite(savedAt) ? Math.min(savedAt, this.now()) : this.now());
    }
    const starting = this.mirror.start();
    const started = cached && opts.cacheAfterMs !== undefined ? await settleWithin(starting, opts.cacheAfterMs) : await starting;
    if (started === LATE) {
      // etcd is slow to answer: the cached peers now. The load goes on; when it completes, the
      // watch's onChange makes etcd the source and emits the difference.
      if (this.closed) return 'none';
      void starting.then((s) => (s.ok ? s.attach() : undefined)).catch(() => undefined);
      if (this.viewsWatch) void this.viewsWatch.start().then((v) => (v.ok ? v.attach() : undefined)).catch(() => undefined);
      if (!this.mirror.loaded) {
        this.source = 'cache';
        this.deliver({ added: new Map(cached!), changed: new Map(), removed: new Set() });
        this.log.warn({ peers: cached!.size, file: this.cacheFile, waitedMs: opts.cacheAfterMs }, 'etcd slow to answer: using cached peers');
      }
      return this.source;
    }
    if (this.viewsWatch) {
      const views = await this.viewsWatch.start(); // (retried in the background when etcd does not answer)
      if (views.ok) await views.attach();
    }
    if (started.ok) {
      if (this.closed) return 'none';
      this.emit();
      await started.attach();
      return this.source;
    }
    if (this.closed) return 'none';
    if (cached && !this.mirror.loaded && !this.closed) {
      this.source = 'cache';
      this.deliver({ added: new Map(cached), changed: new Map(), removed: new Set() });
      this.log.warn({ peers: cached.size, file: this.cacheFile }, 'etcd unreachable: using cached peers');
    }
    return this.source;
  }

  /** True while etcd answers: the last load succeeded and the watch stream has not been lost since. */
  connected(): boolean {
    return this.mirror.connected();
  }

  /** The hosts' views as stored (an observer's only; empty otherwise). */
  views(): ReadonlyMap<string, RawView> {
    return this.viewsWatch?.views ?? new Map<string, RawView>();
  }

  /** Hosts whose alive key is in etcd now. */
  aliveHosts(): ReadonlySet<string> {
    return this.mirror.aliveNames;
  }

  /** Hosts skipped now because their certificate is revoked. */
  revokedHosts(): string[] {
    return this.evaluator.revoked();
  }

  /** Addresses claimed by two valid certificates, as of the last peer computation (copies). */
  addressConflicts(): AddressConflict[] {
    return this.evaluator.addressConflicts();
  }

  /** The peer set as last handed out, frozen and sorted by name (empty before the first). */
  peers(): PeerSnapshot {
    this.snapshot ??= freezeMap(sortedCopy(this.evaluator.members()));
    return this.snapshot;
  }

  /** What the evaluations cost so far, and the cache file's writes (for tests and benches). */
  work(): EvaluatorWork & { cacheWrites: number; cacheBytes: number } {
    return { ...this.evaluator.work, cacheWrites: this.cache?.writes ?? 0, cacheBytes: this.cache?.bytesWritten ?? 0 };
  }

  stats(): RegistryStats {
    const c = this.mirror.counters;
    const ev = this.evaluator;
    return {
      invalidRecords: ev.invalidRecords + c.invalidRecords,
      untrustedRecords: ev.untrustedRecords,
      revokedHosts: ev.revokedHosts,
      addressConflicts: ev.conflictCount,
      revocations: this.revocations.count(),
      invalidRevocations: this.revocations.invalid,
      reloads: c.reloads,
      loadPages: c.loadPages,
      loadKeys: c.loadKeys,
      resumes: c.resumes,
      rangeKeys: c.rangeKeys,
      rangeBytes: c.rangeBytes,
      oversizedRecords: c.oversizedRecords,
      watchEvents: c.watchEvents,
      peers: this.delivered ? this.evaluator.members().size : 0,
      revision: c.revision,
      connected: this.connected(),
      source: this.source,
    };
  }

  // ---- 5. trust and membership (evaluator.ts) --------------------------------------------------

  private scheduleEmit(): void {
    if (this.emitScheduled || this.closed || !this.onChange) return;
    this.emitScheduled = setImmediate(() => {
      this.emitScheduled = null;
      this.emit();
    });
  }

  private emit(): void {
    if (this.closed || !this.onChange) return;
    if (this.emitScheduled) {
      clearImmediate(this.emitScheduled);
      this.emitScheduled = null;
    }
    const t = this.mirror.takeTouched();
    // With a trust anchor leases play no part (holders.ts): hosts and alive keys are what changed.
    const names = this.fullNext || t.all ? null : t.alive.size === 0 ? t.hosts : new Set([...t.hosts, ...t.alive]);
    this.fullNext = false;
    const delta = this.evaluator.evaluate(
      { hosts: this.mirror.hosts, alive: this.mirror.aliveNames, leases: this.mirror.leases, etcdRead: this.mirror.counters.reloads > 0 },
      this.now(),
      names,
    );
    const delivered = this.deliver(delta);
    const known = this.evaluator.knownCerts;
    const tokens = this.evaluator.tokens;
    if (delivered || this.revocations.dirty || known.dirty || tokens.dirty) {
      // Members alone changed: the cache may journal just them (peer-cache.ts).
      const membersOnly = !(this.revocations.dirty || known.dirty || tokens.dirty);
      this.revocations.clean();
      known.clean();
      tokens.clean();
      this.saveCache(membersOnly ? { put: [...delta.added.values(), ...delta.changed.values()], removed: delta.removed } : undefined);
    }
  }

  /**
   * A member said bye over its encrypted tunnel (the data plane authenticated it): it leaves now,
   * and comes back only with a newer record (roster.ts). False when it is not a member.
   */
  bye(name: string): boolean {
    if (!this.evaluator.bye(name)) return false;
    if (!this.closed && this.onChange) this.emit();
    return true;
  }

  /**
   * A host that said bye sent a fresh, valid handshake from its key (it restarted, perhaps while
   * etcd is out of reach): it is a member again with the record it left with. The name, or null
   * when the key is no departed host's.
   */
  returned(publicKey: string): string | null {
    const name = this.evaluator.returned(publicKey, this.now());
    if (name !== null && !this.closed && this.onChange) this.emit();
    return name;
  }

  /**
   * What etcd holds for a member as of the last read (its record present, absent or invalid; its
   * alive key), or null when it is no member or etcd was never read (started from the cache).
   */
  etcdView(name: string): { record: 'present' | 'absent' | 'invalid'; alive: boolean } | null {
    const v = this.evaluator.view(name);
    if (!v || this.mirror.counters.reloads === 0) return null;
    return { record: v.etcd.record, alive: this.mirror.aliveNames.has(name) };
  }

  /** Hands the change to the callback unless nothing changed (the first one always); true when delivered. */
  private deliver(delta: PeerDelta): boolean {
    if (this.delivered && delta.added.size === 0 && delta.changed.size === 0 && delta.removed.size === 0) return false;
    if (!this.delivered) {
      // The first change lists every peer: members seeded from the cache file are news to the watcher too.
      delta = { added: new Map(this.evaluator.members()), changed: new Map(), removed: new Set() };
    }
    this.delivered = true;
    this.snapshot = null;
    try {
      this.onChange?.(delta);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'peer callback threw');
    }
    return true;
  }

  // ---- 4. cache (peer-cache.ts) ----------------------------------------------------------------

  private saveCache(change?: CacheChange): void {
    this.cache?.save(
      () => ({
        peers: sortedCopy(this.evaluator.members()).values(),
        revocations: this.revocations.list(),
        certs: this.evaluator.knownCerts.list(),
        tokens: this.evaluator.tokens.toJSON(),
      }),
      change,
    );
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  /** Stops watch, liveness (revoked), retries and timers. Does not close the etcd client. */
  async close(): Promise<void> {
    if (this.closed) return;
    // Revoking our liveness and ending the watches both wait on etcd when it does not answer
    // (each bounded: liveness.ts STOP_REVOKE_MS, watch.ts CANCEL_WAIT_MS), so they run at once.
    const alive = this.stopAlive();
    this.closed = true;
    if (this.emitScheduled) clearImmediate(this.emitScheduled);
    this.emitScheduled = null;
    this.evaluator.close();
    // The cache first: the rest may wait on etcd (the agent bounds a stop's wait for them), and
    // the next start needs the last peer set.
    await this.cache?.close();
    await Promise.all([alive, this.mirror.close(), this.viewsWatch?.close()]);
    if (this.ownLink) this.link.close();
    await this.publisher.settled();
  }
}
