/**
 * Inbound: UDP -> TUN. Per batch of datagrams from recvmmsg, each one goes through:
 *
 *   1. header     long enough, type data, reserved bytes zero; else drop (short, badType)
 *   2. peer       receiver index -> session and peer; else drop (unknownPeer)
 *   3. replay     counter not seen and not too old (pre-check, no state change); else drop (replay)
 *   4. open       authenticate and decrypt in place; else drop (auth). The datagrams of a batch
 *                 that pass steps 1-3 are opened together, in one native call where the AEAD
 *                 backend can (Aead.openMany), and then go on through steps 5-7 in order
 *   5. commit     record the counter in the replay window; the peer is alive (stats); the first
 *                 packet on a session we answered confirms it (./sessions.ts may now send on it)
 *   6. roam       the newest authenticated packet from a new source address moves the endpoint
 *                 (not a pong or a probe: those answer or test a path, they do not choose one)
 *   7. deliver    control message (ping, probe, pong, keepalive) handled here; a relayed
 *                 datagram goes through steps 1-7 again as its sender's own (once: relays do
 *                 not nest); a forward request is passed to the outbound side when this host
 *                 relays; an IPv4 packet whose source the peer may use and that the network
 *                 policy allows (./policy.ts, when there is one) is written to the TUN; so is
 *                 an IPv6 packet whose source is the peer's overlay IPv6 address (the network's
 *                 prefix around the peer's IPv4 overlay address, control/overlay6.ts) and that
 *                 the same policy allows;
 *                 anything else is dropped (spoofed, malformed, relayRefused, policy)
 *
 * Before step 1, handshake messages (exact sizes) and STUN messages go to the control thread:
 * initiations and responses only with a valid mac1, and all of them within the flood limits of
 * ./hslimit.ts (per source address or relaying peer, and one global budget). Nothing before
 * step 4 trusts the datagram, and nothing here throws or allocates per packet (relaying copies:
 * it is the fallback path).
 */
import type { Aead, AeadJobs } from '../crypto/aead';
import { COOKIE_REPLY_LEN, type WorkerCookies } from '../crypto/cookie';
import type { Mac1Check } from '../crypto/mac1';
import type { PacketBatch } from './batch';
import type { PacketFilter } from './policy';
import type { TunIo } from './io';
import type { Clock, WorkerPeer } from './peer';
import { addrKey, DIRECT, PrefixTable, sameHi, sameHiOf, setHi, type AddrHi } from './peer';
import type { Session, Sessions } from './sessions';
import {
  DROP,
  type DataplaneStats,
  PEER_STRIDE,
  P_LAST_ROAM,
  P_LAST_RX,
  P_RTT,
  P_RX_BYTES,
  P_RX_PKTS,
  T_HS_COOKIES,
  T_HS_PASSED,
  T_RELAY_BYTES,
  T_RELAY_PKTS,
  T_RX_BYTES,
  T_RX_PKTS,
} from './stats';
import { COOKIE_LEN, INITIATION_LEN, MSG_COOKIE, MSG_INITIATION, MSG_RESPONSE, RESPONSE_LEN } from '../crypto/noise';
import { isStunPacket } from '../control/stun';
import { HandshakeLimiter, HS_ALLOW, HS_EXPECT_MAX, HS_EXPECT_MS, HS_OVER_BUDGET, HS_SOURCE_LIMITED, type HsVerdict } from './hslimit';
import {
  checkHeader,
  CTRL_BYE,
  CTRL_FORWARD,
  CTRL_LEN,
  CTRL_PING,
  CTRL_PONG,
  CTRL_PROBE,
  CTRL_RELAYED,
  FLAG_CSUM_PARTIAL,
  HEADER_LEN,
  PONG_LEN,
  readCounter,
  RELAY_PREFIX,
} from './wire';

