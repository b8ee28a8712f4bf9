/**
 * Outbound: TUN -> UDP. Per batch of packets read from the TUN, each packet goes through:
 *
 *   1. classify   IPv4 with a whole header, or IPv6 with its fixed header, else drop (notIpv4,
 *                 malformed)
 *   2. route      destination overlay address -> peer (exact match, then advertised prefixes),
 *                 else drop (noRoute); an IPv6 destination is a peer's overlay IPv6 address (the
 *                 network's prefix around the peer's IPv4 overlay address, control/overlay6.ts)
 *                 and routes by that IPv4 twin, anything else in IPv6 is dropped (noRoute); a peer with no confirmed session (its only one awaits the
 *                 initiator's first packet) takes nothing yet (noSession, a few milliseconds
 *                 after a handshake). Either drop tells the control thread (`onWant`, at most
 *                 once per WANT_EVERY_MS per destination) that a handshake is wanted now; a TCP SYN to a relayed peer gets its MSS clamped to fit
 *                 the relay's wrapping
 *   3. number     take the next counter of the peer's send session (chosen and counted by
 *                 ./sessions.ts alone); write the 16-byte header in the slot's headroom
 *   4. seal       ChaCha20-Poly1305 in place, header as associated data, tag appended; the
 *                 packets of a batch to directly reached peers are sealed together, in one
 *                 native call where the AEAD backend can (Aead.sealMany), after stage 3 of all
 *   5. address    the peer's current endpoint; queue the slot on the send list. A peer reached
 *                 through a relay: the sealed datagram moves up in its slot, gets a forward
 *                 prefix and is sealed again for the relay (stages 3-4 once more), then goes to
 *                 the relay's endpoint
 *
 * The worker then hands the send list to sendmmsg. Nothing here allocates or throws per packet.
 * Control messages (ping, probe, pong) and relay work take the same stages 3-5 from a separate
 * small batch.
 */
import type { Aead, AeadJobs } from '../crypto/aead';
import type { PacketBatch, SendList } from './batch';
import type { Clock, WorkerPeer } from './peer';
import { clampTcpMss } from './offload';
import { DIRECT, PEER_UP_MS, PING_INTERVAL_MS, PrefixTable, sameHiOf, setHi, type AddrHi } from './peer';
import type { PeerSessions, Session, Sessions } from './sessions';
import {
  DROP,
  type DataplaneStats,
  PEER_STRIDE,
  P_LAST_TX,
  P_TX_BYTES,
  P_TX_PKTS,
  T_TX_BYTES,
  T_TX_PKTS,
} from './stats';
import {
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
  RELAY_OVERHEAD,
  RELAY_PREFIX,
  TAG_LEN,
  writeHeader,
} from './wire';

// (PING_INTERVAL_MS and PEER_UP_MS live in ./peer, where the control plane reads them without
// loading this module into the main thread; re-exported here for the stages' readers)
export { PEER_UP_MS, PING_INTERVAL_MS };
/** Ping this often while a peer has not answered yet. */
export const PING_INTERVAL_CONNECTING_MS = 500;
/**
 * A peer that was sending to us steadily and has gone quiet for this long gets pinged this often:
 * our NAT mapping or address may have changed under a flow in which we only receive, and a
 * packet from us is what re-opens the mapping (or lets the peer roam to our new address).
 */
export const SILENCE_PING_MS = 300;
/** How long after its last burst a peer counts as "was sending steadily". */
export const ACTIVE_WINDOW_MS = 3_000;
/**
 * A peer counts as busy when at least two packets came from it between two timer runs at most
 * this far apart (the worker runs them every 50 ms while traffic flows, and may sleep for seconds
 * when idle: a ping and a pong over seconds are no burst).
 */
const BUSY_SPAN_MS = 100;
/** A destination without a session is reported to the control thread at most this often. */
export const WANT_EVERY_MS = 1_000;
/** Destinations remembered for that limit; the memory is cleared when it holds more. */
const WANT_MEMORY = 4_096;

