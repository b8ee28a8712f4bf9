/**
 * Fuzz: the inbound data path, Inbound.process (src/dataplane/inbound.ts), the one place where
 * datagrams from anyone on the internet are parsed. Node B's Inbound, with real keys and the real
 * AEAD (sodium-native, and the WASM fallback), receives batches of:
 *
 *   - random datagrams of 0..2000 bytes (many of 0..40), with random or plausible headers;
 *   - handshake messages (type 1..3 at exactly 148, 92 or 64 bytes), which go to the control
 *     thread, rate-limited (other lengths take the data checks);
 *   - STUN-shaped datagrams (answers to our binding requests, and near misses), which also go to
 *     the control thread, rate-limited with the handshakes;
 *   - genuine datagrams sealed by its peers: A through a real Outbound, and raw sealers for A's
 *     draining previous session and C's current and to-be-confirmed ("promote") sessions, with
 *     plaintexts from good IPv4 to spoofed sources, bad lengths, IPv6, keepalives, pings, probes,
 *     pongs, forward requests (B relays in one of the two runs), relayed messages carrying any of
 *     the above (genuine datagrams of A or C, handshakes, garbage, nested relays) and malformed
 *     control messages; fed at once, later, out of order, replayed, from elsewhere;
 *   - mutations of genuine datagrams (AFL-style byte edits, truncation, extension, splices, and
 *     header changes: type, flags, reserved bytes, receiver index of another session, counters)
 *     and an insider (C) sealing under A's receiver index.
 *
 * A reference model written from the stage list in inbound.ts predicts every datagram's fate
 * (each drop reason, handshake and STUN hand-off, ping, pong, keepalive, relay request,
 * confirmation, roam, TUN write and statistics); after each batch everything observable must match
 * it exactly. In particular:
 * process never throws; every datagram is accounted for exactly once; only plaintexts a peer
 * actually sealed reach the TUN; and every 1,000 cases a fresh packet from A and from C still gets
 * through (replay and counter state stay consistent).
 */
import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { FfiAead, NativeAead, WasmAead, type Aead } from '../../src/crypto/aead';
import { generateKeyPair, type KeyPair } from '../../src/crypto/keys';
import { StaticKeyAgreement, type SessionKeys } from '../helpers/static-keys';
import { PacketBatch, SendList, slotSizeFor } from '../../src/dataplane/batch';
import { FakeClock } from '../../src/dataplane/fakes';
import { Inbound } from '../../src/dataplane/inbound';
import { HandshakeLimiter, HS_ALLOW, HS_SOURCE_LIMITED } from '../../src/dataplane/hslimit';
import type { TunIo } from '../../src/dataplane/io';
import { Outbound, PING_INTERVAL_CONNECTING_MS } from '../../src/dataplane/outbound';
import type { WorkerPeer, WorkerSession } from '../../src/dataplane/peer';
import { Sessions } from '../../src/dataplane/sessions';
import { REPLAY_WINDOW } from '../../src/dataplane/replay';
import {
  DataplaneStats,
  DROP,
  DROP_REASONS,
  PEER_STRIDE,
  P_LAST_ROAM,
  P_LAST_RX,
  P_RTT,
  P_RX_BYTES,
  P_RX_PKTS,
  T_HS_PASSED,
  T_RELAY_BYTES,
  T_RELAY_PKTS,
  T_RX_BYTES,
  T_RX_PKTS,
} from '../../src/dataplane/stats';
import {
  COUNTER_LIMIT,
  CTRL_BYE,
  CTRL_FORWARD,
  CTRL_LEN,
  CTRL_PING,
  CTRL_PONG,
  CTRL_PROBE,
  CTRL_RELAYED,
  FLAG_CSUM_PARTIAL,
  HEADER_LEN,
  OVERHEAD,
  PONG_LEN,
  RELAY_PREFIX,
  TAG_LEN,
  writeHeader,
} from '../../src/dataplane/wire';
import { DIRECT } from '../../src/dataplane/peer';
import { parseIpv4, parsePrefix, type Prefix } from '../../src/util/ipv4';
import { casesFor, check, fuzz, INTERESTING_32, mutate, Rand, type FuzzTarget } from '../helpers/fuzz';

const MTU = 1420;
const CAP = 16;
const SLOT = slotSizeFor(MTU);
const ip = (s: string): number => parseIpv4(s)!;

const A_SLOT = 3; // B's stats slots for its peers (not 0, so a mix-up shows)
const C_SLOT = 4;
const A_OVERLAY = ip('100.64.0.1');
const B_OVERLAY = ip('100.64.0.2');
const C_OVERLAY = ip('100.64.0.3');
const A_ALLOWED = ['10.10.0.0/16'];
const C_ALLOWED = ['10.10.5.0/24']; // more specific than A's: A may not send from it
const A_ENDPOINT = { ip: ip('198.51.100.1'), port: 51820 };
const C_ENDPOINT = { ip: ip('192.0.2.3'), port: 51822 };
const ATTACKERS = Array.from({ length: 256 }, (_, i) => ({ ip: (ip('233.252.0.0') + i * 7) >>> 0, port: 1024 + i }));
const STUN_SERVERS = [{ ip: ip('192.0.2.100'), port: 3478 }, { ip: ip('198.51.100.200'), port: 19302 }];
const STUN_MAGIC = 0x2112a442;
/** Overlay addresses a forward or relayed message may name: the peers, B itself, a stranger, a routed prefix. */
const RELAY_ADDRS = [A_OVERLAY, B_OVERLAY, C_OVERLAY, ip('100.64.0.99'), ip('10.10.5.9'), 0];

// ---------------------------------------------------------------------------------------------
// Reference model

/** The replay window's specification: every accepted counter in a Set (as in replay.test.ts). */
class RefWindow {
  private readonly seen = new Set<number>();
  highest = 0;
  mayAccept(c: number): boolean {
    if (c >= COUNTER_LIMIT) return false;
    if (c > this.highest) return true;
    if (this.highest - c >= REPLAY_WINDOW) return false;
    return !this.seen.has(c);
  }
  accept(c: number): void {
    this.seen.add(c);
    if (c > this.highest) {
      this.highest = c;
      if (this.seen.size > 4 * REPLAY_WINDOW) for (const x of this.seen) if (this.highest - x >= REPLAY_WINDOW) this.seen.delete(x);
    }
  }
}

class RefPeer {
  rxPkts = 0;
  rxBytes = 0;
  lastRx = 0;
  lastRoam = 0;
  rtt = NaN;
  /** The relay (B's slot for it) the peer's packets last came through, or DIRECT. */
  via = DIRECT;
  constructor(
    readonly slot: number,
    readonly name: string,
    readonly overlay: number,
    public ip: number,
    public port: number,
  ) {}
}

/** A STUN message as the wire spec knows it: type 0 or 1 first, length field = body, 4-aligned, magic cookie. */
function isStun(d: Buffer): boolean {
  if (d.length < 20 || d[0]! > 1) return false;
  const body = d.readUInt16BE(2);
  return d.readUInt32BE(4) === STUN_MAGIC && body === d.length - 20 && body % 4 === 0;
}

class RefSession {
  readonly win = new RefWindow();
  constructor(
    readonly peer: RefPeer,
    readonly keyId: number,
    public promote: boolean,
  ) {}
}

/** A datagram a peer really sealed, with what it carries. */
interface Genuine {
  data: Buffer;
  plain: Buffer;
  index: number;
  counter: number;
  flags: number;
  /** The genuine datagram a forward or relayed plaintext carries: kept known while this one is. */
  inner?: Genuine;
  /** How many known datagrams carry this one. */
  carriedBy?: number;
  /** Evicted, but still carried by a known datagram. */
  evicted?: boolean;
}