export interface InboundEvents {
  /** The peer pinged or probed us: answer with a pong echoing t0, to ip:port or through relay `via`. */
  ping(slot: number, t0: number, ip: number, port: number, via: number, hi?: AddrHi): void;
  /**
   * A pong arrived: rttMs on the path it came back on (ip:port or relay `via`); seenIp:seenPort is
   * our address as the peer saw our ping (0:0 when relayed); t0 is the stamp the ping carried.
   */
  pong?(slot: number, rttMs: number, ip: number, port: number, via: number, seenIp: number, seenPort: number, t0: number, hi?: AddrHi): void;
  /** The peer's packets now come from a new address (or through relay `via`). */
  roam(slot: number, ip: number, port: number, via: number, hi?: AddrHi): void;
  /**
   * A handshake message (type 1-3) arrived; `data` is only valid during the call. Through a
   * relay (`via` its slot), `ip` is the overlay address the relay names as the sender, port 0.
   * `proven`: an initiation whose mac2 carries the worker's cookie for ip:port (its sender
   * receives there; the control thread need not ask for a cookie of its own).
   */
  handshake(data: Buffer, ip: number, port: number, via: number, proven?: boolean, hi?: AddrHi): void;
  /** Send `data` (a cookie reply, valid only during the call) to ip:port. */
  cookieReply?(data: Buffer, ip: number, port: number, hi?: AddrHi): void;
  /** A STUN message arrived (answers to our binding requests); `data` is only valid during the call. */
  stun?(data: Buffer, ip: number, port: number, hi?: AddrHi): void;
  /** We relay: pass `data` (sealed by the peer with overlay address `from`) on to the peer in `slot`. */
  relay?(slot: number, from: number, data: Buffer): void;
  /** The first packet arrived on a session we answered: the data plane may now send on it. */
  confirmed(slot: number, keyId: number): void;
  /** The peer said bye (its agent is stopping on purpose). */
  bye?(slot: number): void;
}

export interface InboundOptions {
  /** This host relays for its peers (accepts forward requests). */
  relay?: boolean;
  /** Checks mac1 of initiations and responses before they cross (absent: not checked here). */
  mac1?: Mac1Check;
  /** Cookies for initiations over the budget (absent: none; they are only refused). */
  cookies?: WorkerCookies;
  /** The flood limits (default: a HandshakeLimiter on this Inbound's clock). */
  limiter?: HandshakeLimiter;
  /**
   * This is worker `index` of `count` (docs/design.md, Many cores): it opens only sessions whose
   * receiver index mod count is index, the ones the socket steering gives it, so each replay
   * window has one writer; another's datagram here (a GRO run of mixed indices) is unknownPeer.
   * Datagrams unwrapped from a relay may name any session. Absent: the only worker, all sessions.
   */
  worker?: { index: number; count: number };
}

export { HS_BURST, HS_RATE } from './hslimit';

/** one(): the datagram is dealt with (delivered or dropped), or set aside for the batch's second pass. */
const DONE = -1;
const SET_ASIDE = -2;

/** A receiver index's session and the peer it belongs to. */
interface RxEntry {
  readonly session: Session;
  readonly peer: InPeer;
}

class InPeer {
  ip: number;
  port: number;
  via: number;
  /** Upper bits of an IPv6 endpoint (zero: IPv4). */
  readonly hi = new Uint32Array(3);
  constructor(public cfg: WorkerPeer) {
    setHi(this.hi, cfg.endpointHi);
    this.ip = cfg.endpointIp;
    this.port = cfg.endpointPort;
    this.via = cfg.endpointVia ?? DIRECT;
  }
}

/** Slot i's source (its upper bits; zero when relayed) has the same upper bits as `hi`. */
function sameSource(hi: Uint32Array, batch: PacketBatch, i: number, via: number): boolean {
  if (via !== DIRECT) return hi[0] === 0 && hi[1] === 0 && hi[2] === 0;
  const h = batch.hi;
  return hi[0] === h[3 * i] && hi[1] === h[3 * i + 1] && hi[2] === h[3 * i + 2];
}

