import type { HostRecord } from '../control/records';
import { CladnetError } from '../errors';
import { parseIpv4 } from '../util/ipv4';
import { recordCandidates } from './candidates';
import type { Endpoint } from './paths';

/**
 * The agent's peer table: one entry per peer the control plane handed us, with its data-plane
 * slot, its record and where the data plane sends to it. Lookups by name, by slot and by overlay
 * address are constant time (the data plane reports slots and overlay addresses on every roam,
 * pong, bye and relayed handshake).
 *
 * Slots are the data plane's per-peer indexes (stats and sessions); a removed peer's slot is
 * reused, and `resetSlot` clears its counters before it is handed out again.
 *
 * `usable(record)` says why a record cannot be a peer here (no usable endpoint, our own key);
 * the agent warns and skips such records.
 */

export interface PeerEntry {
  readonly name: string;
  slot: number;
  record: HostRecord;
  overlayIp: number;
  /** Where the data plane sends: the path choice's (src/agent/paths.ts), or where it roamed. */
  endpoint: Endpoint;
  addedAt: number;
}

export interface PeerTableOptions {
  /** Highest slot count the data plane supports. */
  maxPeers: number;
  /** Clears the data plane's counters of a slot before it is reused. */
  resetSlot: (slot: number) => void;
  /** Our own public key (base64): a peer claiming it is skipped. */
  ownKey: string;
  now?: () => number;
}

export class PeerTable {
  private readonly byName = new Map<string, PeerEntry>();
  private readonly bySlot = new Map<number, PeerEntry>();
  private readonly byOverlay = new Map<number, PeerEntry>();
  private readonly freeSlots: number[] = [];
  private nextSlot = 0;
  private readonly now: () => number;

  constructor(private readonly opts: PeerTableOptions) {
    this.now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.byName.size;
  }

  get(name: string): PeerEntry | undefined {
    return this.byName.get(name);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  names(): IterableIterator<string> {
    return this.byName.keys();
  }

  entries(): IterableIterator<[string, PeerEntry]> {
    return this.byName.entries();
  }

  [Symbol.iterator](): IterableIterator<[string, PeerEntry]> {
    return this.byName.entries();
  }

  values(): IterableIterator<PeerEntry> {
    return this.byName.values();
  }

  nameOfSlot(slot: number): string | undefined {
    return this.bySlot.get(slot)?.name;
  }

  nameOfOverlay(ip: number): string | undefined {
    return this.byOverlay.get(ip >>> 0)?.name;
  }

  /** Null when `rec` can be a peer; else why not (for a warning). */
  usable(rec: HostRecord): string | null {
    if (recordCandidates(rec).all.length === 0 || parseIpv4(rec.overlayIp) === null) return 'peer has no usable endpoint; skipped';
    if (rec.publicKey === this.opts.ownKey) return 'peer claims our own public key (cloned VM image?); skipped';
    return null;
  }

  /**
   * Adds a peer (`usable(rec)` must have passed) or updates the record of one we have; the
   * entry, and whether it is new. A new peer sends to `endpoint`.
   */
  upsert(name: string, rec: HostRecord, endpoint: Endpoint): { entry: PeerEntry; added: boolean } {
    const overlay = parseIpv4(rec.overlayIp)! >>> 0;
    const old = this.byName.get(name);
    if (old) {
      if (old.overlayIp !== overlay) {
        if (this.byOverlay.get(old.overlayIp) === old) this.byOverlay.delete(old.overlayIp);
        old.overlayIp = overlay;
      }
      old.record = rec;
      this.byOverlay.set(overlay, old);
      return { entry: old, added: false };
    }
    const entry: PeerEntry = { name, slot: this.allocSlot(), record: rec, overlayIp: overlay, endpoint, addedAt: this.now() };
    this.byName.set(name, entry);
    this.bySlot.set(entry.slot, entry);
    this.byOverlay.set(overlay, entry);
    return { entry, added: true };
  }

  /** Removes a peer and frees its slot; the removed entry, if there was one. */
  remove(name: string): PeerEntry | undefined {
    const e = this.byName.get(name);
    if (!e) return undefined;
    this.byName.delete(name);
    this.bySlot.delete(e.slot);
    if (this.byOverlay.get(e.overlayIp) === e) this.byOverlay.delete(e.overlayIp);
    this.freeSlots.push(e.slot);
    return e;
  }

  private allocSlot(): number {
    const s = this.freeSlots.pop() ?? this.nextSlot++;
    if (s >= this.opts.maxPeers) throw new CladnetError('ESTATE', `more than ${this.opts.maxPeers} peers`);
    this.opts.resetSlot(s);
    return s;
  }
}