type Ping = { slot: number; t0: number; ip: number; port: number; via: number };
type Pong = { slot: number; rtt: number; ip: number; port: number; via: number; seenIp: number; seenPort: number };
type Roam = { slot: number; ip: number; port: number; via: number };
type Handoff = { data: Buffer; ip: number; port: number; via: number };
type RelayRequest = { slot: number; from: number; data: Buffer };

interface Expected {
  drops: number[];
  writes: { i: number; bytes: Buffer; partial: boolean }[];
  pings: Ping[];
  pongs: Pong[];
  roams: Roam[];
  handshakes: Handoff[];
  stuns: Handoff[];
  relays: RelayRequest[];
  confirmed: { slot: number; keyId: number }[];
  byes: { slot: number }[];
  /** Authenticated packets with no visible effect. */
  keepalives: number;
  /** Relayed messages whose datagram went through the stages again, as its sender's own. */
  unwrapped: number;
  /** spoofed drops before authentication (a relay passing on its own datagram). */
  preAuthSpoofed: number;
}

function emptyExpected(): Expected {
  return {
    drops: DROP_REASONS.map(() => 0),
    writes: [],
    pings: [],
    pongs: [],
    roams: [],
    handshakes: [],
    stuns: [],
    relays: [],
    confirmed: [],
    byes: [],
    keepalives: 0,
    unwrapped: 0,
    preAuthSpoofed: 0,
  };
}

function contains(p: Prefix, a: number): boolean {
  const mask = p.len === 0 ? 0 : (0xffffffff << (32 - p.len)) >>> 0;
  return ((a & mask) >>> 0) === p.base;
}

// ---------------------------------------------------------------------------------------------
// Senders

/** Seals datagrams with a raw session key, as the peer holding it would (or an insider with it). */
class RawSender {
  private readonly handle: number;
  counter = 0;
  constructor(
    private readonly aead: Aead,
    key: Uint8Array,
    readonly index: number,
  ) {
    this.handle = aead.loadKey(key);
  }
  seal(plain: Buffer, counter: number, flags: number, index = this.index): Buffer {
    const d = Buffer.alloc(HEADER_LEN + plain.length + TAG_LEN);
    writeHeader(d, 0, index, counter, flags);
    plain.copy(d, HEADER_LEN);
    this.aead.seal(this.handle, counter, d, 0, HEADER_LEN, HEADER_LEN, plain.length);
    return d;
  }
}

/** A TUN that records every write and, like a kernel, sometimes refuses one (or a held batch at flush). */
class FuzzTun implements TunIo {
  readonly attempts: { i: number; bytes: Buffer; partial: boolean; accepted: boolean }[] = [];
  flushRefused = 0;
  refuse = true;
  private held = 0;
  constructor(private readonly r: Rand) {}
  readBatch(): number {
    return 0; // the inbound path only writes
  }
  writeSlot(batch: PacketBatch, i: number, len: number, partial: boolean): boolean {
    check(Number.isInteger(i) && i >= 0 && i < batch.capacity, `writeSlot slot ${i}`);
    check(Number.isInteger(len) && len >= 0 && len <= batch.maxPacket, `writeSlot length ${len}`);
    const start = batch.offset(i) + HEADER_LEN;
    const accepted = !(this.refuse && this.r.chance(0.02));
    this.attempts.push({ i, bytes: Buffer.from(batch.buf.subarray(start, start + len)), partial, accepted });
    if (accepted) this.held++;
    return accepted;
  }
  flush(): number {
    const refused = this.refuse && this.held > 0 && this.r.chance(0.01) ? this.r.int(1, this.held) : 0;
    this.held = 0;
    this.flushRefused += refused;
    return refused;
  }
}

// ---------------------------------------------------------------------------------------------
// The harness: B under test, its peers' senders, the model

interface Keys {
  a: KeyPair;
  b: KeyPair;
  c: KeyPair;
}

function workerPeer(
  slot: number,
  name: string,
  overlay: number,
  allowed: string[],
  ep: { ip: number; port: number },
  keyId: number,
  k: SessionKeys,
  others: WorkerSession[] = [],
): WorkerPeer {
  return {
    slot,
    name,
    overlayIp: overlay,
    allowed: allowed.map((s) => parsePrefix(s)!),
    endpointIp: ep.ip,
    endpointPort: ep.port,
    sessions: [session(keyId, k, true), ...others],
  };
}

function session(keyId: number, k: SessionKeys, confirmed: boolean): WorkerSession {
  return { keyId, txKey: k.txKey, rxKey: k.rxKey, txIndex: k.txIndex, rxIndex: k.rxIndex, confirmed, sendUntil: Infinity };
}

class Harness {
  readonly clock = new FakeClock(1_700_000_000_000, 50_000);
  readonly stats = new DataplaneStats();
  readonly inb: Inbound;
  private readonly bSessions: Sessions;
  readonly tun: FuzzTun;
  readonly batch = new PacketBatch(Buffer.alloc(SLOT * CAP), SLOT, CAP);
  readonly peersOfB: WorkerPeer[];
  /** Observed events, in order. */
  readonly pings: Ping[] = [];
  readonly pongs: Pong[] = [];
  readonly roams: Roam[] = [];
  readonly handshakes: Handoff[] = [];
  readonly stuns: Handoff[] = [];
  readonly relays: RelayRequest[] = [];
  readonly confirmed: { slot: number; keyId: number }[] = [];
  readonly byes: { slot: number }[] = [];

  // A's side: a real Outbound that sends to B
  private readonly aClock = new FakeClock(1_600_000_000_000, 7_000);
  private readonly aOut: Outbound;
  private readonly aBatch = new PacketBatch(Buffer.alloc(SLOT), SLOT, 1);
  private readonly aList = new SendList(1);
  // full-size, as the worker's: forward and relayed messages carry whole datagrams
  private readonly aCtrl = new PacketBatch(Buffer.alloc(SLOT), SLOT, 1);
  private readonly aCtrlList = new SendList(1);
  private readonly A_SLOT_OF_B = 7;
  readonly aIndex: number;
  // raw sealers: A's draining previous session, C's current one and C's "promote" one
  readonly aOld: RawSender;
  readonly cCur: RawSender;
  readonly cNew: RawSender;

  // model
  readonly refA = new RefPeer(A_SLOT, 'a', A_OVERLAY, A_ENDPOINT.ip, A_ENDPOINT.port);
  readonly refC = new RefPeer(C_SLOT, 'c', C_OVERLAY, C_ENDPOINT.ip, C_ENDPOINT.port);
  readonly sessions = new Map<number, RefSession>();
  private readonly drops = DROP_REASONS.map(() => 0);
  private totalPkts = 0;
  private totalBytes = 0;
  private relayPkts = 0;
  private relayBytes = 0;
  /** Depth of plaintext generation (a relayed message carries a datagram made for it). */
  private depth = 0;
  /**
   * The flood limits as B's Inbound must consult them: a second limiter with the same seed and
   * clock, asked the same questions in the same order (hslimit.test.ts tests the limiter itself).
   */
  private readonly limiter: HandshakeLimiter;
  private readonly limiterSeed: Uint32Array;
  private hsPassed = 0;
  /** Genuine datagrams by `${index}:${counter}`; `pool` holds the same ones for picking. */
  private readonly genuine = new Map<string, Genuine>();
  readonly pool: Genuine[] = [];
  private evicted: Genuine[] = [];
  /** A handshake flood in progress: this many more from `src`. */
  flood = { left: 0, src: ATTACKERS[0]! };
  /** Digests of what the peers sealed (and of the IPv4 packet inside), to prove nothing else reaches the TUN; counted, as plaintexts repeat. */
  private readonly sealed = new Map<string, number>();
  /** What happened in total, for the coverage check at the end. */
  readonly seen = {
    drops: DROP_REASONS.map(() => 0),
    writes: 0,
    pings: 0,
    pongs: 0,
    roams: 0,
    relayedRoams: 0,
    handshakes: 0,
    relayedHandshakes: 0,
    stuns: 0,
    relays: 0,
    confirmed: 0,
    keepalives: 0,
    unwrapped: 0,
  };