export class Inbound {
  /** Packets that reached the deliver stage (data for the TUN, not control messages). */
  dataPackets = 0;
  /** The network policy (security groups); asked only while it restricts this host. */
  policy: PacketFilter | null = null;
  private readonly byIndex = new Map<number, RxEntry>();
  /** Every session by receiver index, for datagrams unwrapped from a relay (== byIndex with one worker). */
  private readonly anyIndex: Map<number, RxEntry>;
  private readonly worker: { index: number; count: number } | null;
  /** Step 4's batch: the datagrams steps 1-3 passed, their slots and sessions (grown to a batch's capacity). */
  private jobs: AeadJobs | null = null;
  /** Per slot of the batch: its job, or DONE, or SET_ASIDE (see one()). */
  private slotJob = new Int32Array(0);
  private jobEntry: RxEntry[] = [];
  private readonly bySlot = new Map<number, InPeer>();
  /** Which peer may send from which inner source address. */
  private readonly sources = new Map<number, InPeer>();
  private readonly sourcePrefixes = new PrefixTable<InPeer>();
  /** Peers' current direct endpoint addresses (int32 keys), for the limiter's reserve. */
  private readonly endpoints = new Map<number, number>();
  /** Addresses (int32 keys) we sent an initiation to, until when (monotonic ms): see expect(). */
  private readonly expected = new Map<number, number>();
  private readonly limiter: HandshakeLimiter;
  private readonly mac1: Mac1Check | undefined;
  private readonly cookies: WorkerCookies | undefined;
  private readonly cookieOut = Buffer.alloc(COOKIE_REPLY_LEN);
  /** Set by admit(): the message that may cross carried our cookie. */
  private proven = false;
  /** While a relayed datagram is checked: the overlay address its relay names as the sender. */
  private relayOrigin = 0;
  private readonly relayEnabled: boolean;
  /** Wall clock (ms) for the batch being processed: the peers' last-receive time. */
  private now = 0;
  /** The network's IPv6 overlay prefix (control/overlay6.ts Overlay6); -1: none, IPv6 is dropped. */
  private v6hi = -1;
  private v6mid = 0;
  /**
   * Upper bits of the source of the datagram being checked (zero: IPv4 or relayed), and whether
   * any is set: loaded (loadSource) only where a message needs them (handshakes, STUN, a roam,
   * control messages), so a data packet costs three reads and compares (sameSource).
   */
  private readonly srcHi = new Uint32Array(3);
  private srcV6 = false;

  constructor(
    private readonly aead: Aead,
    private readonly stats: DataplaneStats,
    private readonly clock: Clock,
    private readonly sessions: Sessions,
    private readonly events: InboundEvents,
    opts: InboundOptions = {},
  ) {
    this.relayEnabled = opts.relay ?? false;
    this.mac1 = opts.mac1;
    this.cookies = opts.cookies;
    this.limiter = opts.limiter ?? new HandshakeLimiter(clock);
    this.worker = opts.worker && opts.worker.count > 1 ? opts.worker : null;
    this.anyIndex = this.worker ? new Map() : this.byIndex;
  }

  /** The network's IPv6 overlay prefix: bytes 0-3 and 4-5 of it (control/overlay6.ts overlay6Of). */
  setOverlay6(hi: number, mid: number): void {
    this.v6hi = hi;
    this.v6mid = mid;
  }

