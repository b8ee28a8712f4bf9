import type { Etcd3 } from 'etcd3';
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { parseOverlayCidr, Prefix } from '../util/ipv4';
import { TrustAnchor } from './cert';
import { EtcdLink } from './etcd-link';
import { MemberEvaluator } from './evaluator';
import type { AddressConflict } from './holders';
import { aliveKey, checkName, networkPrefix } from './keys';
import { Liveness } from './liveness';
import { PeerCache } from './peer-cache';
import { Publisher, type PublishResult } from './publisher';
import { checkRecordSize, HostCert, HostRecord, NetworkSpec, serializeHostRecord } from './records';
import { Revocations } from './revocations';
import { NetworkWatch } from './watch';
import type { WatchHealth } from './watch-health';

export type { PublishResult } from './publisher';

/**
 * One network's registry, seen from one host: a small object that wires five jobs, one module each.
 *
 * 1. publish: our host record with a monotonic epoch, never over a newer writer's (publisher.ts).
 * 2. alive:   an etcd lease (TTL 10 s, keepalive) carrying /alive/<self>; re-granted if lost
 *             (liveness.ts).
 * 3. watch:   the etcd mirror of the network prefix: paged load, watch, resume after a disconnect
 *             from the last applied revision (watch.ts). After each change a frozen peer snapshot
 *             is handed out (same-tick bursts coalesced). While etcd is down the last snapshot
 *             stays; a disconnect never empties the peer set.
 * 4. cache:   optionally the last snapshot on disk, used at start when etcd is unreachable
 *             (peer-cache.ts).
 * 5. trust:   certificates, sticky revocations (revocations.ts), address holders, remembered
 *             certificates and membership (evaluator.ts over peers.ts and roster.ts). A network
 *             spec without a trust anchor (made before certificates) is not verified at all; the
 *             agent refuses to join such a network.
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
  /**
   * With several etcd members: the member the watch and the liveness keepalive run on, probed so a
   * watch held by a member cut off from its cluster moves (watch-health.ts). Not owned: the caller
   * closes it after the registry.
   */
  health?: WatchHealth;
}

export type PeerSnapshot = ReadonlyMap<string, HostRecord>;
export type PeersCallback = (peers: PeerSnapshot) => void;

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

function signature(peers: PeerSnapshot): string {
  return [...peers.values()].map(serializeHostRecord).join('\n');
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
  private closed = false;

  private readonly publisher: Publisher;
  private alive: Liveness | null = null;
  private readonly link: EtcdLink;
  private readonly health: WatchHealth | undefined;
  private readonly ownLink: boolean;
  private readonly mirror: NetworkWatch;
  private readonly cache: PeerCache | null;
  private readonly revocations: Revocations;
  private readonly evaluator: MemberEvaluator;

  private onPeers: PeersCallback | null = null;
  private emitScheduled: NodeJS.Immediate | null = null;
  private snapshot: PeerSnapshot = freezeMap(new Map());
  private lastSignature: string | null = null;
  private source: WatchSource = 'none';

  constructor(opts: RegistryOptions) {
    this.client = opts.client;
    this.spec = opts.network;
    this.self = checkName(opts.self, 'self');
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
      onTimer: () => this.emit(),
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
        return this.revocations.apply(this.evaluator.trust, name, value, modRevision);
      },
      onChange: () => {
        if (this.mirror.loaded) this.source = 'etcd';
        this.scheduleEmit();
      },
    });
    this.cache = opts.cacheFile
      ? new PeerCache({ file: opts.cacheFile, network: this.spec, cidr: this.cidr, self: this.self, log: this.log, now: this.now })
      : null;
  }

  // ---- 1. publish (publisher.ts) -------------------------------------------------------------

  /** Writes our host record (see publisher.ts: monotonic epoch, never over a newer writer's). */
  publish(record: HostRecord): Promise<PublishResult> {
    return this.publisher.publish(record);
  }

  // ---- 2. alive (liveness.ts) ------------------------------------------------------------------

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
      via: this.health,
    });
    await this.alive.start();
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
  async watch(onPeers: PeersCallback): Promise<WatchSource> {
    if (this.closed) throw new Error('registry is closed');
    if (this.onPeers) throw new Error('registry is already watching');
    this.onPeers = onPeers;
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
      cached = freezeMap(this.cache.peersOf(doc, trust, this.revocations));
      // The last peer set stays the membership: its records stand in for missing ones in etcd.
      const savedAt = Date.parse(String(doc.savedAt));
      this.evaluator.seed(cached, Number.isFinite(savedAt) ? Math.min(savedAt, this.now()) : this.now());
    }
    const started = await this.mirror.start();
    if (started.ok) {
      if (this.closed) return 'none';
      this.emit();
      await started.attach();
      return this.source;
    }
    if (this.closed) return 'none';
    if (cached && !this.mirror.loaded && !this.closed) {
      this.source = 'cache';
      this.deliver(cached);
      this.log.warn({ peers: cached.size, file: this.cacheFile }, 'etcd unreachable: using cached peers');
    }
    return this.source;
  }

  /** True while etcd answers: the last load succeeded and the watch stream has not been lost since. */
  connected(): boolean {
    return this.mirror.connected();
  }

  /** Addresses claimed by two valid certificates, as of the last peer computation (copies). */
  addressConflicts(): AddressConflict[] {
    return this.evaluator.addressConflicts();
  }

  /** The last snapshot handed to `onPeers` (empty before the first). */
  peers(): PeerSnapshot {
    return this.snapshot;
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
      peers: this.snapshot.size,
      revision: c.revision,
      connected: this.connected(),
      source: this.source,
    };
  }

  // ---- 5. trust and membership (evaluator.ts) --------------------------------------------------

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
    this.mirror.takeTouched();
    const peers = this.evaluator.evaluate(
      { hosts: this.mirror.hosts, alive: this.mirror.aliveNames, leases: this.mirror.leases, etcdRead: this.mirror.counters.reloads > 0 },
      this.now(),
    );
    const delivered = this.deliver(freezeMap(peers));
    const known = this.evaluator.knownCerts;
    if (delivered || this.revocations.dirty || known.dirty) {
      this.revocations.clean();
      known.clean();
      this.saveCache();
    }
  }

  /**
   * A member said bye over its encrypted tunnel (the data plane authenticated it): it leaves now,
   * and comes back only with a newer record (roster.ts). False when it is not a member.
   */
  bye(name: string): boolean {
    if (!this.evaluator.bye(name)) return false;
    if (!this.closed && this.onPeers) this.emit();
    return true;
  }

  /**
   * A host that said bye sent a fresh, valid handshake from its key (it restarted, perhaps while
   * etcd is out of reach): it is a member again with the record it left with. The name, or null
   * when the key is no departed host's.
   */
  returned(publicKey: string): string | null {
    const name = this.evaluator.returned(publicKey, this.now());
    if (name !== null && !this.closed && this.onPeers) this.emit();
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

  // ---- 4. cache (peer-cache.ts) ----------------------------------------------------------------

  private saveCache(): void {
    this.cache?.save(() => ({
      peers: this.snapshot.values(),
      revocations: this.revocations.list(),
      certs: this.evaluator.knownCerts.list(),
    }));
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  /** Stops watch, liveness (revoked), retries and timers. Does not close the etcd client. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.stopAlive();
    this.closed = true;
    if (this.emitScheduled) clearImmediate(this.emitScheduled);
    this.emitScheduled = null;
    this.evaluator.close();
    if (this.ownLink) this.link.close();
    await this.mirror.close();
    await this.publisher.settled();
    await this.cache?.flush();
  }
}
