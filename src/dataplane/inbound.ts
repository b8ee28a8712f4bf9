/**
 * Inbound: UDP -> TUN. Per batch of datagrams from recvmmsg, each one goes through:
 *
 *   1. header     long enough, type data, reserved bytes zero; else drop (short, badType)
 *   2. peer       receiver index -> peer; else drop (unknownPeer)
 *   3. replay     counter not seen and not too old (pre-check, no state change); else drop (replay)
 *   4. open       authenticate and decrypt in place; else drop (auth)
 *   5. commit     record the counter in the replay window; the peer is alive (stats)
 *   6. roam       the newest authenticated packet from a new source address moves the endpoint
 *   7. deliver    control message (ping, pong, keepalive) handled here; an IPv4 packet whose
 *                 source the peer may use is written to the TUN; else drop (spoofed, malformed)
 *
 * Nothing before step 4 trusts the datagram, and nothing here throws or allocates per packet.
 */
import type { Aead } from '../crypto/aead';
import type { PacketBatch } from './batch';
import type { TunIo } from './io';
import type { Clock, WorkerPeer } from './peer';
import { PrefixTable } from './peer';
import { ReplayWindow } from './replay';
import {
  DROP,
  type DataplaneStats,
  PEER_STRIDE,
  P_LAST_ROAM,
  P_LAST_RX,
  P_RTT,
  P_RX_BYTES,
  P_RX_PKTS,
  T_RX_BYTES,
  T_RX_PKTS,
} from './stats';
import { COOKIE_LEN, INITIATION_LEN, MSG_COOKIE, MSG_INITIATION, MSG_RESPONSE, RESPONSE_LEN } from '../crypto/noise';
import { checkHeader, COUNTER_LIMIT, FLAG_CSUM_PARTIAL, CTRL_LEN, CTRL_PING, CTRL_PONG, HEADER_LEN, readCounter } from './wire';

export interface InboundEvents {
  /** The peer pinged us: the outbound side should answer with a pong echoing t0. */
  ping(slot: number, t0: number): void;
  /** The peer's packets now come from a new address. */
  roam(slot: number, ip: number, port: number): void;
  /** A handshake message (type 1-3) arrived; `data` is only valid during the call. */
  handshake(data: Buffer, ip: number, port: number): void;
  /** The first packet arrived on a session marked `promote`: it may be used for sending. */
  confirmed(slot: number, keyId: string): void;
}

/** Handshake messages accepted per source address: rate per second and burst. */
export const HS_RATE = 20;
export const HS_BURST = 10;
const HS_SOURCES_MAX = 4096;

/** One receive key of a peer, with its own replay window. */
class RxSession {
  readonly replay = new ReplayWindow(COUNTER_LIMIT);
  constructor(
    readonly peer: InPeer,
    readonly keyId: string,
    readonly key: number,
    public promote: boolean,
  ) {}
}

class InPeer {
  ip: number;
  port: number;
  /** keyId -> session: the current one and any receive-only ones. */
  sessions = new Map<string, RxSession>();
  constructor(public cfg: WorkerPeer) {
    this.ip = cfg.endpointIp;
    this.port = cfg.endpointPort;
  }
}

export class Inbound {
  private readonly byIndex = new Map<number, RxSession>();
  private readonly bySlot = new Map<number, InPeer>();
  /** Which peer may send from which inner source address. */
  private readonly sources = new Map<number, InPeer>();
  private readonly sourcePrefixes = new PrefixTable<InPeer>();
  /** Handshake messages allowed per source address (token bucket). */
  private readonly buckets = new Map<number, { tokens: number; at: number }>();

  constructor(
    private readonly aead: Aead,
    private readonly stats: DataplaneStats,
    private readonly clock: Clock,
    private readonly events: InboundEvents,
  ) {}