  /**
   * Replaces the peer set (apply it to the session table first). A peer keeps an endpoint it
   * roamed to unless the control plane names a new one (exactly as Outbound does).
   */
  setPeers(peers: readonly WorkerPeer[]): void {
    const next = new Map<number, InPeer>();
    for (const cfg of peers) {
      const old = this.bySlot.get(cfg.slot);
      const p = old ?? new InPeer(cfg);
      if (old) {
        // As in Outbound.setPeers: a new endpoint from the control plane replaces a roamed one
        // here too, so packets from anywhere else (the roamed address included) are a move again.
        if (
          old.cfg.endpointIp !== cfg.endpointIp ||
          old.cfg.endpointPort !== cfg.endpointPort ||
          !sameHiOf(old.cfg.endpointHi, cfg.endpointHi) ||
          (old.cfg.endpointVia ?? DIRECT) !== (cfg.endpointVia ?? DIRECT)
        ) {
          setHi(old.hi, cfg.endpointHi);
          old.ip = cfg.endpointIp;
          old.port = cfg.endpointPort;
          old.via = cfg.endpointVia ?? DIRECT;
        }
        old.cfg = cfg;
      }
      next.set(cfg.slot, p);
    }
    this.bySlot.clear();
    this.byIndex.clear();
    this.anyIndex.clear();
    this.sources.clear();
    const prefixes: { prefix: { base: number; len: number }; value: InPeer }[] = [];
    for (const [slot, p] of next) {
      this.bySlot.set(slot, p);
      const w = this.worker;
      for (const session of this.sessions.peer(slot)?.byKey.values() ?? []) {
        const entry = { session, peer: p };
        if (w === null || (session.rxIndex >>> 0) % w.count === w.index) this.byIndex.set(session.rxIndex, entry);
        if (w !== null) this.anyIndex.set(session.rxIndex, entry);
      }
      this.sources.set(p.cfg.overlayIp, p);
      for (const prefix of p.cfg.allowed) prefixes.push({ prefix, value: p });
    }
    this.sourcePrefixes.set(prefixes);
    this.indexEndpoints();
  }

  /** Which addresses are a peer's direct endpoint now (after a peer set or a roam). */
  private indexEndpoints(): void {
    this.endpoints.clear();
    for (const p of this.bySlot.values()) if (p.via === DIRECT) this.endpoints.set(addrKey(p.ip, p.hi), p.cfg.slot);
  }

  /**
   * The flood limits for a handshake or STUN message at buf[off, off+len): counts a refusal,
   * true when it may cross. An initiation over the global budget from an address that is no
   * peer's endpoint may still cross when its mac2 carries our cookie (`proven`); without one it
   * gets a cookie reply, within the cookie budget.
   */
  private allowHandshake(buf: Buffer, off: number, len: number, src: number, port: number, via: number): boolean {
    this.proven = false;
    const hi = this.srcV6 ? this.srcHi : null;
    const ip = this.srcV6 ? addrKey(src, hi) : src;
    const known = via === DIRECT && this.isKnown(ip);
    let v: HsVerdict = via === DIRECT ? this.limiter.allowDirect(ip, known) : this.limiter.allowRelayed(via);
    if (v === HS_OVER_BUDGET && via === DIRECT && !known && this.cookies !== undefined && len === INITIATION_LEN && buf[off] === MSG_INITIATION) {
      if (this.cookies.checkMac2(buf, off, len, ip, port)) {
        v = this.limiter.allowDirect(ip, true);
        this.proven = v === HS_ALLOW;
      } else if (this.events.cookieReply !== undefined && this.limiter.allowCookieReply(ip)) {
        this.cookies.reply(buf, off, len, ip, port, this.cookieOut, 0);
        this.events.cookieReply(this.cookieOut, src, port, hi);
        this.stats.totals[T_HS_COOKIES]! += 1;
      }
    }
    if (v === HS_ALLOW) {
      this.stats.totals[T_HS_PASSED]! += 1;
      return true;
    }
    this.stats.drops[v === HS_SOURCE_LIMITED ? DROP.handshakeRateLimited : DROP.handshakeOverBudget]! += 1;
    return false;
  }

  /**
   * The control thread sent an initiation to `ip`: for HS_EXPECT_MS, handshake messages from
   * there count as from a known endpoint (the response must not starve behind a flood).
   */
  expect(ip: number, hi: ArrayLike<number> | null = null): void {
    if (ip === 0 && !hi) return;
    const now = this.clock.mono();
    const key = addrKey(ip, hi);
    if (this.expected.size >= HS_EXPECT_MAX && !this.expected.has(key)) {
      for (const [k, until] of this.expected) if (until <= now) this.expected.delete(k);
      if (this.expected.size >= HS_EXPECT_MAX) return;
    }
    this.expected.set(key, now + HS_EXPECT_MS);
  }