  constructor(
    readonly r: Rand,
    aead: Aead,
    senderAead: Aead,
    aOutAead: Aead,
    kx: { b: StaticKeyAgreement; a: StaticKeyAgreement; c: StaticKeyAgreement },
    keys: Keys,
    /** B relays for its peers. */
    readonly relayEnabled: boolean,
  ) {
    const run = '0000000000000000';
    const old = '1111111111111111';
    const next = '2222222222222222';
    const ba = kx.b.derive(keys.a.publicKey, run, run);
    const baOld = kx.b.derive(keys.a.publicKey, old, old);
    const bc = kx.b.derive(keys.c.publicKey, run, run);
    const bcNew = kx.b.derive(keys.c.publicKey, next, next);
    const ab = kx.a.derive(keys.b.publicKey, run, run);
    const abOld = kx.a.derive(keys.b.publicKey, old, old);
    const cb = kx.c.derive(keys.b.publicKey, run, run);
    const cbNew = kx.c.derive(keys.b.publicKey, next, next);

    this.tun = new FuzzTun(new Rand(r.u32()));
    this.bSessions = new Sessions(aead, this.clock);
    this.limiterSeed = new Uint32Array([r.u32(), r.u32()]);
    this.inb = new Inbound(
      aead,
      this.stats,
      this.clock,
      this.bSessions,
      {
        ping: (slot, t0, ipv, port, via) => this.pings.push({ slot, t0, ip: ipv, port, via }),
        bye: (slot) => this.byes.push({ slot }),
        pong: (slot, rtt, ipv, port, via, seenIp, seenPort) => this.pongs.push({ slot, rtt, ip: ipv, port, via, seenIp, seenPort }),
        roam: (slot, ipv, port, via) => this.roams.push({ slot, ip: ipv, port, via }),
        // event data is only valid during the call: copies
        handshake: (data, ipv, port, via) => this.handshakes.push({ data: Buffer.from(data), ip: ipv, port, via }),
        stun: (data, ipv, port) => this.stuns.push({ data: Buffer.from(data), ip: ipv, port, via: DIRECT }),
        relay: (slot, from, data) => this.relays.push({ slot, from, data: Buffer.from(data) }),
        confirmed: (slot, keyId) => this.confirmed.push({ slot, keyId }),
      },
      { relay: relayEnabled, limiter: new HandshakeLimiter(this.clock, { seed: this.limiterSeed }) },
    );
    this.limiter = new HandshakeLimiter(this.clock, { seed: this.limiterSeed });
    this.peersOfB = [
      // a's current session (2) and the one before it, still draining (1); c's current one (3)
      // and one B answered that c has not used yet (4)
      workerPeer(A_SLOT, 'a', A_OVERLAY, A_ALLOWED, A_ENDPOINT, 2, ba, [session(1, baOld, true)]),
      workerPeer(C_SLOT, 'c', C_OVERLAY, C_ALLOWED, C_ENDPOINT, 3, bc, [session(4, bcNew, false)]),
    ];
    this.refreshPeers();
    this.sessions.set(ba.rxIndex, new RefSession(this.refA, 2, false));
    this.sessions.set(baOld.rxIndex, new RefSession(this.refA, 1, false));
    this.sessions.set(bc.rxIndex, new RefSession(this.refC, 3, false));
    this.sessions.set(bcNew.rxIndex, new RefSession(this.refC, 4, true));
    expect(this.sessions.size).toBe(4);

    const aSessions = new Sessions(aOutAead, this.aClock);
    this.aOut = new Outbound(aOutAead, new DataplaneStats(), this.aClock, aSessions);
    const peersOfA = [workerPeer(this.A_SLOT_OF_B, 'b', B_OVERLAY, [], { ip: ip('203.0.113.2'), port: 51821 }, 1, ab)];
    aSessions.set(peersOfA);
    this.aOut.setPeers(peersOfA);
    this.aIndex = ab.txIndex;
    this.aOld = new RawSender(senderAead, abOld.txKey, abOld.txIndex);
    this.cCur = new RawSender(senderAead, cb.txKey, cb.txIndex);
    this.cNew = new RawSender(senderAead, cbNew.txKey, cbNew.txIndex);
    expect(ab.txIndex).toBe(ba.rxIndex);
    expect(cbNew.txIndex).toBe(bcNew.rxIndex);
  }

  // ---- plaintexts ---------------------------------------------------------------------------

  /** An IPv4 packet of `len` bytes (>= 20): source, destination, total-length field as given. */
  private ipv4(len: number, src: number, dst: number, total = len): Buffer {
    const p = this.r.bytes(len);
    p[0] = 0x45;
    p.writeUInt16BE(total & 0xffff, 2);
    p.writeUInt32BE(src >>> 0, 12);
    p.writeUInt32BE(dst >>> 0, 16);
    return p;
  }

  /** A source address for a packet from `peer`: usually one it may use, sometimes not. */
  private source(peer: 'a' | 'c'): number {
    const r = this.r;
    switch (r.int(0, 5)) {
      case 0:
      case 1:
        return peer === 'a' ? A_OVERLAY : C_OVERLAY;
      case 2: // inside its prefix (for A: sometimes inside C's more specific one: spoofed)
        return peer === 'a' ? (ip('10.10.0.0') + r.int(0, 0xffff)) >>> 0 : (ip('10.10.5.0') + r.int(0, 255)) >>> 0;
      case 3:
        return r.pick([A_OVERLAY, B_OVERLAY, C_OVERLAY, ip('10.10.5.9'), ip('10.11.0.1')]);
      default:
        return r.chance(0.5) ? (peer === 'a' ? A_OVERLAY : ip('10.10.5.77')) : r.u32();
    }
  }

  /** Any plaintext a (possibly buggy or hostile) authenticated peer could seal. */
  private anyPlaintext(peer: 'a' | 'c'): Buffer {
    const r = this.r;
    const len = (): number => (r.chance(0.5) ? r.int(20, 200) : r.int(20, MTU));
    // (no relay messages inside the datagram a relay message carries, beyond one level)
    switch (r.weighted([10, 2, 2, 1, 1, 1, 2, 2, 2, 1, 1, 2, 1, this.depth > 1 ? 0 : 2, this.depth > 1 ? 0 : 3])) {
      case 0: { // an IPv4 packet, total length right
        const n = len();
        return this.ipv4(n, this.source(peer), B_OVERLAY);
      }
      case 1: { // total length shorter than the packet (padding after it is not delivered)
        const n = len();
        return this.ipv4(n, this.source(peer), B_OVERLAY, r.int(20, n));
      }
      case 2: { // total length impossible
        const n = len();
        return this.ipv4(n, this.source(peer), B_OVERLAY, r.pick([0, 1, 19, n + 1, 0xffff, r.int(0, 0xffff)]));
      }
      case 3: { // IPv6 (not carried yet)
        const p = r.bytes(len());
        p[0] = 0x60;
        return p;
      }
      case 4: { // too short for IPv4
        const p = r.bytes(r.int(1, 19));
        p[0] = 0x45;
        return p;
      }
      case 5: // random bytes
        return r.bytes(r.int(1, 300));
      case 6: // keepalive
        return Buffer.alloc(0);
      case 7:
        return this.control(r.chance(0.2) ? CTRL_BYE : CTRL_PING, this.t0());
      case 8:
        return this.pong(this.t0(), this.seenIp(), r.int(0, 0xffff));
      case 9: { // control message of the wrong length
        const p = r.bytes(r.pick([1, 2, 9, 11, 15, 17, r.int(1, 40)]));
        p[0] = 0;
        return p;
      }
      case 10: // unknown control kind
        return this.control(r.pick([0, 7, 0x7f, 0xff]), this.t0());
      case 11:
        return this.control(CTRL_PROBE, this.t0());
      case 12: { // a known kind at the other kinds' length: an old 10-byte pong, a 16-byte ping or probe
        if (r.chance(0.5)) return this.control(CTRL_PONG, this.t0());
        const p = this.pong(this.t0(), r.u32(), r.int(0, 0xffff));
        p[1] = r.pick([CTRL_PING, CTRL_PROBE]);
        return p;
      }
      case 13:
        return relayMsg(CTRL_FORWARD, this.relayAddr(), this.carried());
      default:
        return relayMsg(CTRL_RELAYED, this.relayAddr(), this.carried());
    }
  }