class OutPeer {
  lastPingMono = -Infinity;
  ip: number;
  port: number;
  /** Upper bits of an IPv6 endpoint (zero: IPv4). */
  readonly hi = new Uint32Array(3);
  /** Slot of the relay this peer is reached through, or DIRECT. */
  via: number;
  /** Received-packet count at the last timer run, and when it last grew by a burst. */
  rxSeen = 0;
  busyAt = -Infinity;
  constructor(
    public cfg: WorkerPeer,
    /** Its sessions; `sessions.send` is the one to seal with (null: none confirmed yet). */
    readonly sessions: PeerSessions,
  ) {
    this.ip = cfg.endpointIp;
    this.port = cfg.endpointPort;
    this.via = cfg.endpointVia ?? DIRECT;
    setHi(this.hi, cfg.endpointHi);
  }

  get sendable(): boolean {
    return this.sessions.send !== null;
  }
}

function sameEndpoint(a: WorkerPeer, b: WorkerPeer): boolean {
  return (
    a.endpointIp === b.endpointIp &&
    a.endpointPort === b.endpointPort &&
    (a.endpointVia ?? DIRECT) === (b.endpointVia ?? DIRECT) &&
    sameHiOf(a.endpointHi, b.endpointHi)
  );
}

export class Outbound {
  /** TCP MSS for peers reached through a relay (0: no clamping); see setMtu. */
  private relayMss = 0;
  private readonly byIp = new Map<number, OutPeer>();
  private readonly bySlot = new Map<number, OutPeer>();
  private readonly prefixes = new PrefixTable<OutPeer>();
  /** When each destination without a session was last reported (mono ms). */
  private readonly wanted = new Map<number, number>();
  /** Wall clock (ms) read once for the batch process() is sealing, else -1 (read per message). */
  private batchNow = -1;
  /** When timers() last ran (mono ms). */
  private lastTimers = -Infinity;
  /** Stage 4's batch: the packets numbered by process(), their slots and peers (grown to a batch's capacity). */
  private jobs: AeadJobs | null = null;
  private jobSlot = new Int32Array(0);
  private jobPeer: OutPeer[] = [];
  /** The counter number() took last. */
  private numbered = 0;
  /**
   * Counters number() reserves at once from a shared send counter (./counters.ts): the packets
   * left in the batch being processed, else 1. What a batch reserved but did not use is given up
   * at its end (`held`), so one atomic add serves a peer's whole batch.
   */
  private reserve = 1;
  private readonly held: Session[] = [];
  /** A packet for `dst` found no session to send on (see stage 2); null: nobody listens. */
  onWant: ((dst: number) => void) | null = null;
  /** The network's IPv6 overlay prefix (control/overlay6.ts Overlay6); -1: none, IPv6 routes nowhere. */
  private v6hi = -1;
  private v6mid = 0;

  constructor(
    private readonly aead: Aead,
    private readonly stats: DataplaneStats,
    private readonly clock: Clock,
    private readonly sessions: Sessions,
  ) {}

  /**
   * The overlay MTU: TCP SYNs toward relayed peers get their MSS clamped so that a full segment
   * plus the relay hop's wrapping still fits the underlay (no IP fragments on the relayed path).
   */
  setMtu(mtu: number): void {
    this.relayMss = Math.max(536, mtu - 40 - RELAY_OVERHEAD);
  }

  /** The network's IPv6 overlay prefix: bytes 0-3 and 4-5 of it (control/overlay6.ts overlay6Of). */
  setOverlay6(hi: number, mid: number): void {
    this.v6hi = hi;
    this.v6mid = mid;
  }

