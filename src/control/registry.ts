import { promises as fsp } from 'fs';
import * as path from 'path';
import type { Etcd3, IKeyValue, IWatchResponse, Watcher } from 'etcd3';
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { parseOverlayCidr, Prefix } from '../util/ipv4';
import { etcdCall, isTooLargeError, isTransientEtcdError } from './etcd';
import { EtcdLink } from './etcd-link';
import { Liveness } from './liveness';
import { etcdPages, prefixEnd, readPrefix, type PageFetcher } from './range';
import { nextCertChange, TrustAnchor } from './cert';
import { aliveKey, checkName, hostKey, networkPrefix, parseKey, revokedKey } from './keys';
import type { AddressConflict } from './holders';
import { KnownCerts } from './known-certs';
import { TokenMemory } from './token-memory';
import { computePeers, HostEntry, revocationOf } from './peers';
import { Roster, type MemberView } from './roster';
import {
  checkOverlayIpInNetwork,
  checkRecordSize,
  HostCert,
  HostRecord,
  NetworkSpec,
  parseHostRecord,
  parseLeaseRecord,
  parseRevocationRecord,
  parseTokenRevocation,
  recordSizeError,
  RevocationRecord,
  serializeHostRecord,
} from './records';

/**
 * One network's registry, seen from one host:
 *
 * 1. publish: write our host record with a monotonic epoch, never over a newer writer's.
 * 2. alive:   an etcd lease (TTL 10 s, keepalive) carrying /alive/<self>; re-granted if lost
 *             (liveness.ts).
 * 3. watch:   load the network prefix at revision R (in pages, range.ts), watch from R+1, keep
 *             hosts/alive/leases (values over their size cap skipped), and
 *             hand out a frozen peer snapshot after each change (same-tick bursts coalesced).
 *             On disconnect the watcher is dropped (etcd3 would redial on its own clock); on the
 *             shared `EtcdLink` schedule (backoff with jitter up to 30 s) a one-key read probes
 *             etcd, and once it answers the watch resumes from the last applied revision + 1: no
 *             reload, the events of the outage arrive on the resumed watch. Only a watch cancel
 *             (its revision compacted) or a watch message too large reloads the prefix (in pages).
 *             While etcd is down the last snapshot stays; a disconnect never empties the peer set.
 * 4. cache:   optionally the last snapshot on disk, used at start when etcd is unreachable.
 * 5. trust:   every host record must carry a certificate signed by the network key (the trust
 *             anchor) that binds its name, key and overlay address (see peers.ts); signed
 *             revocations under /revoked/ remove hosts at once. Revocations are sticky: once
 *             verified, deleting them from etcd does not bring the host back (they are also kept
 *             in the cache file). A network spec without a trust anchor (made before certificates)
 *             is not verified at all; the agent refuses to join such a network. Two valid
 *             certificates for one address: the earlier holds it (peers.ts); accepted certificates
 *             are remembered (known-certs.ts) so a deleted record does not give its address away.
 *             Membership (roster.ts): etcd introduces a host (valid record + alive key); it then
 *             stays while its certificate is valid, on its last valid record when etcd deletes or
 *             spoils it, and leaves on revocation, expiry, a bye (`bye()`) or a long silence.
 *
 * The registry does not own the etcd client: `close()` stops timers, watch and liveness only.
 */

export interface RegistryOptions {
  client: Etcd3;
  network: NetworkSpec;
  self: string;
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
}

export type PeerSnapshot = ReadonlyMap<string, HostRecord>;
export type PeersCallback = (peers: PeerSnapshot) => void;

export type PublishResult =
  | { written: true; record: HostRecord }
  /** Another writer for the same host name published after us: we are the older writer. */
  | { written: false; reason: 'superseded'; current: HostRecord };

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
const PUBLISH_ATTEMPTS = 8;
const CANCEL_WAIT_MS = 1000;
const WATCH_ATTACH_WAIT_MS = 2000;
const CACHE_VERSION = 1;
/** Longest setTimeout delay Node accepts; a later certificate change re-arms the timer. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Verified revocations kept per host name (oldest dropped first). */
const MAX_REVOCATIONS_PER_HOST = 16;

interface CacheDoc {
  version?: unknown;
  network?: unknown;
  cidr?: unknown;
  peers: unknown[];
  revocations?: unknown;
  certs?: unknown;
  tokens?: unknown;
}

function freezeMap<K, V>(m: Map<K, V>): ReadonlyMap<K, V> {
  const readOnly = (): never => {
    throw new TypeError('peer snapshot is read-only');
  };
  Object.defineProperties(m, { set: { value: readOnly }, delete: { value: readOnly }, clear: { value: readOnly } });
  return Object.freeze(m);
}

function signature(peers: PeerSnapshot): string {
  return [...peers.values()].map(serializeHostRecord).join('\n');
}