  /**
   * The upper bits of slot i's source into srcHi (zero when relayed: `via` is not DIRECT), and the
   * source as events take it: those bits, or null for IPv4.
   */
  private loadSource(batch: PacketBatch, i: number, via: number): AddrHi {
    const srcHi = this.srcHi;
    if (via === DIRECT) {
      const h = batch.hi;
      srcHi[0] = h[3 * i]!;
      srcHi[1] = h[3 * i + 1]!;
      srcHi[2] = h[3 * i + 2]!;
      this.srcV6 = srcHi[0] !== 0 || srcHi[1] !== 0 || srcHi[2] !== 0;
    } else {
      srcHi[0] = srcHi[1] = srcHi[2] = 0;
      this.srcV6 = false;
    }
    return this.srcV6 ? srcHi : null;
  }

  private isKnown(ip: number): boolean {
    const key = ip | 0;
    if (this.endpoints.has(key)) return true;
    const until = this.expected.get(key);
    return until !== undefined && until > this.clock.mono();
  }

  /** Per-source entries the flood limiter holds (bounded by its capacity). */
  get limiterSources(): number {
    return this.limiter.sources;
  }

  get peerCount(): number {
    return this.bySlot.size;
  }

  /** Steps 1-7 over n datagrams received into `batch`. */
  process(batch: PacketBatch, n: number, tun: TunIo): void {
    this.cookies?.tick(this.clock.mono());
    this.now = this.clock.now(); // one reading per batch (ms resolution; a batch takes well under that)
    let jobs = this.jobs;
    if (jobs === null || jobs.capacity < n) {
      jobs?.close();
      jobs = this.jobs = this.aead.jobs(Math.max(n, batch.capacity));
      this.slotJob = new Int32Array(jobs.capacity);
      this.jobEntry = new Array<RxEntry>(jobs.capacity);
    }
    jobs.count = 0;
    // Steps 1-3 of the data messages, queueing those to open; then 4 for all of them at once; then
    // everything else in slot order, as if each datagram had gone through 0-7 alone: the data
    // messages on from 4, and handshake and STUN messages (set aside) from 0.
    const slotJob = this.slotJob;
    for (let i = 0; i < n; i++) slotJob[i] = this.one(batch, i, batch.len[i]!, batch.ip[i]!, batch.port[i]!, DIRECT, tun, jobs);
    if (jobs.count > 0) this.aead.openMany(jobs, batch.buf, batch.addr);
    for (let i = 0; i < n; i++) {
      const j = slotJob[i]!;
      if (j >= 0) this.opened(batch, i, batch.len[i]!, batch.ip[i]!, batch.port[i]!, DIRECT, this.jobEntry[j]!, jobs.counter(j), jobs.result(j), tun);
      else if (j === SET_ASIDE) this.one(batch, i, batch.len[i]!, batch.ip[i]!, batch.port[i]!, DIRECT, tun, null);
    }
    const refused = tun.flush();
    if (refused > 0) this.stats.drops[DROP.tunWrite]! += refused;
  }

