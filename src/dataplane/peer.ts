import type { Prefix } from '../util/ipv4';

/** What the control plane tells the workers about one peer (structured-cloned to each worker). */
export interface WorkerPeer {
  /** Stats slot, stable for the life of the peer in this process. */
  slot: number;
  name: string;
  overlayIp: number;
  /** Extra prefixes routed to this peer (its advertised host CIDRs). */
  allowed: Prefix[];
  /** Endpoint from the control plane. The data plane may move off it when the peer roams. */
  endpointIp: number;
  endpointPort: number;
  /** Slot of the relay peer this peer is reached through (endpointIp/Port unused); absent: direct. */
  endpointVia?: number;
  /** Changes whenever the keys change; equal ids mean equal keys (no reload, no counter reset). */
  keyId: string;
  txKey: Uint8Array;
  rxKey: Uint8Array;
  txIndex: number;
  rxIndex: number;
  /**
   * The send session is one we answered and the initiator has not used yet (we send on it only
   * because there is no other): report its first received packet so it counts as confirmed.
   */
  unconfirmed?: boolean;
  /**
   * Further sessions accepted on receive only: the previous one while packets sealed under it
   * drain after a rekey, and (with `promote`) one we answered as responder, which becomes
   * usable for sending once the initiator's first packet on it arrives.
   */
  receiveOnly?: {
    keyId: string;
    rxKey: Uint8Array;
    rxIndex: number;
    promote?: boolean;
    /** For a `promote` session: its send half, used once it is confirmed. */
    txKey?: Uint8Array;
    txIndex?: number;
  }[];
}

/** An endpoint's `via` when the peer is reached directly, not through a relay. */
export const DIRECT = -1;

/** Time for the data plane: `now` is wall-clock ms (shared with status), `mono` is monotonic ms. */
export interface Clock {
  now(): number;
  mono(): number;
}

/**
 * performance.now() is monotonic within a thread; adding the thread's timeOrigin puts every
 * thread of the process on one scale (ping stamps are compared across threads in tests and status).
 */
const origin = performance.timeOrigin;
export const systemClock: Clock = {
  now: () => Date.now(),
  mono: () => origin + performance.now(),
};

/** Longest-prefix match over a small table; exact /32 overlay addresses go through a Map first. */
export class PrefixTable<T> {
  private entries: { base: number; mask: number; len: number; value: T }[] = [];

  set(list: { prefix: Prefix; value: T }[]): void {
    this.entries = list
      .map(({ prefix, value }) => ({
        base: prefix.base,
        len: prefix.len,
        mask: prefix.len === 0 ? 0 : (0xffffffff << (32 - prefix.len)) >>> 0,
        value,
      }))
      .sort((a, b) => b.len - a.len);
  }

  lookup(ip: number): T | undefined {
    const e = this.entries;
    for (let i = 0; i < e.length; i++) {
      const x = e[i]!;
      if (((ip & x.mask) >>> 0) === x.base) return x.value;
    }
    return undefined;
  }

  get size(): number {
    return this.entries.length;
  }
}