  /**
   * Replaces the peer set (apply it to the session table first). A peer keeps an endpoint it
   * roamed to unless the control plane names a new one: a fresher data-plane observation
   * survives a control-plane update that repeats what it said before.
   */
  setPeers(peers: readonly WorkerPeer[]): void {
    const next = new Map<number, OutPeer>();
    for (const cfg of peers) {
      const sessions = this.sessions.peer(cfg.slot);
      if (sessions === undefined) continue;
      const old = this.bySlot.get(cfg.slot);
      let p: OutPeer;
      if (old && old.sessions === sessions) {
        p = old;
        if (!sameEndpoint(old.cfg, cfg)) {
          p.ip = cfg.endpointIp;
          p.port = cfg.endpointPort;
          p.via = cfg.endpointVia ?? DIRECT;
          setHi(p.hi, cfg.endpointHi);
        }
        p.cfg = cfg;
      } else p = new OutPeer(cfg, sessions);
      next.set(cfg.slot, p);
    }
    this.bySlot.clear();
    this.byIp.clear();
    const prefixes: { prefix: { base: number; len: number }; value: OutPeer }[] = [];
    for (const [slot, p] of next) {
      this.bySlot.set(slot, p);
      this.byIp.set(p.cfg.overlayIp, p);
      for (const prefix of p.cfg.allowed) prefixes.push({ prefix, value: p });
    }
    this.prefixes.set(prefixes);
  }

  /** The data plane saw an authenticated packet from a new source: send there from now on. */
  roam(slot: number, ip: number, port: number, via: number = DIRECT, hi: AddrHi = null): void {
    const p = this.bySlot.get(slot);
    if (!p) return;
    setHi(p.hi, hi);
    p.ip = ip;
    p.port = port;
    p.via = via;
  }

  /** Ping every peer at the next timer run (our address or NAT mapping may have changed). */
  pingAllSoon(): void {
    for (const p of this.bySlot.values()) p.lastPingMono = -Infinity;
  }

  get peerCount(): number {
    return this.bySlot.size;
  }

  /**
   * Stages 1-2 for a packet that is not IPv4: the IPv4 twin of its overlay IPv6 destination, or -1
   * (dropped and counted: not IPv6, too short, or a destination outside the overlay prefix).
   */
  private dst6(buf: Buffer, pkt: number, len: number): number {
    if (buf[pkt]! >> 4 !== 6) {
      this.drop(DROP.notIpv4);
      return -1;
    }
    if (len < 40) {
      this.drop(DROP.malformed);
      return -1;
    }
    if (buf.readUInt32BE(pkt + 24) !== this.v6hi || buf.readUInt16BE(pkt + 28) !== this.v6mid || buf.readUInt16BE(pkt + 30) !== 0 || buf.readUInt32BE(pkt + 32) !== 0) {
      this.drop(DROP.noRoute); // multicast, link-local, or no overlay prefix: nobody to ask for
      return -1;
    }
    return buf.readUInt32BE(pkt + 36);
  }

  /** Stages 1-5 over n packets read from the TUN into `batch`; fills `list`. */
  process(batch: PacketBatch, n: number, list: SendList): void {
    const buf = batch.buf;
    list.count = 0;
    this.batchNow = this.clock.now();
    try {
      this.processBatch(batch, buf, n, list);
    } finally {
      this.batchNow = -1;
      this.reserve = 1;
      const held = this.held;
      for (let k = 0; k < held.length; k++) held[k]!.tx.release();
      held.length = 0;
    }
  }