  /**
   * One datagram at the start of slot i: as received from ip:port (via DIRECT), or unwrapped from
   * a relayed message that the peer in slot `via` passed on (ip, port then 0). Without `jobs`:
   * steps 0-7, returns DONE. With: a handshake or STUN message is set aside (SET_ASIDE, nothing
   * done), a data message goes through 1-3 and is queued on `jobs` for process() to open with
   * the batch (returns its job index) or dropped (DONE).
   */
  private one(batch: PacketBatch, i: number, len: number, ip: number, port: number, via: number, tun: TunIo, jobs: AeadJobs | null): number {
    const buf = batch.buf;
    const drops = this.stats.drops;
    const off = batch.offset(i);
    // 0. handshake messages (right type and exact size) go to the control thread: initiations
    //    and responses only with our mac1, all within the flood limits (per source address, or
    //    per relay, and the global budget); so do STUN answers (limits only); anything else
    //    falls through to the data checks
    const type = len > 0 ? buf[off]! : 0;
    const hasMac1 = (type === MSG_INITIATION && len === INITIATION_LEN) || (type === MSG_RESPONSE && len === RESPONSE_LEN);
    if (jobs !== null && (hasMac1 || (type === MSG_COOKIE && len === COOKIE_LEN) || (type <= 1 && isStunPacket(buf, off, len)))) return SET_ASIDE;
    if (hasMac1 || (type === MSG_COOKIE && len === COOKIE_LEN)) {
      const hi = this.loadSource(batch, i, via);
      if (hasMac1 && this.mac1 !== undefined && !this.mac1.check(buf, off, len)) drops[DROP.handshakeBadMac1]! += 1;
      else if (this.allowHandshake(buf, off, len, ip, port, via)) {
        if (via === DIRECT) this.events.handshake(buf.subarray(off, off + len), ip, port, via, this.proven, hi);
        else this.events.handshake(buf.subarray(off, off + len), this.relayOrigin, 0, via, false, null);
      }
      return DONE;
    }
    // (STUN over IPv4 only: our STUN servers are IPv4, and an IPv6 source would cost the control
    // thread an address handle for an unauthenticated packet)
    if (type <= 1 && via === DIRECT && isStunPacket(buf, off, len) && this.loadSource(batch, i, via) === null) {
      if (this.allowHandshake(buf, off, len, ip, port, DIRECT)) this.events.stun?.(buf.subarray(off, off + len), ip, port, null);
      return DONE;
    }
    // 1. header
    const verdict = checkHeader(buf, off, len);
    if (verdict !== null) {
      drops[verdict === 'short' ? DROP.short : DROP.badType]! += 1;
      return DONE;
    }
    // 2. peer (and which of its sessions)
    const entry = (via === DIRECT ? this.byIndex : this.anyIndex).get(buf.readUInt32LE(off + 4));
    if (entry === undefined) {
      drops[DROP.unknownPeer]! += 1;
      return DONE;
    }
    const { session, peer } = entry;
    if (via === peer.cfg.slot) {
      // a relay passing on its own datagram under another peer's name
      drops[DROP.spoofed]! += 1;
      return DONE;
    }
    // 3. replay pre-check
    const counter = readCounter(buf, off);
    if (!session.replay.mayAccept(counter)) {
      drops[DROP.replay]! += 1;
      return DONE;
    }
    // 4. open (with the batch, or now)
    if (jobs !== null) {
      const j = jobs.count;
      jobs.add(session.rxKey, counter, off, HEADER_LEN, off + HEADER_LEN, len - HEADER_LEN);
      this.jobEntry[j] = entry;
      return j;
    }
    const plen = this.aead.open(session.rxKey, counter, buf, off, HEADER_LEN, off + HEADER_LEN, len - HEADER_LEN, batch.addr);
    this.opened(batch, i, len, ip, port, via, entry, counter, plen, tun);
    return DONE;
  }

