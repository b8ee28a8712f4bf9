import { promises as fsp } from 'fs';
import * as path from 'path';
import type { Logger } from '../log';
import type { Prefix } from '../util/ipv4';
import type { TrustAnchor } from './cert';
import type { Revocations } from './revocations';
import { checkOverlayIpInNetwork, HostCert, HostRecord, NetworkSpec, parseHostRecord, RevocationRecord } from './records';

/**
 * The peer cache file (registry job 4): the last peer set, the verified revocations and the
 * remembered certificates, as JSON (mode 0600), read at start when etcd is unreachable.
 *
 * `save(build)` asks for a write; `build` is called when the write happens, so it serialises the
 * newest state, and requests made while a write is queued share it. Reading validates everything
 * like an etcd record (a file is no more trusted than etcd).
 */

const CACHE_VERSION = 1;

export interface CacheDoc {
  version?: unknown;
  network?: unknown;
  cidr?: unknown;
  savedAt?: unknown;
  peers: unknown[];
  revocations?: unknown;
  certs?: unknown;
}

/** What a write contains. */
export interface CacheContent {
  peers: Iterable<HostRecord>;
  revocations: RevocationRecord[];
  certs: HostCert[];
}

export interface PeerCacheOptions {
  file: string;
  network: NetworkSpec;
  cidr: Prefix;
  self: string;
  log: Logger;
  now: () => number;
}

export class PeerCache {
  private writing: Promise<void> = Promise.resolve();
  private dirty: (() => CacheContent) | null = null;
  private warned = false;

  constructor(private readonly opts: PeerCacheOptions) {}

  /** Queues a write of what `build` returns when the write runs. */
  save(build: () => CacheContent): void {
    const first = this.dirty === null;
    this.dirty = build;
    if (!first) return; // a write is queued; it will take the newest state
    this.writing = this.writing.then(() => this.writeNow());
  }

  /** Resolves once queued writes are done. */
  flush(): Promise<void> {
    return this.writing;
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
    };
    const tmp = `${file}.tmp-${process.pid}`;
    try {
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      await fsp.writeFile(tmp, `${JSON.stringify(doc)}\n`, { mode: 0o600 });
      await fsp.rename(tmp, file);
      this.warned = false;
    } catch (e) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
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