  private processBatch(batch: PacketBatch, buf: Buffer, n: number, list: SendList): void {
    let jobs = this.jobs;
    if (jobs === null || jobs.capacity < n) {
      jobs?.close();
      jobs = this.jobs = this.aead.jobs(Math.max(n, batch.capacity));
      this.jobSlot = new Int32Array(jobs.capacity);
      this.jobPeer = new Array<OutPeer>(jobs.capacity);
    }
    jobs.count = 0;
    for (let i = 0; i < n; i++) {
      const off = batch.offset(i);
      const pkt = off + HEADER_LEN;
      const len = batch.len[i]!;
      // 1. classify
      if (len < 20) {
        this.drop(DROP.malformed);
        continue;
      }
      let peer: OutPeer | undefined;
      let dst: number;
      if (buf[pkt]! >> 4 === 4) {
        // 2. route
        dst = buf.readUInt32BE(pkt + 16);
        peer = this.byIp.get(dst) ?? (this.prefixes.size > 0 ? this.prefixes.lookup(dst) : undefined);
      } else {
        dst = this.dst6(buf, pkt, len);
        if (dst < 0) continue;
        peer = this.byIp.get(dst);
      }
      if (peer === undefined) {
        this.drop(DROP.noRoute);
        this.want(dst);
        continue;
      }
      if (!peer.sendable) {
        this.drop(DROP.noSession);
        this.want(dst);
        continue;
      }
      this.reserve = n - i;
      if (peer.via !== DIRECT && this.relayMss > 0) clampTcpMss(buf, pkt, len, this.relayMss, (batch.flags[i]! & FLAG_CSUM_PARTIAL) !== 0);
      if (peer.via !== DIRECT) {
        // 3-5 at once: sealed for the peer, then wrapped and sealed again for the relay
        if (!this.sealTo(peer, batch, i, len, batch.flags[i]!, peer.ip, peer.port, peer.via, peer.hi)) continue;
        this.counted(batch, i);
        list.idx[list.count++] = i;
        continue;
      }
      // 3. number, and queue for stage 4
      const key = this.number(peer, batch, i, batch.flags[i]!);
      if (key < 0) continue;
      const j = jobs.count;
      jobs.add(key, this.numbered, off, HEADER_LEN, off + HEADER_LEN, len);
      this.jobSlot[j] = i;
      this.jobPeer[j] = peer;
    }
    if (jobs.count === 0) return;
    // 4. seal the batch
    this.aead.sealMany(jobs, buf, batch.addr);
    // 5. address
    for (let j = 0; j < jobs.count; j++) {
      const i = this.jobSlot[j]!;
      const peer = this.jobPeer[j]!;
      if (jobs.result(j) < 0) {
        this.drop(DROP.sealFailed);
        continue;
      }
      this.sealed(peer, batch, i, jobs.len(j));
      batch.ip[i] = peer.ip;
      batch.port[i] = peer.port;
      const h = batch.hi;
      const ph = peer.hi;
      h[3 * i] = ph[0]!;
      h[3 * i + 1] = ph[1]!;
      h[3 * i + 2] = ph[2]!;
      this.counted(batch, i);
      list.idx[list.count++] = i;
    }
  }

  /**
   * Stage 3 for `peer` over slot i: takes the next counter of its send session (in `numbered`)
   * and writes the header; returns the session's key handle, or -1 (dropped: no session, or its
   * counter is exhausted).
   */
  private number(peer: OutPeer, batch: PacketBatch, i: number, flags: number): number {
    const session = peer.sessions.send;
    if (session === null) {
      this.drop(DROP.noSession);
      return -1;
    }
    const tx = session.tx;
    const r = tx.reservations;
    const counter = tx.take(this.reserve);
    if (tx.reservations !== r && this.reserve > 1) this.held.push(session);
    if (counter < 0) {
      this.drop(DROP.sendFailed);
      return -1;
    }
    writeHeader(batch.buf, batch.offset(i), session.txIndex, counter, flags);
    this.numbered = counter;
    return session.txKey;
  }

  /** After stage 4 of slot i for `peer`: its datagram length and the peer's counters. */
  private sealed(peer: OutPeer, batch: PacketBatch, i: number, plainLen: number): void {
    const total = HEADER_LEN + plainLen + TAG_LEN;
    batch.len[i] = total;
    const s = this.stats.peers;
    const base = peer.cfg.slot * PEER_STRIDE;
    s[base + P_TX_BYTES] += total;
    s[base + P_TX_PKTS]! += 1;
    s[base + P_LAST_TX] = this.batchNow >= 0 ? this.batchNow : this.clock.now();
  }

