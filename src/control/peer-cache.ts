import { randomBytes } from 'crypto';
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
 * Two files: a snapshot (`file`) and a journal beside it (`file.journal`, JSON lines). A change
 * of a few members only (`save(build, change)`) appends one line per changed member to the
 * journal; anything else (revocations, certificates, token memory, or no change list given), the
 * first write of the process, and a journal grown past the snapshot's size (and past
 * JOURNAL_MIN_BYTES) rewrite the snapshot and start an empty journal. So a change costs disk work
 * proportional to the change, amortised: a snapshot of N members is rewritten only after about N
 * members' worth of journal lines. Each snapshot carries a random generation and every journal line
 * names the generation it extends; the reader applies only the lines of the snapshot's own
 * generation, so a crash between a snapshot's rename and the journal's reset cannot replay old
 * lines over a newer snapshot.
 *
 * `save(build, change?)` asks for a write; `build` is called when a snapshot is written, so it
 * serialises the newest state, and requests made while a write waits share it. Writes are
 * coalesced: the first request after a quiet spell writes at once, later ones at most once per
 * `minIntervalMs` (default 5 s), and `close()` writes what is still due. A snapshot goes to a
 * fresh temporary file with an unpredictable name, created exclusively with mode 0600 beside the
 * cache, then renamed over it (atomic: a reader sees the old or the new file); the journal is
 * appended to (mode 0600). Reading validates everything like an etcd record (a file is no more
 * trusted than etcd); a journal line that does not parse is skipped with a warning.
 */

const CACHE_VERSION = 1;
/** Shortest time between two writes of the cache file. */
export const CACHE_MIN_INTERVAL_MS = 5_000;
/** The journal is compacted into a new snapshot once it is larger than the snapshot and this. */
export const JOURNAL_MIN_BYTES = 16 * 1024;

export interface CacheDoc {
  version?: unknown;
  generation?: unknown;
  network?: unknown;
  cidr?: unknown;
  savedAt?: unknown;
  peers: unknown[];
  revocations?: unknown;
  certs?: unknown;
  tokens?: unknown;
}

/** Members that changed since the last save (and nothing else did): journal material. */
export interface CacheChange {
  put: Iterable<HostRecord>;
  removed: Iterable<string>;
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
  /** Members changed since the last write (name -> record, null: removed). */
  private readonly ops = new Map<string, HostRecord | null>();
  /** A snapshot must be written (not only journal lines). */
  private full = true;
  private generation = '';
  private snapshotBytes = 0;
  private journalBytes = 0;
  private warned = false;
  private timer: NodeJS.Timeout | null = null;
  private lastWrite = -Infinity; // performance.now() of the last write started
  private closed = false;
  /** Writes done, snapshots and journal appends (for tests and benches). */
  writes = 0;
  /** Snapshots written. */
  snapshots = 0;
  /** Bytes written by them. */
  bytesWritten = 0;

  constructor(private readonly opts: PeerCacheOptions) {}

  private get journal(): string {
    return `${this.opts.file}.journal`;
  }

  /**
   * Asks for a write of what `build` returns when the write runs (coalesced, see above). With
   * `change`, only those members changed since the last call: they may go to the journal.
   */
  save(build: () => CacheContent, change?: CacheChange): void {
    if (this.closed) return;
    this.dirty = build;
    if (!change) this.full = true;
    else if (!this.full) {
      for (const r of change.put) this.ops.set(r.name, r);
      for (const n of change.removed) this.ops.set(n, null);
    }
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
    const { file, log } = this.opts;
    try {
      await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      if (!this.full) {
        let lines = '';
        for (const [name, r] of this.ops) lines += `${JSON.stringify(r ? { g: this.generation, put: r } : { g: this.generation, del: name })}\n`;
        if (this.journalBytes + lines.length <= Math.max(this.snapshotBytes, JOURNAL_MIN_BYTES)) {
          this.ops.clear();
          if (lines.length > 0) {
            await fsp.appendFile(this.journal, lines, { mode: 0o600 });
            this.journalBytes += lines.length;
            this.writes++;
            this.bytesWritten += lines.length;
          }
          this.warned = false;
          return;
        }
      }
      await this.writeSnapshot(build());
      this.warned = false;
    } catch (e) {
      this.full = true; // (what went wrong may have left the journal behind the snapshot)
      if (!this.warned) log.warn({ err: (e as Error).message, file }, 'cannot write peer cache');
      this.warned = true;
    }
  }

  private async writeSnapshot(c: CacheContent): Promise<void> {
    const { file, network } = this.opts;
    this.ops.clear();
    this.full = false;
    const generation = randomBytes(8).toString('hex');
    const doc = {
      version: CACHE_VERSION,
      generation,
      network: network.name,
      cidr: network.cidr,
      savedAt: new Date(this.opts.now()).toISOString(),
      peers: [...c.peers],
      revocations: c.revocations,
      certs: c.certs,
      tokens: c.tokens,
    };
    const body = `${JSON.stringify(doc)}\n`;
    try {
      await writeFileAtomic(file, body);
    } catch (e) {
      this.full = true;
      throw e;
    }
    this.generation = generation;
    this.snapshotBytes = body.length;
    this.writes++;
    this.snapshots++;
    this.bytesWritten += body.length;
    // Lines of the old generation are ignored by readers from now on; drop them.
    await fsp.writeFile(this.journal, '', { mode: 0o600 });
    this.journalBytes = 0;
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
    await this.applyJournal(d);
    return d;
  }

  /** Applies the journal lines of `d`'s generation to `d.peers` (by name, in order). */
  private async applyJournal(d: CacheDoc): Promise<void> {
    let text: string;
    try {
      text = await fsp.readFile(this.journal, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.opts.log.warn({ err: (e as Error).message, file: this.journal }, 'ignoring unreadable peer cache journal');
      return;
    }
    if (typeof d.generation !== 'string' || text.length === 0) return;
    const byName = new Map<string, unknown>();
    for (const p of d.peers) byName.set(nameOf(p) ?? `\u0000${byName.size}`, p);
    let bad = 0;
    for (const line of text.split('\n')) {
      if (line === '') continue;
      let op: { g?: unknown; put?: unknown; del?: unknown };
      try {
        op = JSON.parse(line) as typeof op;
      } catch {
        bad++;
        continue;
      }
      if (typeof op !== 'object' || op === null || op.g !== d.generation) continue;
      const put = nameOf(op.put);
      if (put !== null) byName.set(put, op.put);
      else if (typeof op.del === 'string') byName.delete(op.del);
      else bad++;
    }
    if (bad > 0) this.opts.log.warn({ file: this.journal, lines: bad }, 'skipped unreadable peer cache journal lines');
    d.peers = [...byName.values()];
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

function nameOf(p: unknown): string | null {
  const n = typeof p === 'object' && p !== null ? (p as { name?: unknown }).name : undefined;
  return typeof n === 'string' ? n : null;
}
