/**
 * The network policy in the data plane (security groups, issue 15): which inner IPv4 and IPv6
 * packets a peer may deliver to this host. Applied on receive, in inbound.ts's deliver stage: the receiving
 * host decides. Pure (no I/O, time from an injected clock), so it is unit-tested and benchmarked
 * alone (bench/policy.ts).
 *
 * Per packet received (`allows`):
 *   1. key      protocol and ports from the IPv4 header (ICMP: echo id and type; a non-first
 *               fragment has no ports: 0, 0). An IPv6 packet is keyed by the IPv4 twins of its
 *               overlay addresses (control/overlay6.ts), ICMPv6 as ICMP (echo 128/129 as 8/0),
 *               so host and group rules treat it exactly like IPv4 from the same peer; rules
 *               whose source is an IPv4 CIDR match IPv4 only; a flow's entry is per family
 *   2. flows    a live flow entry for the 5-tuple passes it: a reply to a flow this host started
 *               (recorded by `track` on the way out), or a flow a rule of this policy already
 *               allowed (cached with the policy's generation, so a new policy re-decides it)
 *   3. rules    the compiled rules whose source matches (by peer overlay address: a Map lookup;
 *               other sources: CIDR/any rules), first one whose protocol and ports match
 *               allows it and caches the flow
 *   4. deny     nothing matched: dropped, counted as default deny (and `policy` in the drops)
 *
 * Per packet sent (`track`): TCP, UDP and ICMP echo requests record the reply's 5-tuple, so the
 * answer passes step 2 whatever the rules say (stateful, like a security group).
 *
 * The flow table is bounded (open hashing into 4-way buckets over typed arrays, nothing
 * allocated per packet): a full bucket gives up its entry that expires first. Entries expire
 * after FLOW_TTL_MS of their protocol without a packet; the time is the clock's, read once per
 * batch (`tick`).
 *
 * Counters (a Float64Array over shared memory the control thread reads for status): C_DENIED
 * (default deny), C_REPLIES (passed as replies to our flows), and C_RULES + k for rule k of the
 * document (packets it allowed, cached flows included).
 */
import type { Clock } from './peer';

export const PROTO_ANY = 0;
export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_ICMPV6 = 58;
/** Added to an IPv6 flow's protocol in the flow table: IPv4 and IPv6 flows never share an entry. */
const FAMILY6 = 256;

/** One compiled rule (only rules whose `to` names this host are compiled). */
export interface CompiledRule {
  /** Its index in the policy document (counter C_RULES + index). */
  index: number;
  /** PROTO_ANY, PROTO_ICMP, PROTO_TCP or PROTO_UDP. */
  proto: number;
  /** Its source is an IPv4 CIDR: it matches IPv4 packets only (absent: any, host or group). */
  cidr?: boolean;
  /** Destination ports (TCP/UDP), inclusive; 0..65535 for every port (and every ICMP type). */
  portLo: number;
  portHi: number;
}

/**
 * A policy compiled for one host (src/control/policy.ts `compilePolicy`): structured-cloned to
 * the worker. Sources are resolved to addresses on the control side (host and group names through
 * the peers' certificates).
 */
export interface CompiledPolicy {
  /** The document's serial (shown in status). */
  serial: number;
  /** Counter slots for rules: the document's rule count. */
  ruleCount: number;
  /** Everything from everywhere is allowed here: the filter stays off (no per-packet work). */
  open: boolean;
  rules: CompiledRule[];
  /** For each peer overlay address: indexes into `rules` whose source matches it, in rule order. */
  peers: { ip: number; rules: number[] }[];
  /** Sources that are no peer's overlay address: rules by CIDR (any = /0), in rule order. */
  other: { rule: number; base: number; len: number }[];
}

export const C_DENIED = 0;
export const C_REPLIES = 1;
export const C_RULES = 2;

/** Counter slots a policy with `ruleCount` rules needs. */
export function counterSlots(ruleCount: number): number {
  return C_RULES + ruleCount;
}

/** Idle time before a flow entry expires, by protocol (ms). */
export const FLOW_TTL_MS = { tcp: 30 * 60_000, udp: 120_000, icmp: 30_000, other: 60_000 } as const;
/** Flow entries kept (a power of two, a multiple of 4). */
export const DEFAULT_FLOW_CAPACITY = 32_768;
const WAYS = 4;

function ttlOf(key: number): number {
  const proto = key & 255;
  return proto === PROTO_TCP ? FLOW_TTL_MS.tcp : proto === PROTO_UDP ? FLOW_TTL_MS.udp : proto === PROTO_ICMP ? FLOW_TTL_MS.icmp : FLOW_TTL_MS.other;
}