  /** Stages 3-4 for `peer` over the plaintext at slot i + HEADER: header, counter, seal, peer stats. */
  private sealAt(peer: OutPeer, batch: PacketBatch, i: number, plainLen: number, flags: number): boolean {
    const key = this.number(peer, batch, i, flags);
    if (key < 0) return false;
    const off = batch.offset(i);
    if (this.aead.seal(key, this.numbered, batch.buf, off, HEADER_LEN, off + HEADER_LEN, plainLen, batch.addr) < 0) {
      this.drop(DROP.sealFailed);
      return false;
    }
    this.sealed(peer, batch, i, plainLen);
    return true;
  }

  /** Seals for `peer` and addresses the datagram: straight to ip:port, or through relay `via`. */
  private sealTo(
    peer: OutPeer,
    batch: PacketBatch,
    i: number,
    plainLen: number,
    flags: number,
    ip: number,
    port: number,
    via: number,
    hi: AddrHi,
  ): boolean {
    const hop = via === DIRECT ? undefined : this.hop(via);
    if (via !== DIRECT && hop === undefined) {
      this.drop(DROP.noRoute);
      return false;
    }
    if (!this.sealAt(peer, batch, i, plainLen, flags)) return false;
    if (hop === undefined) {
      batch.ip[i] = ip;
      batch.port[i] = port;
      const h = batch.hi;
      h[3 * i] = hi ? hi[0]! : 0;
      h[3 * i + 1] = hi ? hi[1]! : 0;
      h[3 * i + 2] = hi ? hi[2]! : 0;
      return true;
    }
    return this.wrap(hop, CTRL_FORWARD, peer.cfg.overlayIp, batch, i);
  }

  /** The peer in `slot` as a relay hop: known, sendable, reached directly (relays do not chain). */
  private hop(slot: number): OutPeer | undefined {
    const hop = this.bySlot.get(slot);
    return hop !== undefined && hop.sendable && hop.via === DIRECT ? hop : undefined;
  }

  /**
   * One relay hop: the datagram in slot i (from 0, batch.len[i] bytes) moves up behind a new
   * header and a forward/relayed prefix naming `addr`, and is sealed for `hop`.
   */
  private wrap(hop: OutPeer, kind: number, addr: number, batch: PacketBatch, i: number): boolean {
    const buf = batch.buf;
    const off = batch.offset(i);
    const inner = batch.len[i]!;
    buf.copyWithin(off + HEADER_LEN + RELAY_PREFIX, off, off + inner);
    buf[off + HEADER_LEN] = 0;
    buf[off + HEADER_LEN + 1] = kind;
    buf.writeUInt32BE(addr >>> 0, off + HEADER_LEN + 2);
    if (!this.sealAt(hop, batch, i, RELAY_PREFIX + inner, 0)) return false;
    batch.ip[i] = hop.ip;
    batch.port[i] = hop.port;
    const h = batch.hi;
    h[3 * i] = hop.hi[0]!;
    h[3 * i + 1] = hop.hi[1]!;
    h[3 * i + 2] = hop.hi[2]!;
    return true;
  }

  /** wrap() for a hop given by slot; an unusable hop drops the datagram (noRoute). */
  private wrapTo(slot: number, kind: number, addr: number, batch: PacketBatch, i: number): boolean {
    const hop = this.hop(slot);
    if (hop === undefined) {
      this.drop(DROP.noRoute);
      return false;
    }
    return this.wrap(hop, kind, addr, batch, i);
  }

  private counted(batch: PacketBatch, i: number): void {
    this.stats.totals[T_TX_PKTS]! += 1;
    this.stats.totals[T_TX_BYTES] += batch.len[i]!;
  }

  private drop(reason: number): void {
    this.stats.drops[reason]! += 1;
  }

