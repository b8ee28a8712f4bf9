/**
 * Handshake flood limits, in the data-plane worker: what may cross to the control thread, where
 * a handshake message can cost a Diffie-Hellman. Every handshake message and STUN answer passes:
 *
 *   1. per source   a token bucket per source address (HS_RATE per second, HS_BURST deep), or per
 *                   relaying peer (its slot) for a handshake that came through a relay
 *   2. global       one token bucket for everything that crosses (HS_GLOBAL_RATE per second,
 *                   HS_GLOBAL_BURST deep); its last HS_GLOBAL_RESERVE tokens are kept for
 *                   messages from a peer's known endpoint or from an address we just sent an
 *                   initiation to (HS_EXPECT_MS), from relays, and initiations whose mac2
 *                   carries the worker's cookie for their source, so a flood from spoofed
 *                   addresses cannot starve them
 *   3. cookies      an initiation refused by the global budget may get a cookie reply from the
 *                   worker instead (inbound.ts): at most HS_COOKIE_RATE a second (burst
 *                   HS_COOKIE_BURST), each taking a token of its source's bucket too, so no
 *                   address gets more than HS_RATE replies a second (a reply is smaller than
 *                   the message it answers: nothing is amplified). A reply costs the worker
 *                   about 2.5 us (three libsodium calls), so the budget caps that at about an
 *                   eighth of a core; above it, an initiation gets a reply with probability
 *                   HS_COOKIE_RATE / (initiations a second over the budget)
 *
 * A message is let through only when both allow it, and only then are tokens taken from both.
 * So at most HS_GLOBAL_RATE * seconds + HS_GLOBAL_BURST messages cross in any span, however many
 * source addresses an attacker rotates through.
 *
 * The per-source buckets live in a table of fixed size (HS_TABLE_SETS sets of HS_TABLE_WAYS
 * entries, typed arrays allocated once). A source's set is chosen by a hash keyed with a random
 * per-process seed, so an attacker cannot aim many addresses at one set; a new source takes the
 * free or stalest entry of its set. The table is never cleared: memory stays bounded and a busy
 * source keeps its (empty) bucket while thousands of others come and go. A source whose entry was
 * evicted starts over with a full bucket; the global budget is what bounds that case.
 *
 * Nothing here allocates, throws or logs per message.
 */
import type { Clock } from './peer';
import { MAX_PEERS } from './stats';

/** Handshake messages (and STUN answers) accepted per source address: rate per second, burst. */
export const HS_RATE = 20;
export const HS_BURST = 10;
/** Messages crossing to the control thread, all sources together: rate per second, burst. */
export const HS_GLOBAL_RATE = 500;
export const HS_GLOBAL_BURST = 250;
/** Global tokens (messages) only known peers' endpoints, relays and cookie holders may use. */
export const HS_GLOBAL_RESERVE = 50;
/**
 * After the control thread sends an initiation to an address, messages from there count as from
 * a known endpoint (the response is awaited) for this long, ms; at most HS_EXPECT_MAX addresses.
 */
export const HS_EXPECT_MS = 10_000;
export const HS_EXPECT_MAX = 4096;
/** Cookie replies the worker sends instead of letting an initiation cross: rate per second, burst. */
export const HS_COOKIE_RATE = 50_000;
export const HS_COOKIE_BURST = 5_000;
/** Per-source table: sets (a power of two) times entries per set = sources remembered. */
export const HS_TABLE_SETS = 1024;
export const HS_TABLE_WAYS = 4;

/** What the limiter says about one message. */
export const HS_ALLOW = 0;
/** Its source (or relay) is over HS_RATE. */
export const HS_SOURCE_LIMITED = 1;
/** Everything together is over HS_GLOBAL_RATE. */
export const HS_OVER_BUDGET = 2;
export type HsVerdict = typeof HS_ALLOW | typeof HS_SOURCE_LIMITED | typeof HS_OVER_BUDGET;

export interface HandshakeLimiterOptions {
  /** Two 32-bit words keying the table's hash; default: from the CSPRNG. Tests fix it. */
  seed?: Uint32Array;
  /**
   * This limiter's share of every rate and burst (default 1): with N data-plane workers each has
   * one limiter, and handshake messages land on any of them, so each takes 1/N and the bounds
   * above hold for the host (docs/design.md, Many cores).
   */
  share?: number;
}

export class HandshakeLimiter {
  /** Entries in the per-source table (its fixed memory). */
  readonly capacity = HS_TABLE_SETS * HS_TABLE_WAYS;
  private readonly keys = new Uint32Array(this.capacity);
  private readonly used = new Uint8Array(this.capacity);
  private readonly tokens = new Float64Array(this.capacity);
  private readonly at = new Float64Array(this.capacity);
  /** Per relaying peer slot; at = NaN: never used (full bucket). */
  private readonly relayTokens = new Float64Array(MAX_PEERS);
  private readonly relayAt = new Float64Array(MAX_PEERS).fill(NaN);
  // the limits, times `share`
  private readonly rate: number;
  private readonly burst: number;
  private readonly gRate: number;
  private readonly gBurst: number;
  private readonly gReserve: number;
  private readonly cRate: number;
  private readonly cBurst: number;
  private globalTokens: number;
  private globalAt = NaN;
  private cookieTokens: number;
  private cookieAt = NaN;
  private readonly seed0: number;
  private readonly seed1: number;
  private inUse = 0;