/**
 * Bytes of a flow table of `capacity` entries (expiry, addresses, ports, rule, generation,
 * protocol, and a version per entry for a table shared by several workers).
 */
export function flowTableBytes(capacity = DEFAULT_FLOW_CAPACITY): number {
  return 34 * capacity;
}

export class PacketFilter {
  /** A policy restricts this host: deliver() must ask. False without a policy or with an open one. */
  active = false;
  /** Flow entries replaced while still live (the table was full where they hashed). */
  evictions = 0;
  private now = 0;
  private gen = 1;
  private counters: Float64Array = new Float64Array(C_RULES);
  // compiled rules
  private rProto = new Uint8Array(0);
  private rLo = new Uint16Array(0);
  private rHi = new Uint16Array(0);
  private rIndex = new Int32Array(0);
  private rCidr = new Uint8Array(0);
  private bySrc = new Map<number, Int32Array>();
  private oRule = new Int32Array(0);
  private oBase = new Int32Array(0);
  private oMask = new Int32Array(0);
  // flow table
  private readonly mask: number;
  private readonly kSrc: Int32Array;
  private readonly kDst: Int32Array;
  private readonly kPorts: Int32Array;
  /** Protocol, plus FAMILY6 for IPv6. */
  private readonly kProto: Uint16Array;
  private readonly exp: Float64Array;
  /** The rule that allowed the flow (document index), or -1: a reply to a flow we started. */
  private readonly fRule: Int32Array;
  private readonly fGen: Uint32Array;
  /** Per entry, for a shared table only (see the constructor); null: a private table. */
  private readonly ver: Int32Array | null;
  // the parsed key of the packet at hand (no object per packet)
  private pSrc = 0;
  private pDst = 0;
  private pProto = 0;
  private pSp = 0;
  private pDp = 0;
  private pCache = false;
  /** The packet at hand is IPv6 (pSrc, pDst: the IPv4 twins); pForeign: its source is outside the overlay prefix. */
  private pV6 = false;
  private pForeign = false;
  /** Offset of its L4 header from the packet's start. */
  private pL4 = 0;
  /** The network's IPv6 overlay prefix (control/overlay6.ts Overlay6); -1: none. */
  private v6hi = -1;
  private v6mid = 0;

  /**
   * `shared`: the flow table in shared memory (flowTableBytes(capacity)), one for all data-plane
   * workers: a flow one worker starts (reading the TUN) is known to the worker that receives its
   * replies (docs/design.md, Many cores). Each entry has a version, as in a seqlock: a writer makes
   * it odd (compare-and-swap: one writer at a time), writes, and makes it even again; a reader
   * takes an entry only when its version was even and the same before and after it read the key.
   * So no worker ever matches a key half written by another (a mix of two flows' fields). Two
   * workers writing one entry at once lose one of the two (its next reply is decided by the rules
   * again; a reply to our own flow is then dropped once and retransmitted). Absent: a private
   * table, without versions.
   */
  constructor(
    private readonly clock: Clock,
    capacity = DEFAULT_FLOW_CAPACITY,
    shared?: SharedArrayBuffer,
  ) {
    if (!(capacity >= WAYS && (capacity & (capacity - 1)) === 0)) throw new RangeError(`flow capacity ${capacity} is not a power of two >= ${WAYS}`);
    this.mask = capacity / WAYS - 1;
    const b = shared ?? new ArrayBuffer(flowTableBytes(capacity));
    if (b.byteLength < flowTableBytes(capacity)) throw new RangeError(`flow table of ${b.byteLength} bytes for ${capacity} entries`);
    const c = capacity;
    this.exp = new Float64Array(b, 0, c);
    this.kSrc = new Int32Array(b, 8 * c, c);
    this.kDst = new Int32Array(b, 12 * c, c);
    this.kPorts = new Int32Array(b, 16 * c, c);
    this.fRule = new Int32Array(b, 20 * c, c);
    this.fGen = new Uint32Array(b, 24 * c, c);
    this.kProto = new Uint16Array(b, 28 * c, c);
    this.ver = shared ? new Int32Array(b, 30 * c, c) : null;
    this.now = clock.mono();
  }