  /** An address a forward or relayed message names: mostly a peer's. */
  private relayAddr(): number {
    const r = this.r;
    return r.chance(0.9) ? r.pick(RELAY_ADDRS.slice(0, 3)) : r.chance(0.8) ? r.pick(RELAY_ADDRS) : r.u32();
  }

  /** What a forward or relayed message carries: a genuine datagram (old or new), a handshake, STUN, garbage, nothing. */
  private carried(): Buffer {
    const r = this.r;
    this.depth++;
    try {
      switch (r.weighted([6, 6, 2, 1, 2, 1])) {
        case 0: {
          const small = this.pool.filter((g) => g.data.length <= MTU + OVERHEAD);
          return small.length > 0 ? r.pick(small).data : this.anyGenuine().data;
        }
        case 1:
          return this.anyGenuine().data;
        case 2: {
          const type = r.int(1, 3);
          const d = r.bytes(r.chance(0.8) ? [148, 92, 64][type - 1]! : r.int(1, 200));
          d[0] = type;
          return d;
        }
        case 3:
          return stunish(r);
        case 4:
          return r.bytes(r.int(1, 120));
        default:
          return Buffer.alloc(0);
      }
    } finally {
      this.depth--;
    }
  }

  /** Where a pong says the ping came from: mostly somewhere plausible, sometimes 0:0 (relayed) or anything. */
  private seenIp(): number {
    const r = this.r;
    return r.chance(0.6) ? ip('203.0.113.2') : r.chance(0.5) ? 0 : r.u32();
  }

  private pong(t0: number, seenIp: number, seenPort: number): Buffer {
    const b = Buffer.alloc(PONG_LEN);
    b[1] = CTRL_PONG;
    b.writeDoubleLE(t0, 2);
    b.writeUInt32BE(seenIp >>> 0, 10);
    b.writeUInt16BE(seenPort, 14);
    return b;
  }

  /** A pong's t0: mostly a plausible earlier time on B's clock, sometimes anything. */
  private t0(): number {
    const r = this.r;
    const mono = this.clock.mono();
    return r.chance(0.7) ? mono - r.int(0, 70_000) : r.pick([NaN, Infinity, -Infinity, -0, mono + 5, 1e300, -1, r.next() * 1e12]);
  }

  private control(kind: number, t0: number): Buffer {
    const b = Buffer.alloc(CTRL_LEN);
    b[1] = kind;
    b.writeDoubleLE(t0, 2);
    return b;
  }

  private flags(): number {
    return this.r.chance(0.5) ? 0 : this.r.chance(0.98) ? FLAG_CSUM_PARTIAL : this.r.int(0, 255);
  }

  /** Counter for a raw sender's next datagram: its own next one, sometimes after a jump or (not moving it) past the limit. */
  private nextCounter(s: RawSender): number {
    const r = this.r;
    if (r.chance(0.02)) s.counter += r.pick([1, 100, REPLAY_WINDOW - 1, REPLAY_WINDOW, REPLAY_WINDOW + 1, 10_000]);
    return r.chance(0.005) ? COUNTER_LIMIT + r.pick([0, 1, 1000]) : s.counter++;
  }

  // ---- genuine datagrams ----------------------------------------------------------------------

  /** Digests a genuine datagram's plaintext may reach the TUN as: all of it, or the IPv4 packet at its start. */
  private digests(g: Genuine): string[] {
    const out = [digest(g.plain)];
    if (g.plain.length >= 20) {
      const total = g.plain.readUInt16BE(2);
      if (total >= 20 && total < g.plain.length) out.push(digest(g.plain.subarray(0, total)));
    }
    return out;
  }

  private remember(g: Genuine): Genuine {
    this.genuine.set(`${g.index}:${g.counter}`, g);
    for (const d of this.digests(g)) this.sealed.set(d, (this.sealed.get(d) ?? 0) + 1);
    // A forward or relayed message carrying a genuine datagram keeps it known (it may be replayed
    // after the carried one left the pool).
    const p = g.plain;
    if (p.length >= RELAY_PREFIX + OVERHEAD && p[0] === 0 && (p[1] === CTRL_FORWARD || p[1] === CTRL_RELAYED)) {
      const inner = p.subarray(RELAY_PREFIX);
      const known = this.genuine.get(`${inner.readUInt32LE(4)}:${Number(inner.readBigUInt64LE(8))}`);
      if (known?.data.equals(inner)) {
        g.inner = known;
        known.carriedBy = (known.carriedBy ?? 0) + 1;
      }
    }
    if (this.pool.length >= 512) {
      // Forgotten after the next batch: it may be in the batch being assembled.
      this.evicted.push(this.pool.splice(this.r.int(0, this.pool.length - 1), 1)[0]!);
    }
    this.pool.push(g);
    return g;
  }

  /** A datagram from A's real Outbound: an IPv4 packet from its TUN, a ping, probe or pong, or a forward or relayed message. */
  fromA(
    kind: 'ip' | 'ping' | 'pong' | 'probe' | 'forward' | 'relayed' = this.r.pick(['ip', 'ip', 'ip', 'ip', 'ping', 'pong', 'probe', 'forward', 'relayed'] as const),
    plain?: Buffer,
  ): Genuine {
    const r = this.r;
    if (this.depth > 1 && (kind === 'forward' || kind === 'relayed')) kind = 'ip';
    let batch: PacketBatch;
    if (kind === 'ip') {
      const n = r.chance(0.5) ? r.int(20, 200) : r.int(20, MTU);
      const p = plain ?? this.ipv4(n, this.source('a'), B_OVERLAY, r.chance(0.9) ? n : r.int(0, 0xffff));
      batch = this.aBatch;
      p.copy(batch.buf, HEADER_LEN);
      batch.len[0] = p.length;
      batch.flags[0] = r.chance(0.5) ? FLAG_CSUM_PARTIAL : 0;
      this.aOut.process(batch, 1, this.aList);
      check(this.aList.count === 1, 'A did not send its packet');
      plain = Buffer.from(p);
    } else {
      // what A carries for a relay: made first (it may use A's own Outbound)
      // (a relay message carries at most a slot's largest packet: a longer one is cut, and fails to open)
      const data = kind === 'forward' || kind === 'relayed' ? Buffer.from(this.carried().subarray(0, this.aCtrl.maxPacket)) : Buffer.alloc(0);
      batch = this.aCtrl;
      this.aCtrlList.count = 0;
      if (kind === 'ping') {
        this.aClock.advance(PING_INTERVAL_CONNECTING_MS + 1);
        this.aOut.timers(batch, this.aCtrlList);
        plain = this.control(CTRL_PING, this.aClock.mono());
      } else if (kind === 'probe') {
        this.aOut.probe(this.A_SLOT_OF_B, ip('203.0.113.2'), r.pick([51821, 40000]), batch, this.aCtrlList);
        plain = this.control(CTRL_PROBE, this.aClock.mono());
      } else if (kind === 'pong') {
        const t0 = this.t0();
        const seen = { ip: this.seenIp(), port: r.int(0, 0xffff) };
        this.aOut.pong(this.A_SLOT_OF_B, t0, seen.ip, seen.port, DIRECT, batch, this.aCtrlList);
        plain = this.pong(t0, seen.ip, seen.port);
      } else if (kind === 'forward') {
        const target = this.relayAddr();
        this.aOut.forward(this.A_SLOT_OF_B, target, data, batch, this.aCtrlList);
        plain = relayMsg(CTRL_FORWARD, target, data);
      } else {
        const from = this.relayAddr();
        this.aOut.relay(this.A_SLOT_OF_B, from, data, batch, this.aCtrlList);
        plain = relayMsg(CTRL_RELAYED, from, data);
      }
      check(this.aCtrlList.count === 1, `A did not send its ${kind}`);
    }
    const data = Buffer.from(batch.buf.subarray(0, batch.len[0]!));
    const counter = data.readUInt32LE(8) + data.readUInt32LE(12) * 2 ** 32;
    return this.remember({ data, plain, index: this.aIndex, counter, flags: data[1]! });
  }