  /** Tells the control thread, at most once per WANT_EVERY_MS per destination, that `dst` wants a session. */
  private want(dst: number): void {
    if (this.onWant === null) return;
    const mono = this.clock.mono();
    const last = this.wanted.get(dst);
    if (last !== undefined && mono - last < WANT_EVERY_MS) return;
    if (this.wanted.size >= WANT_MEMORY) this.wanted.clear();
    this.wanted.set(dst, mono);
    this.onWant(dst);
  }

  /** Writes a ping/probe/pong for a peer into slot i of `batch`; returns its plaintext length. */
  private control(kind: number, t0: number, batch: PacketBatch, i: number, seenIp = 0, seenPort = 0): number {
    const pkt = batch.offset(i) + HEADER_LEN;
    const buf = batch.buf;
    buf[pkt] = 0;
    buf[pkt + 1] = kind;
    buf.writeDoubleLE(t0, pkt + 2);
    if (kind !== CTRL_PONG) return CTRL_LEN;
    buf.writeUInt32BE(seenIp >>> 0, pkt + 10);
    buf.writeUInt16BE(seenPort, pkt + 14);
    return PONG_LEN;
  }

  private queue(batch: PacketBatch, list: SendList, ok: boolean): void {
    if (!ok) return;
    this.counted(batch, list.count);
    list.idx[list.count] = list.count;
    list.count++;
  }

  /**
   * Answers a ping or probe from the peer in `slot`: a pong echoing t0 that tells the peer where
   * its ping came from, sent back the way the ping came (ip:port, or through relay `via`).
   */
  pong(slot: number, t0: number, ip: number, port: number, via: number, batch: PacketBatch, list: SendList, hi: AddrHi = null): void {
    const p = this.bySlot.get(slot);
    if (!p || !p.sendable || list.count >= batch.capacity) return;
    const i = list.count;
    // where the ping came from, for the peer's reflexive address: IPv4 only (0:0 otherwise)
    const seen = via === DIRECT && hi === null;
    const len = this.control(CTRL_PONG, t0, batch, i, seen ? ip : 0, seen ? port : 0);
    this.queue(batch, list, this.sealTo(p, batch, i, len, 0, ip, port, via, hi));
  }

  /** Tests a path: a probe to the peer in `slot` at ip:port (direct), outside its current endpoint. */
  probe(slot: number, ip: number, port: number, batch: PacketBatch, list: SendList, hi: AddrHi = null): void {
    const p = this.bySlot.get(slot);
    if (!p || !p.sendable || list.count >= batch.capacity) return;
    const i = list.count;
    const len = this.control(CTRL_PROBE, this.clock.mono(), batch, i);
    this.queue(batch, list, this.sealTo(p, batch, i, len, 0, ip, port, DIRECT, hi));
  }

  /**
   * A diagnostic ping (`cladnet ping`): a probe stamped `t0` (the control thread's mono clock, so
   * it can match the pong) on the peer's current path, direct or relayed. A probe, so the peer's
   * answer moves no endpoint at either end. False when there is no session to send it on.
   */
  diag(slot: number, t0: number, batch: PacketBatch, list: SendList): boolean {
    const p = this.bySlot.get(slot);
    if (!p || !p.sendable || list.count >= batch.capacity) return false;
    const i = list.count;
    const len = this.control(CTRL_PROBE, t0, batch, i);
    const ok = this.sealTo(p, batch, i, len, 0, p.ip, p.port, p.via, p.hi);
    this.queue(batch, list, ok);
    return ok;
  }

  /**
   * Says bye to every peer we can send to, at its current endpoint, from peer `from` on (the
   * slot order); returns the next `from` when the batch filled up, else -1.
   */
  bye(from: number, batch: PacketBatch, list: SendList): number {
    const peers = [...this.bySlot.values()];
    for (let k = from; k < peers.length; k++) {
      const p = peers[k]!;
      if (!p.sendable) continue;
      if (list.count >= batch.capacity) return k;
      const i = list.count;
      const len = this.control(CTRL_BYE, this.clock.mono(), batch, i);
      this.queue(batch, list, this.sealTo(p, batch, i, len, 0, p.ip, p.port, p.via, p.hi));
    }
    return -1;
  }