  /**
   * A new policy (null: none, every member reaches every member again). Flows this host started
   * stay; flows a rule allowed are decided again by the new rules. `counters` has
   * counterSlots(policy.ruleCount) slots (shared memory the control thread reads).
   */
  set(policy: CompiledPolicy | null, counters?: Float64Array): void {
    this.gen = (this.gen + 1) >>> 0 || 1;
    this.active = policy !== null && !policy.open;
    this.counters = counters ?? new Float64Array(counterSlots(policy?.ruleCount ?? 0));
    const rules = policy?.rules ?? [];
    this.rProto = Uint8Array.from(rules, (r) => r.proto);
    this.rLo = Uint16Array.from(rules, (r) => r.portLo);
    this.rHi = Uint16Array.from(rules, (r) => r.portHi);
    this.rIndex = Int32Array.from(rules, (r) => r.index);
    this.rCidr = Uint8Array.from(rules, (r) => (r.cidr === true ? 1 : 0));
    this.bySrc = new Map((policy?.peers ?? []).map((p) => [p.ip | 0, Int32Array.from(p.rules)]));
    const other = policy?.other ?? [];
    this.oRule = Int32Array.from(other, (o) => o.rule);
    this.oBase = Int32Array.from(other, (o) => o.base | 0);
    this.oMask = Int32Array.from(other, (o) => (o.len === 0 ? 0 : (0xffffffff << (32 - o.len)) | 0));
  }

  /** The network's IPv6 overlay prefix: bytes 0-3 and 4-5 of it (control/overlay6.ts overlay6Of). */
  setOverlay6(hi: number, mid: number): void {
    this.v6hi = hi;
    this.v6mid = mid;
  }

  /** Reads the clock: once per batch (entries' ages are measured in batches' times). */
  tick(): void {
    this.now = this.clock.mono();
  }

  /** Live entries in the flow table (for status and tests; walks the table). */
  flows(): number {
    let n = 0;
    for (let i = 0; i < this.exp.length; i++) if (this.kProto[i] !== 0 && this.exp[i]! > this.now) n++;
    return n;
  }

  /**
   * Stages 1-4 for the IPv4 or IPv6 packet at buf[pkt, pkt+len) (a whole header checked by the
   * caller): true when it may be delivered. Counts what it decides.
   */
  allows(buf: Uint8Array, pkt: number, len: number): boolean {
    if (!this.key(buf, pkt, len, false)) {
      this.counters[C_DENIED]! += 1;
      return false;
    }
    // 2. flows
    const fk = this.flowProto();
    const hit = this.find(this.pSrc, this.pDst, fk, (this.pSp << 16) | this.pDp);
    if (hit >= 0) {
      const r = this.fRule[hit]!;
      this.exp[hit] = this.now + ttlOf(this.pProto);
      this.counters[r < 0 ? C_REPLIES : C_RULES + r]! += 1;
      return true;
    }
    // 3. rules
    const r = this.match();
    if (r < 0) {
      // 4. deny
      this.counters[C_DENIED]! += 1;
      return false;
    }
    this.counters[C_RULES + r]! += 1;
    if (this.pCache) this.insert(this.pSrc, this.pDst, fk, (this.pSp << 16) | this.pDp, r, this.gen);
    return true;
  }

  /** The flow table's protocol for the packet at hand (IPv6 flows apart from IPv4 ones). */
  private flowProto(): number {
    return this.pV6 ? this.pProto + FAMILY6 : this.pProto;
  }

  /** A packet this host sends (from the TUN): its reply will pass. Cheap no-op for other kinds. */
  track(buf: Uint8Array, pkt: number, len: number): void {
    if (!this.key(buf, pkt, len, true) || !this.pCache) return;
    // the reply's key: addresses and ports swapped; an echo request (type 8) expects type 0
    const ports = this.pProto === PROTO_ICMP ? this.pSp << 16 : (this.pDp << 16) | this.pSp;
    // A TCP SYN (without ACK) starts a flow of ours whatever was there before.
    const syn = this.pProto === PROTO_TCP && (buf[pkt + this.pL4 + 13]! & 0x12) === 0x02;
    this.insert(this.pDst, this.pSrc, this.flowProto(), ports, -1, 0, syn);
  }