  /** A datagram from one of the raw sealers; `plain` given: the next counter and valid flags, as a healthy peer sends. */
  fromRaw(s: RawSender, plain?: Buffer): Genuine {
    const p = plain ?? this.anyPlaintext(s === this.aOld ? 'a' : 'c');
    const counter = plain ? s.counter++ : this.nextCounter(s);
    const flags = plain ? 0 : this.flags();
    return this.remember({ data: s.seal(p, counter, flags), plain: p, index: s.index, counter, flags });
  }

  anyGenuine(): Genuine {
    const k = this.r.weighted([50, 15, 20, 15]);
    return k === 0 ? this.fromA() : this.fromRaw(k === 1 ? this.aOld : k === 2 ? this.cCur : this.cNew);
  }

  // ---- the oracle -----------------------------------------------------------------------------

  /**
   * The flood limits: per source address (a peer's current direct endpoint may use the global
   * reserve) or per relaying peer, then the global budget; a refusal is counted by its reason.
   */
  private allowHandshake(src: number, via: number, drop: (reason: keyof typeof DROP) => void): boolean {
    const known = [this.refA, this.refC].some((p) => p.via === DIRECT && p.ip === src);
    const v = via === DIRECT ? this.limiter.allowDirect(src, known) : this.limiter.allowRelayed(via);
    if (v === HS_ALLOW) {
      this.hsPassed++;
      return true;
    }
    drop(v === HS_SOURCE_LIMITED ? 'handshakeRateLimited' : 'handshakeOverBudget');
    return false;
  }

  /**
   * Predicts what B does with datagram `d` (already as long as the slot allows) in slot i, received
   * from src (via DIRECT), or unwrapped from a relayed message that the peer in slot `via` sent.
   */
  predict(d: Buffer, i: number, src: { ip: number; port: number }, e: Expected, via = DIRECT, origin = 0): void {
    const len = d.length;
    const drop = (reason: keyof typeof DROP): void => {
      e.drops[DROP[reason]]! += 1;
    };
    const type = len > 0 ? d[0]! : 0;
    // Only a handshake type at its exact message size goes to the control thread, within the
    // flood limits; one passed on by a relay is limited per relay, and names the overlay address
    // the relay gave as its sender (no mac1 check: this harness gives Inbound no mac1 key).
    if ((type === 1 && len === 148) || (type === 2 && len === 92) || (type === 3 && len === 64)) {
      if (this.allowHandshake(src.ip, via, drop)) {
        e.handshakes.push(via === DIRECT ? { data: d, ip: src.ip, port: src.port, via } : { data: d, ip: origin, port: 0, via });
      }
      return;
    }
    // STUN answers come straight from the server, rate-limited with the handshakes.
    if (via === DIRECT && isStun(d)) {
      if (this.allowHandshake(src.ip, DIRECT, drop)) e.stuns.push({ data: d, ip: src.ip, port: src.port, via });
      return;
    }
    if (len < OVERHEAD) return drop('short');
    if (d[0] !== 4 || (d[1]! & 0xfe) !== 0 || d[2] !== 0 || d[3] !== 0) return drop('badType');
    const index = d.readUInt32LE(4);
    const session = this.sessions.get(index);
    if (!session) return drop('unknownPeer');
    // A relay passing on its own datagram under another peer's name.
    if (via !== DIRECT && session.peer.slot === via) {
      e.preAuthSpoofed++;
      return drop('spoofed');
    }
    const counter = Number(d.readBigUInt64LE(8));
    if (!session.win.mayAccept(counter)) return drop('replay');
    const g = this.genuine.get(`${index}:${counter}`);
    if (!g || !g.data.equals(d)) return drop('auth');
    // Authenticated: commit, confirm, count, roam, deliver.
    const newest = counter >= session.win.highest;
    session.win.accept(counter);
    const peer = session.peer;
    if (session.promote) {
      session.promote = false;
      e.confirmed.push({ slot: peer.slot, keyId: session.keyId });
    }
    const now = this.clock.now();
    peer.rxPkts++;
    peer.rxBytes += len;
    peer.lastRx = now;
    if (via === DIRECT) {
      // the totals count datagrams on the wire: a relayed one once, as its relay's
      this.totalPkts++;
      this.totalBytes += len;
    }
    const p = g.plain;
    const kind = p.length >= 2 && p[0] === 0 ? p[1]! : -1;
    // Pongs and probes (whatever their length) answer or test a path: they never move one.
    if (newest && kind !== CTRL_PONG && kind !== CTRL_PROBE && (src.ip !== peer.ip || src.port !== peer.port || via !== peer.via)) {
      peer.ip = src.ip;
      peer.port = src.port;
      peer.via = via;
      peer.lastRoam = now;
      e.roams.push({ slot: peer.slot, ip: src.ip, port: src.port, via });
    }
    if (p.length === 0) {
      e.keepalives++;
      return;
    }
    if (p[0] === 0) {
      if ((kind === CTRL_PING || kind === CTRL_PROBE) && p.length === CTRL_LEN) {
        e.pings.push({ slot: peer.slot, t0: p.readDoubleLE(2), ip: src.ip, port: src.port, via });
        return;
      }
      if (kind === CTRL_BYE && p.length === CTRL_LEN) {
        e.byes.push({ slot: peer.slot });
        return;
      }
      if (kind === CTRL_PONG && p.length === PONG_LEN) {
        const rtt = this.clock.mono() - p.readDoubleLE(2);
        if (!(rtt >= 0 && rtt < 60_000)) return drop('malformed');
        // The RTT is the current path's only.
        if (src.ip === peer.ip && src.port === peer.port && via === peer.via) peer.rtt = rtt;
        e.pongs.push({ slot: peer.slot, rtt, ip: src.ip, port: src.port, via, seenIp: p.readUInt32BE(10), seenPort: p.readUInt16BE(14) });
        return;
      }
      if ((kind === CTRL_FORWARD || kind === CTRL_RELAYED) && p.length > RELAY_PREFIX && via === DIRECT) {
        const addr = p.readUInt32BE(2);
        const inner = p.subarray(RELAY_PREFIX);
        if (kind === CTRL_FORWARD) {
          // relayed only by a relay, only to another peer (by overlay address, not routed prefix)
          const target = addr === A_OVERLAY ? this.refA : addr === C_OVERLAY ? this.refC : undefined;
          if (!this.relayEnabled || target === undefined || target === peer) return drop('relayRefused');
          e.relays.push({ slot: target.slot, from: peer.overlay, data: inner });
          this.relayPkts++;
          this.relayBytes += inner.length;
          return;
        }
        if (addr === peer.overlay) return drop('spoofed'); // "from the relay, through the relay"
        e.unwrapped++;
        return this.predict(Buffer.from(inner), i, { ip: 0, port: 0 }, e, peer.slot, addr);
      }
      return drop('malformed'); // wrong length, unknown kind, or a relay message inside a relayed one
    }
    if (p[0]! >> 4 !== 4 || p.length < 20) return drop('malformed');
    const total = p.readUInt16BE(2);
    if (total < 20 || total > p.length) return drop('malformed');
    if (this.ownerOf(p.readUInt32BE(12)) !== peer) return drop('spoofed');
    e.writes.push({ i, bytes: p.subarray(0, total), partial: (g.flags & FLAG_CSUM_PARTIAL) !== 0 });
  }

