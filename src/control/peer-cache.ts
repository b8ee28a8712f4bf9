import { promises as fsp } from 'fs';
import * as path from 'path';
import type { Logger } from '../log';
import { writeFileAtomic } from '../util/atomic-file';
import type { Prefix } from '../util/ipv4';
import type { TrustAnchor } from './cert';
import type { Revocations } from './revocations';
import { checkOverlayIpInNetwork, HostCert, HostRecord, NetworkSpec, parseHostRecord, RevocationRecord } from './records';

/**
 * The peer cache file (registry job 4): the last peer set, the verified revocations and the
 * remembered certificates, as JSON (mode 0600), read at start when etcd is unreachable.
 *
 * `save(build)` asks for a write; `build` is called when the write happens, so it serialises the
 * newest state, and requests made while a write waits share it. Writes are coalesced: the first
 * request after a quiet spell writes at once, later ones at most once per `minIntervalMs`
 * (default 5 s), and `close()` writes what is still due. So a burst of changes, or 10 changes a
 * second in a network of 1,000 hosts, costs one file write every few seconds, not one per change.
 * A write goes to a fresh temporary file with an unpredictable name, created exclusively with
 * mode 0600 beside the cache, then renamed over it (atomic: a reader sees the old or the new file).
 * Reading validates everything like an etcd record (a file is no more trusted than etcd).
 */

const CACHE_VERSION = 1;
/** Shortest time between two writes of the cache file. */
export const CACHE_MIN_INTERVAL_MS = 5_000;

export interface CacheDoc {
  version?: unknown;
  network?: unknown;
  cidr?: unknown;
  savedAt?: unknown;
  peers: unknown[];
  revocations?: unknown;
  certs?: unknown;
  tokens?: unknown;
}

/** What a write contains. */
export interface CacheContent {
  peers: Iterable<HostRecord>;
  revocations: RevocationRecord[];
  certs: HostCert[];
  tokens: unknown;
}

export interface PeerCacheOptions {
  file: string;
  network: NetworkSpec;
  cidr: Prefix;
  self: string;
  log: Logger;
  now: () => number;
  /** Shortest time between two writes (default CACHE_MIN_INTERVAL_MS). */
  minIntervalMs?: number;
}

export class PeerCache {
  private writing: Promise<void> = Promise.resolve();
  private dirty: (() => CacheContent) | null = null;
  private warned = false;
  private timer: NodeJS.Timeout | null = null;
  private lastWrite = -Infinity; // performance.now() of the last write started
  private closed = false;
  /** Writes done (for tests and benches). */
  writes = 0;
  /** Bytes written by them. */
  bytesWritten = 0;

  constructor(private readonly opts: PeerCacheOptions) {}

  /** Asks for a write of what `build` returns when the write runs (coalesced, see above). */
  save(build: () => CacheContent): void {
    if (this.closed) return;
    this.dirty = build;
    if (this.timer) return; // a write is due; it will take the newest state
    const wait = this.lastWrite + (this.opts.minIntervalMs ?? CACHE_MIN_INTERVAL_MS) - performance.now();
    if (wait <= 0) {
      this.startWrite();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      this.startWrite();
    }, wait);
    this.timer.unref();
  }

  private startWrite(): void {
    this.lastWrite = performance.now();
    this.writing = this.writing.then(() => this.writeNow());
  }

  /** Writes what is still due now, and resolves once every write is done. */
  flush(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
      this.startWrite();
    }
    return this.writing;
  }

  /** Flushes; later `save` calls are ignored. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
  }

  private async writeNow(): Promise<void> {
    const build = this.dirty;
    this.dirty = null;
    if (!build) return;
    const { file, network, log } = this.opts;
    const c = build();
    const doc = {
      version: CACHE_VERSION,
      network: network.name,
      cidr: network.cidr,
      savedAt: new Date(this.opts.now()).toISOString(),
      peers: [...c.peers],
      revocations: c.revocations,
      certs: c.certs,
      tokens: c.tokens,
    };
    try {
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      const body = `${JSON.stringify(doc)}\n`;
      await writeFileAtomic(file, body);
      this.writes++;
      this.bytesWritten += body.length;
      this.warned = false;
    } catch (e) {
      if (!this.warned) log.warn({ err: (e as Error).message, file }, 'cannot write peer cache');
      this.warned = true;
    }
  }

  /** The cache document of this network, or null when absent or unusable. */
  async read(): Promise<CacheDoc | null> {
    const { file, network, log } = this.opts;
    let doc: unknown;
    try {
      doc = JSON.parse(await fsp.readFile(file, 'utf8'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ err: (e as Error).message, file }, 'ignoring unreadable peer cache');
      return null;
    }
    const d = doc as CacheDoc;
    if (typeof d !== 'object' || d === null || d.version !== CACHE_VERSION || d.network !== network.name || d.cidr !== network.cidr || !Array.isArray(d.peers)) {
      log.warn({ file }, 'ignoring peer cache of another network or version');
      return null;
    }
    return d;
  }

  /** The cached peers, validated like etcd records (certificates and revocations included), sorted by name. */
  peersOf(d: CacheDoc, trust: TrustAnchor | null, revocations: Revocations): Map<string, HostRecord> {
    const { network, cidr, self } = this.opts;
    const peers = new Map<string, HostRecord>();
    const now = this.opts.now();
    for (const p of d.peers) {
      const parsed = parseHostRecord(JSON.stringify(p), { network: network.name });
      if (!parsed.ok || parsed.value.name === self) continue;
      if (checkOverlayIpInNetwork(parsed.value, cidr, network.cidr) !== null) continue;
      if (trust) {
        if (trust.checkRecord(parsed.value, now) !== null) continue;
        if (revocations.of(parsed.value.cert!)) continue;
      }
      peers.set(parsed.value.name, parsed.value);
    }
    return new Map([...peers.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }
}