  constructor(
    private readonly clock: Clock,
    opts: HandshakeLimiterOptions = {},
  ) {
    const seed = opts.seed ?? globalThis.crypto.getRandomValues(new Uint32Array(2));
    this.seed0 = seed[0]! | 0;
    this.seed1 = seed[1]! | 0;
    const k = opts.share ?? 1;
    if (!(k > 0 && k <= 1)) throw new RangeError(`handshake limiter share ${k}`);
    this.rate = HS_RATE * k;
    this.burst = Math.max(1, HS_BURST * k);
    this.gRate = HS_GLOBAL_RATE * k;
    this.gBurst = Math.max(1, HS_GLOBAL_BURST * k);
    this.gReserve = Math.ceil(HS_GLOBAL_RESERVE * k);
    this.cRate = HS_COOKIE_RATE * k;
    this.cBurst = Math.max(1, HS_COOKIE_BURST * k);
    this.globalTokens = this.gBurst;
    this.cookieTokens = this.cBurst;
  }

  /** Sources in the table now (at most `capacity`). */
  get sources(): number {
    return this.inUse;
  }

  /**
   * A message straight from source address `ip`; `known`: the address is a peer's endpoint.
   * Takes a token from the source's bucket and from the global one when both have one.
   */
  allowDirect(ip: number, known: boolean): HsVerdict {
    const now = this.clock.mono();
    const e = this.entry(ip >>> 0, now);
    const t = Math.min(this.burst, this.tokens[e]! + ((now - this.at[e]!) / 1000) * this.rate);
    this.tokens[e] = t;
    this.at[e] = now;
    if (t < 1) return HS_SOURCE_LIMITED;
    if (!this.takeGlobal(now, known)) return HS_OVER_BUDGET;
    this.tokens[e] = t - 1;
    return HS_ALLOW;
  }

  /** A message passed on by the relaying peer in `slot` (limited per relay, may use the reserve). */
  allowRelayed(slot: number): HsVerdict {
    if (!(slot >= 0 && slot < MAX_PEERS)) return HS_SOURCE_LIMITED;
    const now = this.clock.mono();
    const last = this.relayAt[slot]!;
    const t = last !== last ? this.burst : Math.min(this.burst, this.relayTokens[slot]! + ((now - last) / 1000) * this.rate);
    this.relayTokens[slot] = t;
    this.relayAt[slot] = now;
    if (t < 1) return HS_SOURCE_LIMITED;
    if (!this.takeGlobal(now, true)) return HS_OVER_BUDGET;
    this.relayTokens[slot] = t - 1;
    return HS_ALLOW;
  }

  /**
   * A cookie reply to `ip` (whose initiation the global budget refused): takes a token from the
   * source's bucket and from the cookie budget when both have one.
   */
  allowCookieReply(ip: number): boolean {
    const now = this.clock.mono();
    const e = this.entry(ip >>> 0, now);
    const t = Math.min(this.burst, this.tokens[e]! + ((now - this.at[e]!) / 1000) * this.rate);
    this.tokens[e] = t;
    this.at[e] = now;
    if (t < 1) return false;
    const last = this.cookieAt;
    if (last === last) this.cookieTokens = Math.min(this.cBurst, this.cookieTokens + ((now - last) / 1000) * this.cRate);
    this.cookieAt = now;
    if (this.cookieTokens < 1) return false;
    this.cookieTokens -= 1;
    this.tokens[e] = t - 1;
    return true;
  }

  /** Refills the global bucket and takes one token, leaving the reserve to `known` senders. */
  private takeGlobal(now: number, known: boolean): boolean {
    const last = this.globalAt;
    if (last === last) this.globalTokens = Math.min(this.gBurst, this.globalTokens + ((now - last) / 1000) * this.gRate);
    this.globalAt = now;
    const floor = known ? 1 : this.gReserve + 1;
    if (this.globalTokens < floor) return false;
    this.globalTokens -= 1;
    return true;
  }

  /** The table entry of `ip`: found in its set, else a free one, else the stalest one (reset). */
  private entry(ip: number, now: number): number {
    const base = (this.hash(ip) & (HS_TABLE_SETS - 1)) * HS_TABLE_WAYS;
    let victim = -1;
    let oldest = Infinity;
    for (let i = base; i < base + HS_TABLE_WAYS; i++) {
      if (this.used[i] === 0) {
        if (victim < 0 || this.used[victim] !== 0) victim = i;
        oldest = -Infinity;
        continue;
      }
      if (this.keys[i] === ip) return i;
      if (this.at[i]! < oldest) {
        oldest = this.at[i]!;
        victim = i;
      }
    }
    if (this.used[victim] === 0) {
      this.used[victim] = 1;
      this.inUse++;
    }
    this.keys[victim] = ip;
    this.tokens[victim] = this.burst;
    this.at[victim] = now;
    return victim;
  }

  /** A keyed 32-bit mix (murmur3's finalizer around the seed): which set an address falls in. */
  private hash(ip: number): number {
    let h = Math.imul(ip ^ this.seed0, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h ^ this.seed1, 0xc2b2ae35);
    h ^= h >>> 16;
    return h >>> 0;
  }
}