  /**
   * Stage 1: fills pSrc..pDp. False for a packet too short for its transport header. pCache: the
   * packet belongs to a flow worth an entry (TCP, UDP, ICMP echo; not a fragment; outbound only
   * echo requests, inbound echo requests and replies).
   */
  private key(buf: Uint8Array, pkt: number, len: number, out: boolean): boolean {
    if (buf[pkt]! >> 4 === 6) return this.key6(buf, pkt, len, out);
    this.pV6 = false;
    this.pForeign = false;
    const ihl = (buf[pkt]! & 15) << 2;
    this.pL4 = ihl;
    const proto = buf[pkt + 9]!;
    this.pSrc = ((buf[pkt + 12]! << 24) | (buf[pkt + 13]! << 16) | (buf[pkt + 14]! << 8) | buf[pkt + 15]!) | 0;
    this.pDst = ((buf[pkt + 16]! << 24) | (buf[pkt + 17]! << 16) | (buf[pkt + 18]! << 8) | buf[pkt + 19]!) | 0;
    this.pProto = proto;
    this.pSp = 0;
    this.pDp = 0;
    this.pCache = false;
    if (((buf[pkt + 6]! & 0x1f) | buf[pkt + 7]!) !== 0) return ihl >= 20; // a later fragment: no ports
    const t = pkt + ihl;
    if (proto === PROTO_TCP || proto === PROTO_UDP) {
      if (ihl < 20 || ihl + 4 > len) return false;
      this.pSp = (buf[t]! << 8) | buf[t + 1]!;
      this.pDp = (buf[t + 2]! << 8) | buf[t + 3]!;
      this.pCache = true;
    } else if (proto === PROTO_ICMP) {
      if (ihl < 20 || ihl + 8 > len) return false;
      const type = buf[t]!;
      this.pDp = type;
      if (type === 8 || type === 0) {
        this.pSp = (buf[t + 4]! << 8) | buf[t + 5]!;
        this.pCache = out ? type === 8 : true;
      }
    }
    return true;
  }

  /**
   * Stage 1 for IPv6 (fixed header; a first extension header ends the parse: no ports): the IPv4
   * twins of its overlay addresses, ICMPv6 as ICMP with echo request/reply as types 8/0.
   */
  private key6(buf: Uint8Array, pkt: number, len: number, out: boolean): boolean {
    if (len < 40) return false;
    const u32 = (o: number) => ((buf[o]! << 24) | (buf[o + 1]! << 16) | (buf[o + 2]! << 8) | buf[o + 3]!) | 0;
    const inPrefix = (o: number) =>
      u32(o) === (this.v6hi | 0) && ((buf[o + 4]! << 8) | buf[o + 5]!) === this.v6mid && (u32(o + 6) | buf[o + 10]! | buf[o + 11]!) === 0;
    this.pV6 = true;
    this.pForeign = !inPrefix(pkt + 8);
    this.pSrc = u32(pkt + 20);
    this.pDst = u32(pkt + 36);
    this.pL4 = 40;
    this.pSp = 0;
    this.pDp = 0;
    this.pCache = false;
    const nh = buf[pkt + 6]!;
    const t = pkt + 40;
    if (nh === PROTO_TCP || nh === PROTO_UDP) {
      this.pProto = nh;
      if (44 > len) return false;
      this.pSp = (buf[t]! << 8) | buf[t + 1]!;
      this.pDp = (buf[t + 2]! << 8) | buf[t + 3]!;
      this.pCache = true;
    } else if (nh === PROTO_ICMPV6) {
      this.pProto = PROTO_ICMP;
      if (48 > len) return false;
      const type = buf[t]!;
      const echo = type === 128 ? 8 : type === 129 ? 0 : -1;
      this.pDp = echo >= 0 ? echo : type;
      if (echo >= 0) {
        this.pSp = (buf[t + 4]! << 8) | buf[t + 5]!;
        this.pCache = out ? echo === 8 : true;
      }
    } else this.pProto = nh; // another protocol, or an extension header: no ports
    return true;
  }

  /** Stage 3: the document index of the first rule allowing the packet at hand, or -1. */
  private match(): number {
    if (this.pV6) return this.match6();
    const list = this.bySrc.get(this.pSrc);
    const proto = this.pProto;
    const dp = this.pDp;
    if (list !== undefined) {
      for (let k = 0; k < list.length; k++) {
        const r = list[k]!;
        const rp = this.rProto[r]!;
        if ((rp === PROTO_ANY || rp === proto) && dp >= this.rLo[r]! && dp <= this.rHi[r]!) return this.rIndex[r]!;
      }
      return -1;
    }
    const src = this.pSrc;
    for (let k = 0; k < this.oRule.length; k++) {
      if ((src & this.oMask[k]!) !== this.oBase[k]) continue;
      const r = this.oRule[k]!;
      const rp = this.rProto[r]!;
      if ((rp === PROTO_ANY || rp === proto) && dp >= this.rLo[r]! && dp <= this.rHi[r]!) return this.rIndex[r]!;
    }
    return -1;
  }

