import type { Prefix } from '../util/ipv4';

/**
 * One session as the control plane describes it. The worker wipes the key bytes of its copy of
 * the message once the peer set is applied.
 */
export interface WorkerSession {
  /**
   * Names this session, and only this one, for the life of the process; a larger keyId is a
   * newer session. The data plane never loads a keyId again once it has erased it.
   */
  keyId: number;
  txKey: Uint8Array;
  rxKey: Uint8Array;
  /** The peer's index (written into our packets) and ours (in the peer's packets). */
  txIndex: number;
  rxIndex: number;
  /**
   * We initiated it, or the initiator's first packet on it has arrived: it may be sent on. A
   * session we answered waits for that packet, so that both ends switch without losing any.
   */
  confirmed: boolean;
  /** Wall-clock ms from which it only receives (the other end erases it a little later). */
  sendUntil: number;
  /**
   * The send counter word all workers share (./counters.ts newSendCounter), made once per session
   * by the control thread when it runs several workers; absent: the one worker counts alone.
   */
  counter?: SharedArrayBuffer;
}

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
  /** Upper 96 bits of an IPv6 endpoint (endpointIp the low 32); absent or all zero: IPv4. */
  endpointHi?: readonly number[];
  /** Slot of the relay peer this peer is reached through (endpointIp/Port unused); absent: direct. */
  endpointVia?: number;
  /** Every live session with this peer, in any order; the data plane picks the one to send on. */
  sessions: WorkerSession[];
}

/** An endpoint's `via` when the peer is reached directly, not through a relay. */
export const DIRECT = -1;
/** Ping every peer this often once it is up (keeps NAT mappings open and measures RTT). */
export const PING_INTERVAL_MS = 5_000;
/** A peer is up while its last authenticated packet is younger than this. */
export const PEER_UP_MS = 3 * PING_INTERVAL_MS + 1_000;

/**
 * The upper 96 bits of a datagram's peer address as the data plane passes it to events: three
 * words, or null for IPv4 (src/util/ipv6.ts). Only valid during the call.
 */
export type AddrHi = Uint32Array | null;

/** Copies `from` (null or absent: IPv4) into the three words `to`. */
export function setHi(to: Uint32Array, from: ArrayLike<number> | null | undefined): void {
  to[0] = from ? from[0]! : 0;
  to[1] = from ? from[1]! : 0;
  to[2] = from ? from[2]! : 0;
}

/** Two configured endpoints' upper bits are the same (absent: all zero). */
export function sameHiOf(a: readonly number[] | undefined, b: readonly number[] | undefined): boolean {
  for (let k = 0; k < 3; k++) if ((a?.[k] ?? 0) !== (b?.[k] ?? 0)) return false;
  return true;
}

/** The same upper bits (null: all zero). */
export function sameHi(a: Uint32Array, b: ArrayLike<number> | null | undefined): boolean {
  return b ? a[0] === b[0] && a[1] === b[1] && a[2] === b[2] : a[0] === 0 && a[1] === 0 && a[2] === 0;
}

/**
 * A 32-bit key for per-address tables (flood limits, cookies, known endpoints): the IPv4 address,
 * or a hash of the IPv6 one. Two addresses may share a key; these tables only rate-limit and
 * bind cookies, nothing is sent by it.
 */
export function addrKey(lo: number, hi: ArrayLike<number> | null): number {
  if (!hi || (hi[0] === 0 && hi[1] === 0 && hi[2] === 0)) return lo | 0;
  return (Math.imul(hi[0]! ^ Math.imul(hi[1]!, 0x9e3779b1), 0x85ebca6b) ^ hi[2]! ^ lo) | 0;
}

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