  /** Which peer may send from `src`: its overlay address, else the longest allowed prefix. */
  private ownerOf(src: number): RefPeer | undefined {
    if (src === A_OVERLAY) return this.refA;
    if (src === C_OVERLAY) return this.refC;
    let best: { len: number; peer: RefPeer } | undefined;
    for (const [peer, list] of [[this.refA, A_ALLOWED], [this.refC, C_ALLOWED]] as const) {
      for (const s of list) {
        const p = parsePrefix(s)!;
        if (contains(p, src) && (!best || p.len > best.len)) best = { len: p.len, peer };
      }
    }
    return best?.peer;
  }

  // ---- running a batch ------------------------------------------------------------------------

  private readonly garbage = Buffer.alloc(2 * SLOT);

  /** Feeds datagrams to B in one batch and checks everything against the model. */
  feed(list: { d: Buffer; src: { ip: number; port: number } }[]): Expected {
    const b = this.batch;
    const e = emptyExpected();
    this.r.fill(this.garbage, 0, 64); // a little fresh garbage each batch
    for (let i = 0; i < list.length; i++) {
      const { d: full, src } = list[i]!;
      const off = b.offset(i);
      const len = Math.min(full.length, SLOT); // recvmmsg truncates to the slot, as FakeUdp does
      const d = full.subarray(0, len);
      d.copy(b.buf, off);
      // Stale bytes after the datagram: nothing may read them.
      const g = this.r.int(0, SLOT);
      this.garbage.copy(b.buf, off + len, g, g + SLOT - len);
      b.len[i] = len;
      b.ip[i] = src.ip;
      b.port[i] = src.port;
      b.flags[i] = this.r.byte();
      this.predict(Buffer.from(d), i, src, e);
    }
    const peerPkts = () => this.stats.peers[A_SLOT * PEER_STRIDE + P_RX_PKTS]! + this.stats.peers[C_SLOT * PEER_STRIDE + P_RX_PKTS]!;
    const before = {
      drops: Array.from(this.stats.drops),
      peerPkts: peerPkts(),
      attempts: this.tun.attempts.length,
      flushRefused: this.tun.flushRefused,
      pings: this.pings.length,
      pongs: this.pongs.length,
      roams: this.roams.length,
      handshakes: this.handshakes.length,
      stuns: this.stuns.length,
      relays: this.relays.length,
      confirmed: this.confirmed.length,
      byes: this.byes.length,
    };
    this.inb.process(b, list.length, this.tun);

    // The TUN writes: exactly the predicted ones, in order; the refused ones are tunWrite drops.
    const attempts = this.tun.attempts.slice(before.attempts);
    check(attempts.length === e.writes.length, () => `${attempts.length} TUN writes, expected ${e.writes.length}`);
    attempts.forEach((a, k) => {
      const w = e.writes[k]!;
      check(a.i === w.i && a.partial === w.partial && a.bytes.equals(w.bytes), () => `TUN write ${k} differs: slot ${a.i} vs ${w.i}, partial ${a.partial} vs ${w.partial}, ${a.bytes.length} vs ${w.bytes.length} bytes`);
      check(this.sealed.has(digest(a.bytes)), 'a packet no peer sealed reached the TUN');
      if (!a.accepted) e.drops[DROP.tunWrite]! += 1;
    });
    const flushRefused = this.tun.flushRefused - before.flushRefused;
    e.drops[DROP.tunWrite]! += flushRefused;
    for (let k = 0; k < DROP_REASONS.length; k++) this.drops[k]! += e.drops[k]!;

    // Counters, events and statistics: exactly the model's.
    const drops = Array.from(this.stats.drops);
    check(drops.every((v, k) => v === this.drops[k]), () => `drops ${fmtDrops(drops)}, model ${fmtDrops(this.drops)}`);
    sameList('pings', this.pings.slice(before.pings), e.pings);
    sameList('pongs', this.pongs.slice(before.pongs), e.pongs);
    sameList('roams', this.roams.slice(before.roams), e.roams);
    sameList('confirmed', this.confirmed.slice(before.confirmed), e.confirmed);
    sameList('byes', this.byes.slice(before.byes), e.byes);
    sameList('handshakes', this.handshakes.slice(before.handshakes), e.handshakes);
    sameList('stuns', this.stuns.slice(before.stuns), e.stuns);
    sameList('relays', this.relays.slice(before.relays), e.relays);
    const s = this.stats;
    check(s.totals[T_RX_PKTS] === this.totalPkts && s.totals[T_RX_BYTES] === this.totalBytes, 'rx totals differ');
    check(s.totals[T_RELAY_PKTS] === this.relayPkts && s.totals[T_RELAY_BYTES] === this.relayBytes, 'relay totals differ');
    check(s.totals[T_HS_PASSED] === this.hsPassed, 'handshakes passed differ');
    for (const p of [this.refA, this.refC]) {
      const at = (f: number) => s.peers[p.slot * PEER_STRIDE + f]!;
      check(at(P_RX_PKTS) === p.rxPkts && at(P_RX_BYTES) === p.rxBytes, () => `peer ${p.name} rx counters differ`);
      check(at(P_LAST_RX) === p.lastRx && at(P_LAST_ROAM) === p.lastRoam, () => `peer ${p.name} timestamps differ`);
      check(Object.is(at(P_RTT), p.rtt), () => `peer ${p.name} rtt ${at(P_RTT)}, model ${p.rtt}`);
    }

    // Every datagram accounted for exactly once: drops + delivered + control-thread hand-offs +
    // control messages + relay requests == fed (a relayed message counts as the datagram it carries).
    const delta = (k: number) => drops[k]! - before.drops[k]!;
    const dDrops = drops.reduce((sum, v, k) => sum + v - before.drops[k]!, 0);
    const delivered = attempts.filter((a) => a.accepted).length - flushRefused;
    const authenticated = peerPkts() - before.peerPkts; // relayed messages and what they carry, each
    const postAuthDrops = delta(DROP.spoofed) - e.preAuthSpoofed + delta(DROP.malformed) + delta(DROP.relayRefused);
    const pings = this.pings.length - before.pings;
    const pongs = this.pongs.length - before.pongs;
    const relays = this.relays.length - before.relays;
    const byes = this.byes.length - before.byes;
    const keepalives = authenticated - attempts.length - postAuthDrops - pings - pongs - relays - byes - e.unwrapped;
    check(keepalives === e.keepalives, () => `${keepalives} keepalives, model ${e.keepalives}`);
    const handoffs = this.handshakes.length - before.handshakes + (this.stuns.length - before.stuns);
    const control = pings + pongs + keepalives + relays + byes + handoffs;
    check(dDrops + delivered + control === list.length, () => `accounting: ${dDrops} dropped + ${delivered} delivered + ${control} control != ${list.length} fed`);

    const seen = this.seen;
    for (let k = 0; k < DROP_REASONS.length; k++) seen.drops[k]! += e.drops[k]!;
    seen.writes += e.writes.length;
    seen.pings += e.pings.length;
    seen.pongs += e.pongs.length;
    seen.roams += e.roams.length;
    seen.relayedRoams += e.roams.filter((x) => x.via !== DIRECT).length;
    seen.handshakes += e.handshakes.length;
    seen.relayedHandshakes += e.handshakes.filter((x) => x.via !== DIRECT).length;
    seen.stuns += e.stuns.length;
    seen.relays += e.relays.length;
    seen.confirmed += e.confirmed.length;
    seen.keepalives += e.keepalives;
    seen.unwrapped += e.unwrapped;
    // Genuine datagrams evicted from the pool while this batch was assembled are forgotten now.
    for (const g of this.evicted) this.forget(g);
    this.evicted = [];
    // Forget this batch's observations (long runs would otherwise keep every packet).
    this.tun.attempts.length = 0;
    this.pings.length = 0;
    this.pongs.length = 0;
    this.roams.length = 0;
    this.handshakes.length = 0;
    this.stuns.length = 0;
    this.relays.length = 0;
    this.confirmed.length = 0;
    this.byes.length = 0;
    return e;
  }

