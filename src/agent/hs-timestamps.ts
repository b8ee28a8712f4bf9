/**
 * The newest handshake-initiation timestamp seen from each peer key. A responder answers only an
 * initiation newer than any before from that key, so a captured initiation cannot be replayed;
 * kept here, apart from the peer table, so that a peer that leaves and comes back (an etcd
 * hiccup) is still held to it, and in the state dir (`FileTimestamps`) so that a restart is too.
 *
 * Bounded: at most MAX_ENTRIES keys, the least recently updated forgotten first (a forgotten key
 * costs only this: one replayed initiation can make an unconfirmed session, which the handshake
 * manager never lets displace a confirmed one).
 */
import * as fs from 'node:fs';
import type { Logger } from '../log';

export const MAX_ENTRIES = 8192;
const TIMESTAMP_LEN = 12;
/** A new timestamp reaches the disk within this long (writes are coalesced). */
const SAVE_DELAY_MS = 1_000;

export interface TimestampStore {
  get(peerKey: Uint8Array): Uint8Array | null;
  set(peerKey: Uint8Array, timestamp: Uint8Array): void;
}

export class MemoryTimestamps implements TimestampStore {
  protected readonly map = new Map<string, Uint8Array>();

  get(peerKey: Uint8Array): Uint8Array | null {
    return this.map.get(Buffer.from(peerKey).toString('base64')) ?? null;
  }

  set(peerKey: Uint8Array, timestamp: Uint8Array): void {
    const k = Buffer.from(peerKey).toString('base64');
    this.map.delete(k); // re-inserted last: the map's order is the update order
    this.map.set(k, new Uint8Array(timestamp));
    while (this.map.size > MAX_ENTRIES) this.map.delete(this.map.keys().next().value!);
  }

  get size(): number {
    return this.map.size;
  }
}

/** Persists to `file` (JSON: base64 key -> hex timestamp, mode 0600, replaced atomically). */
export class FileTimestamps extends MemoryTimestamps {
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly file: string,
    private readonly log: Logger,
  ) {
    super();
    let raw: unknown;
    try {
      raw = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ file, err: (e as Error).message }, 'handshake timestamps unreadable; starting empty');
      return;
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      log.warn({ file }, 'handshake timestamps file is not an object; starting empty');
      return;
    }
    let skipped = 0;
    for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
      const key = Buffer.from(k, 'base64');
      const ts = typeof v === 'string' && /^[0-9a-f]{24}$/.test(v) ? Buffer.from(v, 'hex') : null;
      if (key.length !== 32 || key.toString('base64') !== k || !ts || ts.length !== TIMESTAMP_LEN) skipped++;
      else super.set(key, ts);
    }
    if (skipped > 0) log.warn({ file, skipped }, 'handshake timestamps: malformed entries skipped');
  }

  override set(peerKey: Uint8Array, timestamp: Uint8Array): void {
    super.set(peerKey, timestamp);
    if (this.timer) return;
    this.timer = setTimeout(() => this.flush(), SAVE_DELAY_MS);
    this.timer.unref();
  }

  /** Writes now (also on stop). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const body: Record<string, string> = {};
    for (const [k, v] of this.map) body[k] = Buffer.from(v).toString('hex');
    const tmp = `${this.file}.tmp`;
    try {
      fs.writeFileSync(tmp, JSON.stringify(body) + '\n', { mode: 0o600 });
      fs.renameSync(tmp, this.file);
    } catch (e) {
      this.log.warn({ file: this.file, err: (e as Error).message }, 'handshake timestamps not saved');
    }
  }
}