  /**
   * We relay: `data` (a datagram the peer with overlay address `from` sealed for the peer in
   * `slot`) goes on to that peer, wrapped as a relayed message sealed for it.
   */
  relay(slot: number, from: number, data: Uint8Array, batch: PacketBatch, list: SendList): void {
    const p = this.bySlot.get(slot);
    if (!p || list.count >= batch.capacity || data.length > batch.maxPacket) return;
    const i = list.count;
    batch.buf.set(data, batch.offset(i));
    batch.len[i] = data.length;
    this.queue(batch, list, this.wrapTo(slot, CTRL_RELAYED, from, batch, i));
  }

  /** A datagram from the control thread (a handshake message) for `target`, through relay `via`. */
  forward(via: number, target: number, data: Uint8Array, batch: PacketBatch, list: SendList): void {
    if (list.count >= batch.capacity || data.length > batch.maxPacket) return;
    const i = list.count;
    batch.buf.set(data, batch.offset(i));
    batch.len[i] = data.length;
    this.queue(batch, list, this.wrapTo(via, CTRL_FORWARD, target, batch, i));
  }

  /**
   * Timers: pings peers that are due: at once on a new send session, fast while a peer is not
   * answering, every 300 ms while a peer that was sending steadily has gone quiet, slowly once it
   * is up.
   * Appends to `list` (slots of the control batch) and returns when the batch is full. Returns
   * when (mono ms) the next ping falls due as things stand, or `mono` when the batch filled up.
   */
  timers(batch: PacketBatch, list: SendList): number {
    const mono = this.clock.mono();
    const now = this.clock.now();
    let next = Infinity;
    const short = mono - this.lastTimers <= BUSY_SPAN_MS;
    this.lastTimers = mono;
    for (const p of this.bySlot.values()) {
      if (list.count >= batch.capacity) return mono;
      if (!p.sendable) continue;
      // (every worker's: the pinging worker may not be the one that receives from the peer)
      const rx = this.stats.rxPackets(p.cfg.slot);
      if (short && rx - p.rxSeen >= 2) p.busyAt = mono;
      p.rxSeen = rx;
      const quiet = now - this.stats.lastRx(p.cfg.slot);
      const interval =
        quiet >= PEER_UP_MS
          ? PING_INTERVAL_CONNECTING_MS
          : quiet >= SILENCE_PING_MS && mono - p.busyAt < ACTIVE_WINDOW_MS
            ? SILENCE_PING_MS
            : PING_INTERVAL_MS;
      // A send session nothing went out on yet (a handshake we initiated just completed): ping
      // at once, so that the responder sees its side of it used and may send on it too. Without
      // this an idle initiator left the responder without a sendable session once its previous
      // one reached its send deadline, until the next regular ping.
      const unused = p.sessions.send!.tx.used === 0;
      // When this peer's interval may shorten by time alone: it goes quiet after a burst, or
      // quiet long enough to count as not answering.
      if (quiet < PEER_UP_MS) next = Math.min(next, mono + (PEER_UP_MS - quiet));
      if (quiet < SILENCE_PING_MS && mono - p.busyAt < ACTIVE_WINDOW_MS) next = Math.min(next, mono + (SILENCE_PING_MS - quiet));
      if (!unused && mono - p.lastPingMono < interval) {
        next = Math.min(next, p.lastPingMono + interval);
        continue;
      }
      p.lastPingMono = mono;
      next = Math.min(next, mono + interval);
      const i = list.count;
      const len = this.control(CTRL_PING, mono, batch, i);
      this.queue(batch, list, this.sealTo(p, batch, i, len, 0, p.ip, p.port, p.via, p.hi));
    }
    return next;
  }

  close(): void {
    this.bySlot.clear();
    this.byIp.clear();
    this.jobs?.close();
    this.jobs = null;
  }
}