  /** Forgets an evicted datagram, unless a known one carries it; then what it carried, if nothing else does. */
  private forget(g: Genuine): void {
    g.evicted = true;
    if ((g.carriedBy ?? 0) > 0) return;
    this.genuine.delete(`${g.index}:${g.counter}`);
    for (const d of this.digests(g)) {
      const n = this.sealed.get(d)! - 1;
      if (n === 0) this.sealed.delete(d);
      else this.sealed.set(d, n);
    }
    const inner = g.inner;
    if (inner) {
      inner.carriedBy! -= 1;
      if (inner.evicted) this.forget(inner);
    }
  }

  /** Re-applies the same peer set (as a control-plane refresh does): no state may change. */
  refreshPeers(): void {
    const peers = structuredClone(this.peersOfB);
    this.bSessions.set(peers);
    this.inb.setPeers(peers);
  }
}

function digest(b: Buffer): string {
  return createHash('sha1').update(b).digest('base64');
}

function fmtDrops(d: number[]): string {
  return DROP_REASONS.map((r, k) => `${r}=${d[k]}`).join(' ');
}

/** Same events, field by field (Object.is, so NaN equals NaN; Buffers by content), and no field missing on either side. */
function sameList<T extends object>(what: string, got: T[], want: T[]): void {
  const eq = (a: unknown, b: unknown) => (Buffer.isBuffer(a) && Buffer.isBuffer(b) ? a.equals(b) : Object.is(a, b));
  const same =
    got.length === want.length &&
    got.every((g, k) => {
      const w = want[k] as Record<string, unknown>;
      return Object.keys(g).length === Object.keys(w).length && Object.entries(g).every(([f, v]) => eq(v, w[f]));
    });
  check(same, () => `${what}: got ${JSON.stringify(got)}, model ${JSON.stringify(want)}`);
}

/** A forward (CTRL_FORWARD) or relayed (CTRL_RELAYED) message: 0x00, kind, overlay address (BE), datagram. */
function relayMsg(kind: number, addr: number, datagram: Buffer): Buffer {
  const b = Buffer.alloc(RELAY_PREFIX + datagram.length);
  b[1] = kind;
  b.writeUInt32BE(addr >>> 0, 2);
  datagram.copy(b, RELAY_PREFIX);
  return b;
}

/** A STUN-shaped datagram: mostly a well-formed message (what a binding answer looks like), sometimes a near miss. */
function stunish(r: Rand): Buffer {
  const body = r.chance(0.7) ? 12 : r.int(0, 16) * 4;
  const d = r.bytes(20 + body);
  d[0] = r.int(0, 1);
  d.writeUInt16BE(body, 2);
  d.writeUInt32BE(STUN_MAGIC, 4);
  if (r.chance(0.3)) {
    switch (r.int(0, 3)) {
      case 0: // length field off
        d.writeUInt16BE(body + r.pick([-3, -1, 1, 2, 4]) & 0xffff, 2);
        break;
      case 1: // cookie off
        d[r.int(4, 7)]! ^= 1 << r.int(0, 7);
        break;
      case 2: // a class or method bit in the top two bits, or another first byte
        d[0] = r.pick([0x40, 0x80, 0xc1, 2, 4]);
        break;
      default: // truncated
        return d.subarray(0, r.int(0, d.length - 1));
    }
  }
  return d;
}

// ---------------------------------------------------------------------------------------------
// Fuzz cases

/** A length: a third in 0..40, a third up to 200, a third up to 2000. */
function fuzzLen(r: Rand): number {
  const k = r.int(0, 2);
  return k === 0 ? r.int(0, 40) : k === 1 ? r.int(0, 200) : r.int(0, 2000);
}

/** A counter near the interesting places for the session behind `index`. */
function fuzzCounter(r: Rand, h: Harness, index: number, around: number): number {
  const hi = h.sessions.get(index)?.win.highest ?? 0;
  return r.pick([
    around + 1, around - 1, around + r.int(-5000, 5000), hi, hi + 1, hi - 1, hi - REPLAY_WINDOW, hi - REPLAY_WINDOW + 1, 0,
    COUNTER_LIMIT - 1, COUNTER_LIMIT, 2 ** 53, 2 ** 64 - 1, r.u32(), r.u32() * 2 ** 20,
  ]);
}

/** Writes a 64-bit counter (clamped to 0..2^64-1) at the header's counter field. */
function putCounter(d: Buffer, c: number): void {
  const v = c <= 0 ? 0n : c >= 2 ** 64 ? 2n ** 64n - 1n : BigInt(c);
  d.writeBigUInt64LE(v, 8);
}

/** Rewrites header fields of a datagram (a copy): type, flags, reserved, receiver index, counter. */
function headerEdit(r: Rand, h: Harness, g: Genuine): Buffer {
  const d = Buffer.from(g.data);
  const n = r.int(1, 2);
  for (let k = 0; k < n; k++) {
    switch (r.int(0, 5)) {
      case 0:
        d[0] = r.pick([0, 1, 2, 3, 5, 0x84, 0xff, r.byte()]);
        break;
      case 1:
        d[1] = r.pick([0, 1, 2, 3, 0x80, 0xfe, 0xff, g.flags ^ FLAG_CSUM_PARTIAL]);
        break;
      case 2:
        d[r.int(2, 3)] = r.int(1, 255);
        break;
      case 3: // another session's index (of the same or the other peer), or a random one
        d.writeUInt32LE(r.chance(0.8) ? r.pick([...h.sessions.keys()]) : r.pick(INTERESTING_32), 4);
        break;
      default:
        putCounter(d, fuzzCounter(r, h, d.readUInt32LE(4), g.counter));
    }
  }
  return d;
}