  /** Steps 4 (its outcome: plaintext length `plen`, or -1) to 7 for the datagram in slot i. */
  private opened(
    batch: PacketBatch, i: number, len: number, ip: number, port: number, via: number, entry: RxEntry, counter: number, plen: number, tun: TunIo,
  ): void {
    const buf = batch.buf;
    const drops = this.stats.drops;
    const { session, peer } = entry;
    // 3 again, as if each datagram had gone through 1-7 alone: an earlier one of the batch may
    // have taken this counter since (then it is a replay, forged or not)
    if (!session.replay.mayAccept(counter)) {
      drops[DROP.replay]! += 1;
      return;
    }
    if (plen < 0) {
      drops[DROP.auth]! += 1;
      return;
    }
    // 5. commit
    const newest = counter >= session.replay.highest;
    if (!session.replay.accept(counter)) {
      drops[DROP.replay]! += 1;
      return;
    }
    if (!session.confirmed && this.sessions.confirm(session)) {
      // The initiator sends on the session it just completed: we may now send on it too.
      this.events.confirmed(peer.cfg.slot, session.keyId);
    }
    const s = this.stats.peers;
    const base = peer.cfg.slot * PEER_STRIDE;
    const now = this.now;
    s[base + P_RX_BYTES] += len;
    s[base + P_RX_PKTS]! += 1;
    s[base + P_LAST_RX] = now;
    if (via === DIRECT) {
      this.stats.totals[T_RX_PKTS]! += 1;
      this.stats.totals[T_RX_BYTES] += len;
    }
    const pkt = batch.offset(i) + HEADER_LEN;
    const kind = plen >= 2 && buf[pkt] === 0 ? buf[pkt + 1]! : -1;
    // 6. roam
    if (newest && kind !== CTRL_PONG && kind !== CTRL_PROBE && (ip !== peer.ip || port !== peer.port || via !== peer.via || !sameSource(peer.hi, batch, i, via))) {
      const hi = this.loadSource(batch, i, via);
      peer.ip = ip;
      peer.port = port;
      peer.via = via;
      setHi(peer.hi, hi);
      this.indexEndpoints();
      s[base + P_LAST_ROAM] = now;
      this.events.roam(peer.cfg.slot, ip, port, via, hi);
    }
    // 7. deliver
    if (plen === 0) return; // keepalive
    if (buf[pkt] === 0) this.control(peer, batch, i, pkt, plen, kind, ip, port, via, this.loadSource(batch, i, via), tun);
    else this.deliver(peer, batch, i, pkt, plen, tun);
  }

  private control(
    peer: InPeer,
    batch: PacketBatch,
    i: number,
    pkt: number,
    plen: number,
    kind: number,
    ip: number,
    port: number,
    via: number,
    hi: AddrHi,
    tun: TunIo,
  ): void {
    const buf = batch.buf;
    const drops = this.stats.drops;
    if ((kind === CTRL_PING || kind === CTRL_PROBE) && plen === CTRL_LEN) {
      this.events.ping(peer.cfg.slot, buf.readDoubleLE(pkt + 2), ip, port, via, hi);
      return;
    }
    if (kind === CTRL_BYE && plen === CTRL_LEN) {
      this.events.bye?.(peer.cfg.slot);
      return;
    }
    if (kind === CTRL_PONG && plen === PONG_LEN) {
      const t0 = buf.readDoubleLE(pkt + 2);
      const rtt = this.clock.mono() - t0;
      if (!(rtt >= 0 && rtt < 60_000)) {
        drops[DROP.malformed]! += 1;
        return;
      }
      if (ip === peer.ip && port === peer.port && via === peer.via && sameHi(peer.hi, hi)) this.stats.peers[peer.cfg.slot * PEER_STRIDE + P_RTT] = rtt;
      this.events.pong?.(peer.cfg.slot, rtt, ip, port, via, buf.readUInt32BE(pkt + 10), buf.readUInt16BE(pkt + 14), t0, hi);
      return;
    }
    if ((kind === CTRL_FORWARD || kind === CTRL_RELAYED) && plen > RELAY_PREFIX && via === DIRECT) {
      const addr = buf.readUInt32BE(pkt + 2);
      if (kind === CTRL_FORWARD) {
        // 7b. someone asks us to relay: only when we do, only to another peer of ours
        const target = this.sources.get(addr);
        if (!this.relayEnabled || target === undefined || target === peer || this.events.relay === undefined) {
          drops[DROP.relayRefused]! += 1;
          return;
        }
        this.events.relay(target.cfg.slot, peer.cfg.overlayIp, buf.subarray(pkt + RELAY_PREFIX, pkt + plen));
        this.stats.totals[T_RELAY_PKTS]! += 1;
        this.stats.totals[T_RELAY_BYTES] += plen - RELAY_PREFIX;
        return;
      }
      // 7c. relayed to us: the datagram inside is the original sender's own, sealed (or, for a
      //     handshake, authenticated) end to end; it is checked as if it had come straight from
      //     that sender (a peer we have no session with yet is fine: handshakes come this way)
      if (addr === peer.cfg.overlayIp) {
        drops[DROP.spoofed]! += 1;
        return;
      }
      const off = batch.offset(i);
      const inner = plen - RELAY_PREFIX;
      buf.copyWithin(off, pkt + RELAY_PREFIX, pkt + plen);
      this.relayOrigin = addr;
      this.one(batch, i, inner, 0, 0, peer.cfg.slot, tun, null);
      return;
    }
    drops[DROP.malformed]! += 1;
  }