export class Registry {
  private readonly client: Etcd3;
  private readonly spec: NetworkSpec;
  private readonly self: string;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly cacheFile: string | undefined;
  private readonly aliveTtl: number;
  private readonly cidr: Prefix;
  private readonly prefix: string;
  private trust: TrustAnchor | null;
  private readonly selfCert: HostCert | undefined;

  private closed = false;

  // publish
  private publishChain: Promise<unknown> = Promise.resolve();
  private maxEpoch = 0; // highest epoch this registry has tried to write
  private triedWrites: string[] = []; // the last few values sent, to recognise our own write
  private lastWriteRevision: string | null = null; // mod revision of our last successful write

  // alive
  private alive: Liveness | null = null;
  private readonly link: EtcdLink;
  private readonly ownLink: boolean;

  // watch state, mirrored from etcd
  private onPeers: PeersCallback | null = null;
  private readonly hosts = new Map<string, HostEntry>();
  private readonly aliveNames = new Set<string>();
  private readonly leases = new Map<string, string | null>();
  /** Verified revocations by host name; never cleared by reloads or etcd deletes. */
  private readonly revocations = new Map<string, RevocationRecord[]>();
  private revocationsDirty = false;
  private certTimer: NodeJS.Timeout | null = null;
  private certTimerAt = 0;
  private revision = 0;
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
  private emitScheduled: NodeJS.Immediate | null = null;
  private outageLogged = false;

  // membership (roster.ts): members, their last valid records, byes
  private readonly roster = new Roster();
  private kept = new Map<string, HostRecord>();
  /** Records of members that said bye, for their return (bounded by the roster: one per name). */
  private readonly departed = new Map<string, HostRecord>();
  private views = new Map<string, MemberView>();
  private readonly heardAt: ((name: string) => number | null) | undefined;
  private silenceTimer: NodeJS.Timeout | null = null;
  private silenceAt = 0;

  // output
  private snapshot: PeerSnapshot = freezeMap(new Map());
  private lastSignature: string | null = null;
  private source: WatchSource = 'none';
  private readonly warned = new Map<string, string>(); // host name -> mod revision warned about
  private readonly warnedRevocations = new Map<string, string>(); // host name -> mod revision
  private selfProblem: string | undefined;
  private invalidRecords = 0;
  private untrustedRecords = 0;
  private revokedHosts = 0;
  private conflicts: AddressConflict[] = [];
  private readonly warnedConflicts = new Set<string>(); // "ip winnerSerial loserSerial" warned about
  /** Certificates accepted so far; they keep holding their address after their record is gone. */
  private readonly knownCerts = new KnownCerts();
  /** Join tokens: first certificate per (token, use), and token revocations (token-memory.ts). */
  private readonly tokens = new TokenMemory();
  private invalidRevocations = 0;
  private reloads = 0;
  private loadPages = 0;
  private loadKeys = 0;
  private resumes = 0;
  private rangeKeys = 0;
  private rangeBytes = 0;
  /** After a plain disconnect: probe etcd and resume the watch instead of reloading. */
  private resumeNext = false;
  private oversizedRecords = 0;
  private readonly warnedKeys = new Map<string, string>(); // etcd key -> mod revision warned about (alive, unreadable)
  private watchEvents = 0;
  private cacheWriting: Promise<void> = Promise.resolve();
  private cacheDirty: PeerSnapshot | null = null;
  private cacheWarned = false;

  constructor(opts: RegistryOptions) {
    this.client = opts.client;
    this.spec = opts.network;
    this.self = checkName(opts.self, 'self');
    this.log = opts.log.child({ component: 'registry', network: opts.network.name });
    this.now = opts.now ?? Date.now;
    this.cacheFile = opts.cacheFile;
    this.aliveTtl = opts.aliveTtlSec ?? ALIVE_TTL_SEC;
    if (!Number.isInteger(this.aliveTtl) || this.aliveTtl < 2) {
      throw new CladnetError('ECONFIG', `aliveTtlSec: ${this.aliveTtl} must be an integer >= 2`, { field: 'aliveTtlSec' });
    }
    this.cidr = parseOverlayCidr(opts.network.cidr, 'cidr');
    this.prefix = networkPrefix(opts.network.name);
    this.trust = opts.trust ?? null;
    this.selfCert = opts.selfCert;
    if (opts.selfCert) this.tokens.bind([opts.selfCert]); // our own use of a join token is ours
    this.heardAt = opts.heardAt;
    this.ownLink = opts.link === undefined;
    this.link = opts.link ?? new EtcdLink({ log: opts.log });
    if (this.trust && this.trust.network !== opts.network.name) {
      throw new CladnetError('ECONFIG', `trust: anchor of network ${this.trust.network}, not ${opts.network.name}`, { field: 'trust' });
    }
    if (this.trust && opts.network.trustAnchor !== undefined && opts.network.trustAnchor !== this.trust.publicKey) {
      throw new CladnetError('EKEY', `trustAnchor: the network spec's anchor differs from the pinned one (${this.trust.publicKey})`, {
        field: 'trustAnchor',
      });
    }
  }

  // ---- 1. publish ---------------------------------------------------------------------------