  /**
   * Replaces the peer set. Sessions are matched by keyId: an unchanged one keeps its key and
   * replay window, a new one is loaded, a missing one is erased. A peer keeps an endpoint it
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
        if (old.cfg.endpointIp !== cfg.endpointIp || old.cfg.endpointPort !== cfg.endpointPort) {
          old.ip = cfg.endpointIp;
          old.port = cfg.endpointPort;
        }
        old.cfg = cfg;
      }
      const want: { keyId: string; rxKey: Uint8Array; rxIndex: number; promote: boolean }[] = [
        { keyId: cfg.keyId, rxKey: cfg.rxKey, rxIndex: cfg.rxIndex, promote: cfg.unconfirmed ?? false },
        ...(cfg.receiveOnly ?? []).map((r) => ({ ...r, promote: r.promote ?? false })),
      ];
      const sessions = new Map<string, RxSession>();
      for (const w of want) {
        const had = p.sessions.get(w.keyId);
        if (had) {
          had.promote = had.promote && w.promote;
          sessions.set(w.keyId, had);
        } else sessions.set(w.keyId, new RxSession(p, w.keyId, this.aead.loadKey(w.rxKey), w.promote));
      }
      for (const [id, old2] of p.sessions) if (!sessions.has(id)) this.aead.dropKey(old2.key);
      p.sessions = sessions;
      next.set(cfg.slot, p);
    }
    for (const [slot, old] of this.bySlot) {
      if (!next.has(slot)) for (const r of old.sessions.values()) this.aead.dropKey(r.key);
    }
    this.bySlot.clear();
    this.byIndex.clear();
    this.sources.clear();
    const prefixes: { prefix: { base: number; len: number }; value: InPeer }[] = [];
    for (const [slot, p] of next) {
      this.bySlot.set(slot, p);
      this.byIndex.set(p.cfg.rxIndex, p.sessions.get(p.cfg.keyId)!);
      for (const r of p.cfg.receiveOnly ?? []) this.byIndex.set(r.rxIndex, p.sessions.get(r.keyId)!);
      this.sources.set(p.cfg.overlayIp, p);
      for (const prefix of p.cfg.allowed) prefixes.push({ prefix, value: p });
    }
    this.sourcePrefixes.set(prefixes);
  }

  /** Token bucket per source address for handshake messages: HS_RATE per second, HS_BURST deep. */
  private allowHandshake(ip: number): boolean {
    const now = this.clock.mono();
    let b = this.buckets.get(ip);
    if (!b) {
      if (this.buckets.size >= HS_SOURCES_MAX) this.buckets.clear();
      b = { tokens: HS_BURST, at: now };
      this.buckets.set(ip, b);
    }
    b.tokens = Math.min(HS_BURST, b.tokens + ((now - b.at) / 1000) * HS_RATE);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  get peerCount(): number {
    return this.bySlot.size;
  }

  /** Steps 1-7 over n datagrams received into `batch`. */
  process(batch: PacketBatch, n: number, tun: TunIo): void {
    const buf = batch.buf;
    const drops = this.stats.drops;
    for (let i = 0; i < n; i++) {
      const off = batch.offset(i);
      const len = batch.len[i]!;
      // 0. handshake messages (right type and exact size) go to the control thread, rate-limited
      //    per source address; anything else falls through to the data checks
      const type = len > 0 ? buf[off]! : 0;
      if (
        (type === MSG_INITIATION && len === INITIATION_LEN) ||
        (type === MSG_RESPONSE && len === RESPONSE_LEN) ||
        (type === MSG_COOKIE && len === COOKIE_LEN)
      ) {
        if (!this.allowHandshake(batch.ip[i]!)) drops[DROP.handshakeRateLimited]! += 1;
        else this.events.handshake(buf.subarray(off, off + len), batch.ip[i]!, batch.port[i]!);
        continue;
      }
      // 1. header
      const verdict = checkHeader(buf, off, len);
      if (verdict !== null) {
        drops[verdict === 'short' ? DROP.short : DROP.badType]! += 1;
        continue;
      }
      // 2. peer (and which of its sessions)
      const session = this.byIndex.get(buf.readUInt32LE(off + 4));
      if (session === undefined) {
        drops[DROP.unknownPeer]! += 1;
        continue;
      }
      const peer = session.peer;
      // 3. replay pre-check
      const counter = readCounter(buf, off);
      if (!session.replay.mayAccept(counter)) {
        drops[DROP.replay]! += 1;
        continue;
      }
      // 4. open
      const plen = this.aead.open(session.key, counter, buf, off, HEADER_LEN, off + HEADER_LEN, len - HEADER_LEN);
      if (plen < 0) {
        drops[DROP.auth]! += 1;
        continue;
      }
      // 5. commit
      const newest = counter >= session.replay.highest;
      if (!session.replay.accept(counter)) {
        drops[DROP.replay]! += 1;
        continue;
      }
      if (session.promote) {
        // The initiator sends on the session it just completed: we may now send on it too.
        session.promote = false;
        this.events.confirmed(peer.cfg.slot, session.keyId);
      }
      const s = this.stats.peers;
      const base = peer.cfg.slot * PEER_STRIDE;
      const now = this.clock.now();
      s[base + P_RX_BYTES] += len;
      s[base + P_RX_PKTS]! += 1;
      s[base + P_LAST_RX] = now;
      this.stats.totals[T_RX_PKTS]! += 1;
      this.stats.totals[T_RX_BYTES] += len;
      // 6. roam
      const ip = batch.ip[i]!;
      const port = batch.port[i]!;
      if (newest && (ip !== peer.ip || port !== peer.port)) {
        peer.ip = ip;
        peer.port = port;
        s[base + P_LAST_ROAM] = now;
        this.events.roam(peer.cfg.slot, ip, port);
      }
      // 7. deliver
      this.deliver(peer, batch, i, off + HEADER_LEN, plen, tun);
    }
    const refused = tun.flush();
    if (refused > 0) drops[DROP.tunWrite]! += refused;
  }

  private deliver(peer: InPeer, batch: PacketBatch, i: number, pkt: number, plen: number, tun: TunIo): void {
    const buf = batch.buf;
    const drops = this.stats.drops;
    if (plen === 0) return; // keepalive
    const first = buf[pkt]!;
    if (first === 0) {
      if (plen !== CTRL_LEN) {
        drops[DROP.malformed]! += 1;
        return;
      }
      const kind = buf[pkt + 1];
      const t0 = buf.readDoubleLE(pkt + 2);
      if (kind === CTRL_PING) this.events.ping(peer.cfg.slot, t0);
      else if (kind === CTRL_PONG) {
        const rtt = this.clock.mono() - t0;
        if (rtt >= 0 && rtt < 60_000) this.stats.peers[peer.cfg.slot * PEER_STRIDE + P_RTT] = rtt;
      } else drops[DROP.malformed]! += 1;
      return;
    }
    if (first >> 4 !== 4 || plen < 20) {
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
    const partial = (buf[batch.offset(i) + 1]! & FLAG_CSUM_PARTIAL) !== 0;
    if (!tun.writeSlot(batch, i, total, partial)) drops[DROP.tunWrite]! += 1;
  }

  close(): void {
    for (const p of this.bySlot.values()) for (const r of p.sessions.values()) this.aead.dropKey(r.key);
    this.bySlot.clear();
    this.byIndex.clear();
  }
}
