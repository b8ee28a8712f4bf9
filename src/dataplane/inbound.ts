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
import { checkHeader, COUNTER_LIMIT, FLAG_CSUM_PARTIAL, CTRL_LEN, CTRL_PING, CTRL_PONG, HEADER_LEN, readCounter } from './wire';

export interface InboundEvents {
  /** The peer pinged us: the outbound side should answer with a pong echoing t0. */
  ping(slot: number, t0: number): void;
  /** The peer's packets now come from a new address. */
  roam(slot: number, ip: number, port: number): void;
}

class InPeer {
  readonly replay = new ReplayWindow(COUNTER_LIMIT);
  ip: number;
  port: number;
  constructor(
    public cfg: WorkerPeer,
    readonly key: number,
  ) {
    this.ip = cfg.endpointIp;
    this.port = cfg.endpointPort;
  }
}

export class Inbound {
  private readonly byIndex = new Map<number, InPeer>();
  private readonly bySlot = new Map<number, InPeer>();
  /** Which peer may send from which inner source address. */
  private readonly sources = new Map<number, InPeer>();
  private readonly sourcePrefixes = new PrefixTable<InPeer>();

  constructor(
    private readonly aead: Aead,
    private readonly stats: DataplaneStats,
    private readonly clock: Clock,
    private readonly events: InboundEvents,
  ) {}

  /**
   * Replaces the peer set; a peer with unchanged keys keeps its replay window, and keeps an endpoint
   * it roamed to unless the control plane names a new one (exactly as Outbound does).
   */
  setPeers(peers: readonly WorkerPeer[]): void {
    const next = new Map<number, InPeer>();
    for (const cfg of peers) {
      const old = this.bySlot.get(cfg.slot);
      if (old && old.cfg.keyId === cfg.keyId) {
        // As in Outbound.setPeers: a new endpoint from the control plane replaces a roamed one
        // here too, so packets from anywhere else (the roamed address included) are a move again.
        if (old.cfg.endpointIp !== cfg.endpointIp || old.cfg.endpointPort !== cfg.endpointPort) {
          old.ip = cfg.endpointIp;
          old.port = cfg.endpointPort;
        }
        old.cfg = cfg;
        next.set(cfg.slot, old);
      } else {
        if (old) this.aead.dropKey(old.key);
        next.set(cfg.slot, new InPeer(cfg, this.aead.loadKey(cfg.rxKey)));
      }
    }
    for (const [slot, old] of this.bySlot) if (!next.has(slot)) this.aead.dropKey(old.key);
    this.bySlot.clear();
    this.byIndex.clear();
    this.sources.clear();
    const prefixes: { prefix: { base: number; len: number }; value: InPeer }[] = [];
    for (const [slot, p] of next) {
      this.bySlot.set(slot, p);
      this.byIndex.set(p.cfg.rxIndex, p);
      this.sources.set(p.cfg.overlayIp, p);
      for (const prefix of p.cfg.allowed) prefixes.push({ prefix, value: p });
    }
    this.sourcePrefixes.set(prefixes);
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
      // 1. header
      const verdict = checkHeader(buf, off, len);
      if (verdict !== null) {
        drops[verdict === 'short' ? DROP.short : DROP.badType]! += 1;
        continue;
      }
      // 2. peer
      const peer = this.byIndex.get(buf.readUInt32LE(off + 4));
      if (peer === undefined) {
        drops[DROP.unknownPeer]! += 1;
        continue;
      }
      // 3. replay pre-check
      const counter = readCounter(buf, off);
      if (!peer.replay.mayAccept(counter)) {
        drops[DROP.replay]! += 1;
        continue;
      }
      // 4. open
      const plen = this.aead.open(peer.key, counter, buf, off, HEADER_LEN, off + HEADER_LEN, len - HEADER_LEN);
      if (plen < 0) {
        drops[DROP.auth]! += 1;
        continue;
      }
      // 5. commit
      const newest = counter >= peer.replay.highest;
      if (!peer.replay.accept(counter)) {
        drops[DROP.replay]! += 1;
        continue;
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
    for (const p of this.bySlot.values()) this.aead.dropKey(p.key);
    this.bySlot.clear();
    this.byIndex.clear();
  }
}