  /**
   * Writes our host record; the registry sets `epoch` (max(stored + 1, ours + 1, now), so it only
   * grows, whatever the wall clock does) and `updated`.
   *
   * The write is a transaction on the key's mod revision: nobody's write lands between our read and
   * ours. Once this registry has written, the stored record is expected to be its own; if another
   * writer for the same host name (a newer process after a restart, a cloned VM) has written since,
   * this registry is the older writer and does not overwrite: it returns `superseded`.
   * The first publish of a registry always takes over. Calls are serialised (the last call wins).
   */
  publish(record: HostRecord): Promise<PublishResult> {
    const run = this.publishChain.then(() => this.publishOnce(record));
    this.publishChain = run.catch(() => undefined);
    return run;
  }

  private async publishOnce(record: HostRecord): Promise<PublishResult> {
    if (this.closed) throw new Error('registry is closed');
    if (record.name !== this.self) {
      throw new CladnetError('ERECORD', `name: "${record.name}" is not this host ("${this.self}")`, { field: 'name' });
    }
    const key = hostKey(this.spec.name, this.self);
    for (let attempt = 0; attempt < PUBLISH_ATTEMPTS; attempt++) {
      const res = await etcdCall(`read ${key}`, () => this.client.get(key).exec());
      const kv = res.kvs[0];
      const stored = kv ? parseHostRecord(kv.value, { network: this.spec.name, name: this.self }) : null;
      const storedEpoch = stored?.ok ? stored.value.epoch : 0;
      // Someone else's valid record, written after our last write (a record byte-equal to one we
      // sent is ours: that write landed even if we never saw the answer).
      if (
        kv &&
        stored?.ok &&
        this.lastWriteRevision !== null &&
        kv.mod_revision !== this.lastWriteRevision &&
        !this.triedWrites.includes(kv.value.toString('utf8'))
      ) {
        this.log.warn({ host: this.self, storedEpoch, ourEpoch: this.maxEpoch }, 'host record was published by a newer writer; not overwriting it');
        return { written: false, reason: 'superseded', current: stored.value };
      }
      const t = Math.floor(this.now());
      const epoch = Math.max(storedEpoch + 1, this.maxEpoch + 1, t);
      const candidate: HostRecord = { ...record, epoch, updated: new Date(t).toISOString() };
      const checked = parseHostRecord(serializeHostRecord(candidate), { network: this.spec.name, name: this.self });
      if (!checked.ok) throw new CladnetError('ERECORD', `host record: ${checked.error}`);
      const inNet = checkOverlayIpInNetwork(checked.value, this.cidr, this.spec.cidr);
      if (inNet !== null) throw new CladnetError('ERECORD', `host record: ${inNet}`, { field: 'overlayIp' });

      const value = serializeHostRecord(checked.value);
      checkRecordSize('host', value);
      this.maxEpoch = epoch;
      this.triedWrites = [...this.triedWrites.slice(-3), value];
      const put = this.client.put(key).value(value);
      const txn = kv ? this.client.if(key, 'Mod', '==', kv.mod_revision) : this.client.if(key, 'Create', '==', 0);
      const done = await etcdCall(`publish ${key}`, () => txn.then(put).commit());
      if (done.succeeded) {
        this.lastWriteRevision = done.header.revision;
        this.log.debug({ host: this.self, epoch }, 'published host record');
        return { written: true, record: checked.value };
      }
      this.log.debug({ host: this.self, attempt }, 'host record changed while publishing; reading it again');
    }
    throw new CladnetError('EETCD', `publish ${key}: the record kept changing underneath (${PUBLISH_ATTEMPTS} attempts)`, {
      transient: true,
    });
  }

  // ---- 2. alive -----------------------------------------------------------------------------