  /** Stage 3 for IPv6: as match(), without the rules whose source is an IPv4 CIDR. */
  private match6(): number {
    const proto = this.pProto;
    const dp = this.pDp;
    const list = this.pForeign ? undefined : this.bySrc.get(this.pSrc);
    if (list !== undefined) {
      for (let k = 0; k < list.length; k++) {
        const r = list[k]!;
        const rp = this.rProto[r]!;
        if (this.rCidr[r] === 0 && (rp === PROTO_ANY || rp === proto) && dp >= this.rLo[r]! && dp <= this.rHi[r]!) return this.rIndex[r]!;
      }
      return -1;
    }
    for (let k = 0; k < this.oRule.length; k++) {
      const r = this.oRule[k]!;
      const rp = this.rProto[r]!;
      if (this.rCidr[r] === 0 && (rp === PROTO_ANY || rp === proto) && dp >= this.rLo[r]! && dp <= this.rHi[r]!) return this.rIndex[r]!;
    }
    return -1;
  }

  private bucket(src: number, dst: number, proto: number, ports: number): number {
    let h = Math.imul(src ^ Math.imul(dst, 0x9e3779b1) ^ Math.imul(ports ^ proto, 0x85ebca6b), 0xc2b2ae35);
    h ^= h >>> 15;
    return (h & this.mask) * WAYS;
  }

  /** The slot of a live entry for the key (rule entries only of this policy), or -1. */
  private find(src: number, dst: number, proto: number, ports: number): number {
    const b = this.bucket(src, dst, proto, ports);
    for (let i = b; i < b + WAYS; i++) {
      if (this.kSrc[i] === src && this.kDst[i] === dst && this.kPorts[i] === ports && this.kProto[i] === proto && this.exp[i]! > this.now) {
        if ((this.fRule[i]! < 0 || this.fGen[i] === this.gen) && (this.ver === null || this.whole(i, src, dst, proto, ports))) return i;
      }
    }
    return -1;
  }

  /** Shared table: entry `i` holds the key whole, read between two equal even versions. */
  private whole(i: number, src: number, dst: number, proto: number, ports: number): boolean {
    const ver = this.ver!;
    const v = Atomics.load(ver, i);
    if ((v & 1) !== 0) return false; // another worker is writing it
    const same =
      this.kSrc[i] === src &&
      this.kDst[i] === dst &&
      this.kPorts[i] === ports &&
      this.kProto[i] === proto &&
      (this.fRule[i]! < 0 || this.fGen[i] === this.gen);
    return same && Atomics.load(ver, i) === v;
  }

  /**
   * Adds or refreshes the entry for a key. A reply entry (rule -1, from `track`) never replaces an
   * unexpired entry a rule made, even of an older policy: that flow was started by the peer, and
   * our answers must not keep it open once a new policy forbids it (unless `force`: a SYN of ours).
   */
  private insert(src: number, dst: number, proto: number, ports: number, rule: number, gen: number, force = false): void {
    const b = this.bucket(src, dst, proto, ports);
    let same = -1;
    let free = -1;
    let victim = b;
    let oldest = Infinity;
    for (let i = b; i < b + WAYS; i++) {
      if (this.kSrc[i] === src && this.kDst[i] === dst && this.kPorts[i] === ports && this.kProto[i] === proto) {
        same = i;
        break;
      }
      const dead = this.exp[i]! <= this.now || (this.fRule[i]! >= 0 && this.fGen[i] !== this.gen);
      if (dead) {
        if (free < 0) free = i;
      } else if (this.exp[i]! < oldest) {
        victim = i;
        oldest = this.exp[i]!;
      }
    }
    let slot: number;
    if (same >= 0) {
      // the same flow: a live reply entry (a flow we started) stays one when a rule allows it too
      if (rule >= 0 && this.fRule[same]! < 0 && this.exp[same]! > this.now) {
        this.exp[same] = this.now + ttlOf(proto);
        return;
      }
      // the peer's flow (allowed by a rule, maybe of an older policy): our answers change nothing
      if (rule < 0 && !force && this.fRule[same]! >= 0 && this.exp[same]! > this.now) return;
      slot = same;
    } else if (free >= 0) slot = free;
    else {
      slot = victim;
      this.evictions++;
    }
    const ver = this.ver;
    let v = 0;
    if (ver !== null) {
      v = Atomics.load(ver, slot);
      // (another worker is writing this entry: ours is lost, see the constructor)
      if ((v & 1) !== 0 || Atomics.compareExchange(ver, slot, v, v + 1) !== v) return;
    }
    this.kSrc[slot] = src;
    this.kDst[slot] = dst;
    this.kPorts[slot] = ports;
    this.kProto[slot] = proto;
    this.exp[slot] = this.now + ttlOf(proto);
    this.fRule[slot] = rule;
    this.fGen[slot] = gen;
    if (ver !== null) Atomics.store(ver, slot, v + 2);
  }

}