function fuzzDatagram(r: Rand, h: Harness): { d: Buffer; src: { ip: number; port: number }; genuine: boolean } {
  const anywhere = () => (r.chance(0.3) ? r.pick([A_ENDPOINT, C_ENDPOINT]) : r.pick(ATTACKERS));
  const pick = (): Genuine => (h.pool.length > 0 && r.chance(0.9) ? r.pick(h.pool) : h.anyGenuine());
  if (h.flood.left > 0) {
    // A flood from one source: handshake messages of their exact sizes mostly (what the bucket
    // limits), STUN-shaped ones (the same bucket), and near misses.
    h.flood.left--;
    if (r.chance(0.1)) return { d: stunish(r), src: h.flood.src, genuine: false };
    const type = r.int(1, 3);
    const d = r.bytes(r.chance(0.8) ? [148, 92, 64][type - 1]! : r.int(1, 200));
    d[0] = type;
    return { d, src: h.flood.src, genuine: false };
  }
  if (r.chance(0.001)) h.flood = { left: r.int(5, 60), src: r.chance(0.5) ? r.pick(ATTACKERS) : r.pick([A_ENDPOINT, C_ENDPOINT]) };
  switch (r.weighted([10, 10, 4, 14, 10, 25, 20, 4, 3, 2])) {
    case 0: // random bytes
      return { d: r.bytes(fuzzLen(r)), src: anywhere(), genuine: false };
    case 1: { // random body behind a plausible header
      const d = r.bytes(Math.max(OVERHEAD - 4, fuzzLen(r)));
      if (d.length >= 16) {
        const index = r.chance(0.8) ? r.pick([...h.sessions.keys()]) : r.u32();
        writeHeader(d, 0, index, 0, r.chance(0.8) ? r.int(0, 1) : r.byte());
        putCounter(d, fuzzCounter(r, h, index, 0));
      }
      return { d, src: anywhere(), genuine: false };
    }
    case 2: { // handshake-typed datagrams of handshake-like lengths
      // Mostly the exact size of the type (what reaches the control thread), else near misses.
      const type = r.int(1, 3);
      const exact = [148, 92, 64][type - 1]!;
      const d = r.bytes(r.chance(0.7) ? exact : r.pick([0, 1, 4, 32, exact - 1, exact + 1, r.int(0, 300)]));
      if (d.length > 0) d[0] = type;
      return { d, src: r.chance(0.5) ? r.pick(ATTACKERS.slice(0, 4)) : anywhere(), genuine: false };
    }
    case 3: { // fresh genuine, now
      const g = h.anyGenuine();
      return { d: g.data, src: r.chance(0.85) ? sourceOf(h, g) : anywhere(), genuine: true };
    }
    case 4: { // a genuine one again, or late, or first seen now (reordered)
      const g = pick();
      return { d: g.data, src: r.chance(0.7) ? sourceOf(h, g) : anywhere(), genuine: true };
    }
    case 5: // byte-level mutation of a genuine datagram
      return { d: mutate(r, pick().data, 4, 2100), src: anywhere(), genuine: false };
    case 6: // header-field edit
      return { d: headerEdit(r, h, pick()), src: anywhere(), genuine: false };
    case 7: { // splice: the header of one, the rest of another
      const a = pick();
      const b = pick();
      const cut = r.int(0, Math.min(a.data.length, 40));
      return { d: Buffer.concat([a.data.subarray(0, cut), b.data.subarray(Math.min(cut, b.data.length))]), src: anywhere(), genuine: false };
    }
    case 8: { // an insider (C) seals under A's receiver index with its own key
      const d = h.cCur.seal(r.bytes(r.int(0, 100)), r.u32(), 0, r.chance(0.5) ? h.aIndex : h.aOld.index);
      return { d, src: C_ENDPOINT, genuine: false };
    }
    default: // STUN answers (and near misses), from STUN servers or anyone
      return { d: stunish(r), src: r.chance(0.7) ? r.pick(STUN_SERVERS) : anywhere(), genuine: false };
  }
}

/** Where a genuine datagram's sender is: its configured endpoint, or where it roamed to. */
function sourceOf(h: Harness, g: Genuine): { ip: number; port: number } {
  const peer = h.sessions.get(g.index)!.peer;
  return h.r.chance(0.7) ? (peer === h.refA ? A_ENDPOINT : C_ENDPOINT) : { ip: peer.ip, port: peer.port };
}

// ---------------------------------------------------------------------------------------------

let keys: Keys;
let kx: { a: StaticKeyAgreement; b: StaticKeyAgreement; c: StaticKeyAgreement };

beforeAll(async () => {
  keys = { a: await generateKeyPair(), b: await generateKeyPair(), c: await generateKeyPair() };
  kx = {
    a: await StaticKeyAgreement.create(keys.a),
    b: await StaticKeyAgreement.create(keys.b),
    c: await StaticKeyAgreement.create(keys.c),
  };
});

// The production AEAD is Debian's libsodium through koffi (else sodium-native); where neither
// loads, the WASM build (the agent's own fallback) takes its cases, so the budget is always spent.
// B relays in the first run (forwards to A or C are passed on), not in the second (all refused).
describe.each<[FuzzTarget, () => Promise<Aead>, boolean]>([
  ['inbound.native', async () => FfiAead.tryCreate() ?? NativeAead.tryCreate() ?? WasmAead.create(), true],
  ['inbound.wasm', async () => WasmAead.create(), false],
])('fuzz: %s', (target, makeAead, relay) => {
  it('Inbound.process: no throw, every datagram accounted for, only authenticated plaintext on the TUN', async () => {
    const aead = await makeAead();
    const sender = await makeAead();
    const aOut = await makeAead();
    if (aead.name !== (target === 'inbound.native' ? 'libsodium+openssl-ffi+batch+direct' : 'libsodium-wasm')) console.log(`fuzz ${target}: running on ${aead.name}`);
    const cases = casesFor(target);
    let h: Harness | undefined;
    let pending: { d: Buffer; src: { ip: number; port: number } }[] = [];
    let batchSize = 1;
    let nextFresh = 1000;
    let nextRefresh = 5000;
    const run = fuzz(target, cases, (r, i, note) => {
      h ??= new Harness(new Rand(r.u32()), aead, sender, aOut, kx, keys, relay);
      const c = fuzzDatagram(r, h);
      pending.push({ d: c.d, src: c.src });
      if (r.chance(0.3)) h.anyGenuine(); // in flight: sent now, delivered later or never
      note.input = c.d;
      if (pending.length < batchSize && i < cases - 1) return;
      note.what = `batch of ${pending.length} (the noted input is the last)`;
      h.feed(pending);
      pending = [];
      batchSize = r.chance(0.3) ? 1 : r.int(1, CAP);
      // Time moves between batches: handshake buckets refill, pongs age.
      if (r.chance(0.3)) h.clock.advance(r.chance(0.9) ? r.int(0, 200) : r.int(0, 120_000));
      if (i + 1 >= nextFresh) {
        freshStillFlows(h, r);
        nextFresh += 1000;
      }
      if (i + 1 >= nextRefresh) {
        h.refreshPeers();
        nextRefresh += 5000;
      }
    });
    // The fuzzer reached every stage: every inbound drop reason, deliveries, control messages, events.
    const seen = h!.seen;
    for (const reason of ['short', 'badType', 'unknownPeer', 'replay', 'auth', 'spoofed', 'malformed', 'handshakeRateLimited', 'relayRefused'] as const) {
      expect(seen.drops[DROP[reason]], reason).toBeGreaterThan(cases / 2000);
    }
    expect(seen.writes).toBeGreaterThan(cases / 20);
    expect(seen.pings).toBeGreaterThan(0);
    expect(seen.pongs).toBeGreaterThan(0);
    expect(seen.roams).toBeGreaterThan(0);
    expect(seen.relayedRoams).toBeGreaterThan(0);
    expect(seen.handshakes).toBeGreaterThan(0);
    expect(seen.relayedHandshakes).toBeGreaterThan(0);
    expect(seen.stuns).toBeGreaterThan(0);
    expect(seen.unwrapped).toBeGreaterThan(cases / 2000);
    if (relay) expect(seen.relays).toBeGreaterThan(0);
    else expect(seen.relays).toBe(0);
    expect(seen.confirmed).toBe(1);
    expect(seen.keepalives).toBeGreaterThan(0);
    expect(run.cases).toBe(cases);
  });
});

/** A fresh packet from A's Outbound and one from C still get through, unchanged. */
function freshStillFlows(h: Harness, r: Rand): void {
  h.tun.refuse = false;
  const pa = Buffer.alloc(r.int(20, 400));
  pa[0] = 0x45;
  pa.writeUInt16BE(pa.length, 2);
  pa.writeUInt32BE(A_OVERLAY, 12);
  pa.writeUInt32BE(B_OVERLAY, 16);
  const ga = h.fromA('ip', pa);
  const pc = Buffer.from(pa);
  pc.writeUInt32BE(C_OVERLAY, 12);
  const gc = h.fromRaw(h.cCur, pc);
  const e = h.feed([
    { d: ga.data, src: A_ENDPOINT },
    { d: gc.data, src: C_ENDPOINT },
  ]);
  check(e.writes.length === 2 && e.writes[0]!.bytes.equals(pa) && e.writes[1]!.bytes.equals(pc), 'a fresh packet from A or C did not get through');
  h.tun.refuse = true;
}