  /**
   * Grants a lease (TTL `aliveTtlSec`) with keepalive and puts /alive/<self> on it. Resolves once
   * the key is written; rejects (EETCD) if the first attempt fails, but keeps retrying in the
   * background either way, and re-grants whenever the lease is lost, until `stopAlive()`.
   */
  async startAlive(): Promise<void> {
    if (this.closed) throw new Error('registry is closed');
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
    });
    await this.alive.start();
  }

  /** Revokes the lease, so /alive/<self> disappears now (the host record stays). */
  async stopAlive(): Promise<void> {
    const alive = this.alive;
    this.alive = null;
    await alive?.stop();
  }

  // ---- 3. watch -----------------------------------------------------------------------------

  /**
   * Starts watching; `onPeers` gets a fresh frozen snapshot after every change of the peer set.
   * Resolves once a first snapshot was delivered: from etcd, else from the cache file ('cache'),
   * else none ('none', etcd unreachable and no cache); etcd is retried in the background.
   */
  async watch(onPeers: PeersCallback): Promise<WatchSource> {
    if (this.closed) throw new Error('registry is closed');
    if (this.onPeers) throw new Error('registry is already watching');
    this.onPeers = onPeers;
    if (!this.trust && this.spec.trustAnchor !== undefined) {
      this.trust = new TrustAnchor(await loadEd25519(), this.spec.name, this.spec.trustAnchor);
    }
    if (!this.trust) this.log.warn('network has no trust anchor: host records are NOT verified (made before certificates?)');
    const doc = await this.readCache();
    if (doc) this.loadCachedRevocations(doc);
    if (doc) this.knownCerts.load(doc.certs, this.spec.name);
    if (doc && this.trust) this.tokens.load(doc.tokens, this.trust);
    const cached = doc ? this.cachedPeers(doc) : null;
    if (cached) {
      // The last peer set stays the membership: its records stand in for missing ones in etcd.
      const savedAt = Date.parse(String((doc as { savedAt?: unknown }).savedAt));
      this.kept = new Map(cached);
      this.roster.seed(cached.keys(), Number.isFinite(savedAt) ? Math.min(savedAt, this.now()) : this.now());
    }
    if (await this.loadOnce()) {
      if (this.closed) return 'none';
      const w = this.startWatcher(this.revision + 1);
      this.emit();
      await this.attached(w);
      return this.source;
    }
    if (this.closed) return 'none';
    if (cached && !this.loadedOk && !this.closed) {
      this.source = 'cache';
      this.deliver(cached);
      this.log.warn({ peers: cached.size, file: this.cacheFile }, 'etcd unreachable: using cached peers');
    }
    this.needWatcher = true;
    void this.runSync();
    return this.source;
  }

  /** True while etcd answers: the last load succeeded and the watch stream has not been lost since. */
  connected(): boolean {
    return this.loadedOk && this.watcher !== null && !this.watchLost;
  }

  /** Addresses claimed by two valid certificates, as of the last peer computation (copies). */
  addressConflicts(): AddressConflict[] {
    return this.conflicts.map((c) => ({ overlayIp: c.overlayIp, winner: { ...c.winner }, loser: { ...c.loser } }));
  }

  /** The last snapshot handed to `onPeers` (empty before the first). */
  peers(): PeerSnapshot {
    return this.snapshot;
  }

  stats(): RegistryStats {
    return {
      invalidRecords: this.invalidRecords,
      untrustedRecords: this.untrustedRecords,
      revokedHosts: this.revokedHosts,
      addressConflicts: this.conflicts.length,
      revocations: [...this.revocations.values()].reduce((n, l) => n + l.length, 0),
      invalidRevocations: this.invalidRevocations,
      reloads: this.reloads,
      loadPages: this.loadPages,
      loadKeys: this.loadKeys,
      resumes: this.resumes,
      rangeKeys: this.rangeKeys,
      rangeBytes: this.rangeBytes,
      oversizedRecords: this.oversizedRecords,
      watchEvents: this.watchEvents,
      peers: this.snapshot.size,
      revision: this.revision,
      connected: this.connected(),
      source: this.source,
    };
  }

  /**
   * Loads the whole network prefix once, in pages at one revision (range.ts); false (logged once
   * per outage) when etcd fails.
   */
  private async loadOnce(): Promise<boolean> {
    this.pending = [];
    let res;
    try {
      res = await readPrefix(this.pages(), this.prefix);
    } catch (e) {
      this.pending = null;
      this.loadedOk = false;
      if (isTransientEtcdError(e)) this.link.failed(e);
      // (the link logs the outage itself; this says what waits for it)
      if (!this.outageLogged) this.log.debug({ err: (e as Error).message }, 'cannot load peers from etcd; will retry');
      this.outageLogged = true;
      return false;
    }
    if (this.closed) return false;
    const buffered = this.pending;
    this.pending = null;
    this.hosts.clear();
    this.aliveNames.clear();
    this.leases.clear();
    for (const kv of res.kvs) this.applyKv(kv, false);
    for (const kv of res.unreadable) this.skipUnreadable(kv);
    this.floor = this.revision = Number(res.revision);
    for (const r of buffered) this.applyResponse(r);
    if (this.outageLogged) this.log.debug({ revision: this.revision }, 'peers reloaded from etcd');
    if (res.refusedPages > 0) {
      this.log.warn({ refusedPages: res.refusedPages, unreadable: res.unreadable.length }, 'etcd pages too large for the client: read them in smaller pages (records stuffed by a member?)');
    }
    this.log.debug({ revision: this.revision, keys: res.kvs.length, pages: res.pages, restarts: res.restarts }, 'network loaded');
    this.loadPages = res.pages;
    this.loadKeys = res.kvs.length;
    this.resumeNext = false;
    this.link.ok(); // (a registry with a private link hears of no other call)
    this.outageLogged = false;
    this.loadedOk = true;
    this.source = 'etcd';
    this.reloads++;
    this.scheduleEmit();
    return true;
  }

  /** A key whose value alone was too large to fetch: a host is rejected (counted in emit), others are warned about here. */
  private skipUnreadable(kv: IKeyValue): void {
    const k = parseKey(kv.key);
    if (!k || k.network !== this.spec.name) return;
    const why = 'value too large for the etcd client to fetch';
    if (k.kind === 'host') {
      this.countOversized(kv);
      this.hosts.set(k.name, { modRevision: kv.mod_revision, parsed: { ok: false, error: why } });
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
    this.oversizedRecords++;
    return true;
  }

  /** Skips a non-host value over its cap: warned about and counted as invalid once per (key, mod revision). */
  private warnOversized(kv: IKeyValue, error: string): void {
    if (!this.countOversized(kv)) return;
    this.invalidRecords++;
    this.log.warn({ etcdKey: kv.key.toString('utf8'), modRevision: kv.mod_revision, error }, 'skipping oversized record');
  }

  /** etcd's Range calls, counted (keys and bytes read). */
  private pages(): PageFetcher {
    const fetch = etcdPages(this.client);
    return async (req) => {
      const res = await fetch(req);
      this.rangeKeys += res.kvs.length;
      for (const kv of res.kvs) this.rangeBytes += kv.key.length + kv.value.length;
      return res;
    };
  }

  /**
   * Before resuming a watch: one Range of a single key, so a down etcd costs one cheap call per
   * retry round (and the link hears of it) instead of a watch stream etcd3 would redial itself.
   */
  private async probe(): Promise<boolean> {
    try {
      await this.pages()({ start: Buffer.from(this.prefix), end: prefixEnd(Buffer.from(this.prefix)), limit: 1, keysOnly: true });
    } catch (e) {
      if (isTransientEtcdError(e)) this.link.failed(e);
      else this.resumeNext = false; // not a connection problem: let the reload path deal with it
      if (!this.outageLogged) this.log.debug({ err: (e as Error).message }, 'cannot reach etcd to resume the watch; will retry');
      this.outageLogged = true;
      return false;
    }
    this.link.ok();
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
              this.resumes++;
              this.log.debug({ revision: this.revision }, 'etcd watch reconnected; resuming from the last applied revision');
            } else if (this.watchLost) this.log.debug('etcd watch reconnected; reloaded');
            this.resumeNext = false;
            this.startWatcher(this.revision + 1);
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
      void this.link.wait().then(() => {
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
    const w = this.client.watch().prefix(this.prefix).startRevision(String(fromRevision)).watcher();
    this.watcher = w;
    this.watchLost = false;
    w.on('connected', () => {
      if (w !== this.watcher) return;
      this.watchConnected = true;
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
        this.log.warn({ err: err.message }, 'etcd watch message too large (records stuffed by a member?); reloading and watching from now');
        this.resumeNext = false;
      } else {
        // Every event up to this.revision is applied: the resumed watch brings the rest.
        this.resumeNext = this.reloads > 0;
        if (!this.watchLost) this.log.debug({ err: err.message }, 'etcd watch disconnected; keeping the last peer set');
        this.watchLost = true;
        this.link.failed(err);
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
      this.log.warn({ err: err.message }, 'etcd watch cancelled (compacted?); reloading and watching again');
      // etcd3 has already dropped a cancelled watcher; cancelling it again would send a cancel for
      // a watch id the stream no longer knows.
      this.dropWatcher(w, false);
      this.resumeNext = false;
      this.requestSync(true);
    });
    return w;
  }

  /** Forgets `w` (and detaches it from etcd3 when `cancel`), ignoring its later events. */
  private dropWatcher(w: Watcher, cancel: boolean): void {
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
      this.watchEvents++;
      changed = this.applyKv(ev.kv, ev.type === 'Delete') || changed;
    }
    // The resume point. With events, their newest revision: a catch-up batch's header carries
    // etcd's current revision although later batches may still be on their way. Without events
    // (a progress notification, sent only to a watch that has caught up), the header's.
    if (res.events.length === 0) rev = Number(res.header.revision);
    if (rev > this.revision) this.revision = rev;
    if (changed) this.scheduleEmit();
  }

  /** Applies one key's new state; true when it concerns this network. */
  private applyKv(kv: IKeyValue, deleted: boolean): boolean {
    const k = parseKey(kv.key);
    if (!k || k.network !== this.spec.name) return false;
    switch (k.kind) {
      case 'host': {
        if (deleted) {
          this.hosts.delete(k.name);
          return true;
        }
        // Over the cap: keep only the reason, not the value (it is warned about and counted in emit).
        const big = recordSizeError('host', kv.value);
        if (big !== null) this.countOversized(kv);
        const parsed = big !== null ? ({ ok: false, error: big } as const) : parseHostRecord(kv.value, { network: k.network, name: k.name });
        this.hosts.set(k.name, { modRevision: kv.mod_revision, parsed });
        return true;
      }
      case 'alive': {
        const big = deleted ? null : recordSizeError('alive', kv.value);
        if (big !== null) this.warnOversized(kv, big);
        if (deleted || big !== null) this.aliveNames.delete(k.name);
        else this.aliveNames.add(k.name);
        return true;
      }
      case 'lease': {
        if (deleted) {
          this.leases.delete(k.ip);
        } else {
          const lease = parseLeaseRecord(kv.value);
          this.leases.set(k.ip, lease.ok ? lease.value.host : null);
        }
        return true;
      }
      case 'tokenRevoked': {
        if (deleted) return false; // sticky, like host revocations
        const r = parseTokenRevocation(kv.value, { network: this.spec.name, token: k.token });
        const error = !r.ok ? r.error : this.trust ? this.trust.verifyTokenRevocation(r.value) : 'the network has no trust anchor to verify it against';
        if (error !== null || !r.ok) {
          if (this.warnedRevocations.get(`token:${k.token}`) !== kv.mod_revision) {
            this.warnedRevocations.set(`token:${k.token}`, kv.mod_revision);
            this.invalidRevocations++;
            this.log.warn({ etcdKey: kv.key.toString(), modRevision: kv.mod_revision, error }, 'ignoring invalid token revocation');
          }
          return false;
        }
        if (!this.tokens.addRevocation(r.value)) return false;
        this.log.info({ tokenId: r.value.token, revoked: r.value.revoked, kept: r.value.keep.length }, 'join token revoked');
        return true;
      }
      case 'revoked':
        if (deleted) {
          if (this.revocations.has(k.name)) this.log.warn({ host: k.name }, 'revocation deleted from etcd; still honouring it');
          return false;
        }
        return this.applyRevocation(k.name, kv.value, kv.mod_revision);
      default:
        return false;
    }
  }

  /** Verifies a revocation and adds it to the sticky set; true when it is new. Invalid ones are warned about once. */
  private applyRevocation(name: string, value: Buffer | string, modRevision: string): boolean {
    const parsed = parseRevocationRecord(value, { network: this.spec.name, name });
    const error = !parsed.ok
      ? parsed.error
      : this.trust
        ? this.trust.verifyRevocation(parsed.value)
        : 'the network has no trust anchor to verify it against';
    if (error !== null || !parsed.ok) {
      if (this.warnedRevocations.get(name) !== modRevision) {
        this.warnedRevocations.set(name, modRevision);
        this.invalidRevocations++;
        this.log.warn({ etcdKey: revokedKey(this.spec.name, name), modRevision, error }, 'ignoring invalid revocation');
      }
      return false;
    }
    return this.addRevocation(parsed.value);
  }

  private addRevocation(rev: RevocationRecord): boolean {
    const list = this.revocations.get(rev.name) ?? [];
    if (list.some((r) => r.signature === rev.signature)) return false;
    list.push(rev);
    if (list.length > MAX_REVOCATIONS_PER_HOST) list.splice(0, list.length - MAX_REVOCATIONS_PER_HOST);
    this.revocations.set(rev.name, list);
    this.revocationsDirty = true;
    this.log.info({ host: rev.name, serial: rev.serial ?? 'all', revoked: rev.revoked }, 'host certificate revoked');
    return true;
  }

  private scheduleEmit(): void {
    if (this.emitScheduled || this.closed || !this.onPeers) return;
    this.emitScheduled = setImmediate(() => {
      this.emitScheduled = null;
      this.emit();
    });
  }

  private emit(): void {
    if (this.closed || !this.onPeers) return;
    if (this.emitScheduled) {
      clearImmediate(this.emitScheduled);
      this.emitScheduled = null;
    }
    const now = this.now();
    const { rejected, selfProblem, conflicts, certified, candidates } = computePeers({
      self: this.self,
      cidr: this.cidr,
      cidrText: this.spec.cidr,
      hosts: this.hosts,
      alive: this.aliveNames,
      leases: this.leases,
      trust: this.trust
        ? { anchor: this.trust, now, revocations: this.revocations, selfCert: this.selfCert, knownCerts: this.knownCerts.values(), tokens: this.tokens }
        : undefined,
      kept: this.kept,
    });
    const roster = this.roster.update({ candidates, alive: this.aliveNames, now, heardAt: this.heardAt, etcdRead: this.reloads > 0 });
    for (const l of roster.left) {
      const why = l.why === 'bye' ? 'it said bye' : l.why === 'silent' ? 'no record, no alive key and no packet for a long time' : 'no valid certificate for it now (revoked, expired, or its address held by an earlier one)';
      this.log.info({ host: l.name, reason: l.why }, `member left: ${why}`);
    }
    const peers = new Map<string, HostRecord>();
    for (const [name, m] of roster.members) peers.set(name, m.record);
    this.kept = new Map(peers);
    this.views = roster.members;
    for (const name of this.departed.keys()) if (roster.members.has(name)) this.departed.delete(name);
    this.armSilenceTimer(now, roster.nextCheck);
    this.knownCerts.remember(certified);
    this.tokens.bind(certified);
    this.knownCerts.prune(now, (c) => revocationOf(this.revocations, c) !== undefined || this.tokens.revocationOf(c) !== undefined);
    let revoked = 0;
    this.noteConflicts(conflicts);
    for (const r of rejected) {
      if (r.trust === 'conflict') continue; // valid records: reported by noteConflicts
      if (r.trust === 'revoked') revoked++;
      if (this.warned.get(r.name) === r.modRevision) continue;
      this.warned.set(r.name, r.modRevision);
      const etcdKey = hostKey(this.spec.name, r.name);
      if (r.trust === 'revoked') {
        this.log.warn({ etcdKey, host: r.name, error: r.error }, 'skipping revoked host');
        continue;
      }
      this.invalidRecords++;
      if (r.trust === 'untrusted') {
        this.untrustedRecords++;
        this.log.warn({ etcdKey, modRevision: r.modRevision, error: r.error }, 'skipping untrusted host record');
      } else if (r.trust === 'stale') {
        this.log.warn({ etcdKey, modRevision: r.modRevision, error: r.error }, 'skipping host record older than the one held');
      } else {
        this.log.warn({ etcdKey, modRevision: r.modRevision, error: r.error }, 'skipping invalid host record');
      }
    }
    this.revokedHosts = revoked;
    for (const name of this.warned.keys()) if (!this.hosts.has(name)) this.warned.delete(name);
    if (selfProblem !== this.selfProblem) {
      if (selfProblem !== undefined) this.log.error({ error: selfProblem }, 'this host is no longer a valid member: dropping every peer');
      else this.log.info('this host is a valid member again');
      this.selfProblem = selfProblem;
    }
    this.armCertTimer(now);
    const snap = freezeMap(peers);
    const delivered = this.deliver(snap);
    if (delivered || this.revocationsDirty || this.knownCerts.dirty || this.tokens.dirty) {
      this.revocationsDirty = false;
      this.knownCerts.clean();
      this.tokens.clean();
      this.saveCache(this.snapshot);
    }
  }

  /** Keeps the current address conflicts and warns once about each new one. */
  private noteConflicts(conflicts: AddressConflict[]): void {
    this.conflicts = conflicts;
    const current = new Set<string>();
    for (const c of conflicts) {
      const id = `${c.overlayIp} ${c.winner.serial} ${c.loser.serial}`;
      current.add(id);
      if (this.warnedConflicts.has(id)) continue;
      this.log.warn(
        {
          overlayIp: c.overlayIp,
          holder: c.winner.name,
          holderSerial: c.winner.serial,
          holderIssued: c.winner.issued,
          refused: c.loser.name,
          refusedSerial: c.loser.serial,
          refusedIssued: c.loser.issued,
        },
        'two valid certificates claim one overlay address; the earlier one holds it',
      );
    }
    for (const id of this.warnedConflicts) if (!current.has(id)) this.warnedConflicts.delete(id);
    for (const id of current) this.warnedConflicts.add(id);
  }

  /** Recomputes the peer set when the next silent member (no record, no alive key) is due to leave. */
  private armSilenceTimer(now: number, at: number | null): void {
    if (at === null || (this.silenceTimer && this.silenceAt === at)) return;
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    this.silenceAt = at;
    this.silenceTimer = setTimeout(() => {
      this.silenceTimer = null;
      this.emit();
    }, Math.min(Math.max(at - now, 0) + 1, MAX_TIMER_MS));
    this.silenceTimer.unref();
  }

  /**
   * A member said bye over its encrypted tunnel (the data plane authenticated it): it leaves now,
   * and comes back only with a newer record (roster.ts). False when it is not a member.
   */
  bye(name: string): boolean {
    const rec = this.kept.get(name);
    if (!rec || !this.roster.bye(name, rec.epoch)) return false;
    this.departed.set(name, rec);
    if (!this.closed && this.onPeers) this.emit();
    return true;
  }

  /**
   * A host that said bye sent a fresh, valid handshake from its key (it restarted, perhaps while
   * etcd is out of reach): it is a member again with the record it left with. The name, or null
   * when the key is no departed host's.
   */
  returned(publicKey: string): string | null {
    for (const [name, rec] of this.departed) {
      if (rec.publicKey !== publicKey) continue;
      this.departed.delete(name);
      if (!this.roster.returned(name, this.now())) return null;
      this.kept.set(name, rec);
      this.log.info({ host: name }, 'member that said bye is back (fresh handshake)');
      if (!this.closed && this.onPeers) this.emit();
      return name;
    }
    return null;
  }

  /**
   * What etcd holds for a member as of the last read (its record present, absent or invalid; its
   * alive key), or null when it is no member or etcd was never read (started from the cache).
   */
  etcdView(name: string): { record: 'present' | 'absent' | 'invalid'; alive: boolean } | null {
    const v = this.views.get(name);
    if (!v || this.reloads === 0) return null;
    return { record: v.etcd.record, alive: this.aliveNames.has(name) };
  }

  /** Recomputes the peer set when the next certificate becomes valid or expires. */
  private armCertTimer(now: number): void {
    if (!this.trust) return;
    const certs: HostCert[] = [];
    for (const e of this.hosts.values()) if (e.parsed.ok && e.parsed.value.cert) certs.push(e.parsed.value.cert);
    if (this.selfCert) certs.push(this.selfCert);
    certs.push(...this.knownCerts.values()); // a remembered holder expiring frees its address
    const next = nextCertChange(certs, now);
    if (next === null || (this.certTimer && this.certTimerAt === next)) return;
    if (this.certTimer) clearTimeout(this.certTimer);
    this.certTimerAt = next;
    this.certTimer = setTimeout(() => {
      this.certTimer = null;
      this.emit();
    }, Math.min(next - now, MAX_TIMER_MS));
    this.certTimer.unref();
  }

  /** Hands `snap` to the callback unless it equals the last one; true when delivered. */
  private deliver(snap: PeerSnapshot): boolean {
    const sig = signature(snap);
    if (sig === this.lastSignature) return false;
    this.lastSignature = sig;
    this.snapshot = snap;
    try {
      this.onPeers?.(snap);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'peer callback threw');
    }
    return true;
  }

  // ---- 4. cache -----------------------------------------------------------------------------

  private saveCache(snap: PeerSnapshot): void {
    if (!this.cacheFile) return;
    const first = this.cacheDirty === null;
    this.cacheDirty = snap;
    if (!first) return; // a write is queued; it will take the newest snapshot
    this.cacheWriting = this.cacheWriting.then(async () => {
      const latest = this.cacheDirty;
      this.cacheDirty = null;
      if (!latest || !this.cacheFile) return;
      const doc = {
        version: CACHE_VERSION,
        network: this.spec.name,
        cidr: this.spec.cidr,
        savedAt: new Date(this.now()).toISOString(),
        peers: [...latest.values()],
        revocations: [...this.revocations.values()].flat(),
        certs: this.knownCerts.list(),
        tokens: this.tokens.toJSON(),
      };
      const tmp = `${this.cacheFile}.tmp-${process.pid}`;
      try {
        await fsp.mkdir(path.dirname(this.cacheFile), { recursive: true, mode: 0o700 });
        await fsp.writeFile(tmp, `${JSON.stringify(doc)}\n`, { mode: 0o600 });
        await fsp.rename(tmp, this.cacheFile);
        this.cacheWarned = false;
      } catch (e) {
        await fsp.rm(tmp, { force: true }).catch(() => undefined);
        if (!this.cacheWarned) this.log.warn({ err: (e as Error).message, file: this.cacheFile }, 'cannot write peer cache');
        this.cacheWarned = true;
      }
    });
  }

  /** The cache document of this network, or null when absent or unusable. */
  private async readCache(): Promise<CacheDoc | null> {
    if (!this.cacheFile) return null;
    let doc: unknown;
    try {
      doc = JSON.parse(await fsp.readFile(this.cacheFile, 'utf8'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn({ err: (e as Error).message, file: this.cacheFile }, 'ignoring unreadable peer cache');
      return null;
    }
    const d = doc as CacheDoc;
    if (typeof d !== 'object' || d === null || d.version !== CACHE_VERSION || d.network !== this.spec.name || d.cidr !== this.spec.cidr || !Array.isArray(d.peers)) {
      this.log.warn({ file: this.cacheFile }, 'ignoring peer cache of another network or version');
      return null;
    }
    return d;
  }

  /** Revocations saved with the cache, verified again (a file is no more trusted than etcd). */
  private loadCachedRevocations(d: CacheDoc): void {
    if (!this.trust || !Array.isArray(d.revocations)) return;
    for (const r of d.revocations) {
      const parsed = parseRevocationRecord(JSON.stringify(r), { network: this.spec.name });
      if (parsed.ok && this.trust.verifyRevocation(parsed.value) === null) this.addRevocation(parsed.value);
    }
    this.revocationsDirty = false;
  }

  /** The cached snapshot, validated like etcd records (certificates and revocations included). */
  private cachedPeers(d: CacheDoc): PeerSnapshot {
    const peers = new Map<string, HostRecord>();
    const now = this.now();
    for (const p of d.peers) {
      const parsed = parseHostRecord(JSON.stringify(p), { network: this.spec.name });
      if (!parsed.ok || parsed.value.name === this.self) continue;
      if (checkOverlayIpInNetwork(parsed.value, this.cidr, this.spec.cidr) !== null) continue;
      if (this.trust) {
        if (this.trust.checkRecord(parsed.value, now) !== null) continue;
        if (revocationOf(this.revocations, parsed.value.cert!)) continue;
      }
      peers.set(parsed.value.name, parsed.value);
    }
    return freezeMap(new Map([...peers.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  /** Stops watch, liveness (revoked), retries and timers. Does not close the etcd client. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.stopAlive();
    this.closed = true;
    if (this.emitScheduled) clearImmediate(this.emitScheduled);
    this.emitScheduled = null;
    if (this.certTimer) clearTimeout(this.certTimer);
    this.certTimer = null;
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    this.silenceTimer = null;
    if (this.ownLink) this.link.close();
    this.sleepWake?.();
    this.sleepWake = null;
    const w = this.watcher;
    this.watcher = null;
    this.watchConnected = false;
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
    await this.publishChain.catch(() => undefined);
    await this.cacheWriting;
  }
}