  private deliver(peer: InPeer, batch: PacketBatch, i: number, pkt: number, plen: number, tun: TunIo): void {
    this.dataPackets++;
    const buf = batch.buf;
    const drops = this.stats.drops;
    const first = buf[pkt]!;
    if (first >> 4 !== 4) {
      this.deliver6(peer, batch, i, pkt, plen, tun);
      return;
    }
    if (plen < 20) {
      drops[DROP.malformed]! += 1;
      return;
    }
    const total = buf.readUInt16BE(pkt + 2);
    if (total < 20 || total > plen) {
      drops[DROP.malformed]! += 1;
      return;
    }
    const src = buf.readUInt32BE(pkt + 12);
    const owner = this.sources.get(src) ?? (this.sourcePrefixes.size > 0 ? this.sourcePrefixes.lookup(src) : undefined);
    if (owner !== peer) {
      drops[DROP.spoofed]! += 1;
      return;
    }
    this.pass(batch, i, pkt, total, tun);
  }

  /**
   * Step 7 for a packet that is not IPv4: an IPv6 packet whose length fits, from the peer's own
   * overlay IPv6 address (else spoofed, like an IPv4 source the peer may not use), that the policy
   * allows. Advertised prefixes are IPv4: no other IPv6 source is anyone's.
   */
  private deliver6(peer: InPeer, batch: PacketBatch, i: number, pkt: number, plen: number, tun: TunIo): void {
    const buf = batch.buf;
    const drops = this.stats.drops;
    if (buf[pkt]! >> 4 !== 6 || plen < 40) {
      drops[DROP.malformed]! += 1;
      return;
    }
    const total = 40 + buf.readUInt16BE(pkt + 4);
    if (total > plen) {
      drops[DROP.malformed]! += 1;
      return;
    }
    if (
      buf.readUInt32BE(pkt + 8) !== this.v6hi ||
      buf.readUInt16BE(pkt + 12) !== this.v6mid ||
      buf.readUInt16BE(pkt + 14) !== 0 ||
      buf.readUInt32BE(pkt + 16) !== 0 ||
      this.sources.get(buf.readUInt32BE(pkt + 20)) !== peer
    ) {
      drops[DROP.spoofed]! += 1;
      return;
    }
    this.pass(batch, i, pkt, total, tun);
  }

  /** The end of step 7 for an IPv4 or IPv6 packet of `total` bytes whose source checked out: policy, then the TUN. */
  private pass(batch: PacketBatch, i: number, pkt: number, total: number, tun: TunIo): void {
    if (this.policy !== null && this.policy.active && !this.policy.allows(batch.buf, pkt, total)) {
      this.stats.drops[DROP.policy]! += 1;
      return;
    }
    const partial = (batch.buf[batch.offset(i) + 1]! & FLAG_CSUM_PARTIAL) !== 0;
    if (!tun.writeSlot(batch, i, total, partial)) this.stats.drops[DROP.tunWrite]! += 1;
  }

  close(): void {
    this.bySlot.clear();
    this.byIndex.clear();
    this.anyIndex.clear();
    this.jobs?.close();
    this.jobs = null;
  }
}
