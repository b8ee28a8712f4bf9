/**
 * Inbound: UDP -> TUN. Per batch of datagrams from recvmmsg, each one goes through:
 *
 *   1. header     long enough, type data, reserved bytes zero; else drop (short, badType)
 *   2. peer       receiver index -> session and peer; else drop (unknownPeer)
 *   3. replay     counter not seen and not too old (pre-check, no state change); else drop (replay)
 *   4. open       authenticate and decrypt in place; else drop (auth)
 *   5. commit     record the counter in the replay window; the peer is alive (stats); the first
 *                 packet on a session we answered confirms it (./sessions.ts may now send on it)
 *   6. roam       the newest authenticated packet from a new source address moves the endpoint
 *                 (not a pong or a probe: those answer or test a path, they do not choose one)
 *   7. deliver    control message (ping, probe, pong, keepalive) handled here; a relayed
 *                 datagram goes through steps 1-7 again as its sender's own (once: relays do
 *                 not nest); a forward request is passed to the outbound side when this host
 *                 relays; an IPv4 packet whose source the peer may use is written to the TUN;
 *                 anything else is dropped (spoofed, malformed, relayRefused)
 *
 * Before step 1, handshake messages (exact sizes) and STUN messages go to the control thread,
 * rate-limited per source address. Nothing before step 4 trusts the datagram, and nothing here
 * throws or allocates per packet (relaying copies: it is the fallback path).
 */
import type { Aead } from '../crypto/aead';
import type { PacketBatch } from './batch';
import type { TunIo } from './io';
import type { Clock, WorkerPeer } from './peer';
import { DIRECT, PrefixTable } from './peer';
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
  T_RELAY_BYTES,
  T_RELAY_PKTS,
  T_RX_BYTES,
  T_RX_PKTS,
} from './stats';
import { COOKIE_LEN, INITIATION_LEN, MSG_COOKIE, MSG_INITIATION, MSG_RESPONSE, RESPONSE_LEN } from '../crypto/noise';
import { isStunPacket } from '../control/stun';
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
  ping(slot: number, t0: number, ip: number, port: number, via: number): void;
  /**
   * A pong arrived: rttMs on the path it came back on (ip:port or relay `via`); seenIp:seenPort is
   * our address as the peer saw our ping (0:0 when relayed).
   */
  pong?(slot: number, rttMs: number, ip: number, port: number, via: number, seenIp: number, seenPort: number): void;
  /** The peer's packets now come from a new address (or through relay `via`). */
  roam(slot: number, ip: number, port: number, via: number): void;
  /** A handshake message (type 1-3) arrived; `data` is only valid during the call. */
  handshake(data: Buffer, ip: number, port: number, via: number): void;
  /** A STUN message arrived (answers to our binding requests); `data` is only valid during the call. */
  stun?(data: Buffer, ip: number, port: number): void;
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
}

/** Handshake messages accepted per source address: rate per second and burst. */
export const HS_RATE = 20;
export const HS_BURST = 10;
const HS_SOURCES_MAX = 4096;

/** A receiver index's session and the peer it belongs to. */
interface RxEntry {
  readonly session: Session;
  readonly peer: InPeer;
}

class InPeer {
  ip: number;
  port: number;
  via: number;
  constructor(public cfg: WorkerPeer) {
    this.ip = cfg.endpointIp;
    this.port = cfg.endpointPort;
    this.via = cfg.endpointVia ?? DIRECT;
  }
}

export class Inbound {
  private readonly byIndex = new Map<number, RxEntry>();
  private readonly bySlot = new Map<number, InPeer>();
  /** Which peer may send from which inner source address. */
  private readonly sources = new Map<number, InPeer>();
  private readonly sourcePrefixes = new PrefixTable<InPeer>();
  /** Handshake messages allowed per source address (token bucket). */
  private readonly buckets = new Map<number, { tokens: number; at: number }>();
  private readonly relayEnabled: boolean;

  constructor(
    private readonly aead: Aead,
    private readonly stats: DataplaneStats,
    private readonly clock: Clock,
    private readonly sessions: Sessions,
    private readonly events: InboundEvents,
    opts: InboundOptions = {},
  ) {
    this.relayEnabled = opts.relay ?? false;
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
          (old.cfg.endpointVia ?? DIRECT) !== (cfg.endpointVia ?? DIRECT)
        ) {
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
    this.sources.clear();
    const prefixes: { prefix: { base: number; len: number }; value: InPeer }[] = [];
    for (const [slot, p] of next) {
      this.bySlot.set(slot, p);
      for (const session of this.sessions.peer(slot)?.byKey.values() ?? []) this.byIndex.set(session.rxIndex, { session, peer: p });
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
    for (let i = 0; i < n; i++) this.one(batch, i, batch.len[i]!, batch.ip[i]!, batch.port[i]!, DIRECT, tun);
    const refused = tun.flush();
    if (refused > 0) this.stats.drops[DROP.tunWrite]! += refused;
  }

  /**
   * One datagram at the start of slot i: as received from ip:port (via DIRECT), or unwrapped from
   * a relayed message that the peer in slot `via` passed on (ip, port then 0).
   */
  private one(batch: PacketBatch, i: number, len: number, ip: number, port: number, via: number, tun: TunIo): void {
    const buf = batch.buf;
    const drops = this.stats.drops;
    const off = batch.offset(i);
    // 0. handshake messages (right type and exact size) go to the control thread, rate-limited
    //    per source address; so do STUN answers; anything else falls through to the data checks
    const type = len > 0 ? buf[off]! : 0;
    if (
      (type === MSG_INITIATION && len === INITIATION_LEN) ||
      (type === MSG_RESPONSE && len === RESPONSE_LEN) ||
      (type === MSG_COOKIE && len === COOKIE_LEN)
    ) {
      if (via === DIRECT && !this.allowHandshake(ip)) drops[DROP.handshakeRateLimited]! += 1;
      else this.events.handshake(buf.subarray(off, off + len), ip, port, via);
      return;
    }
    if (type <= 1 && via === DIRECT && isStunPacket(buf, off, len)) {
      if (!this.allowHandshake(ip)) drops[DROP.handshakeRateLimited]! += 1;
      else this.events.stun?.(buf.subarray(off, off + len), ip, port);
      return;
    }
    // 1. header
    const verdict = checkHeader(buf, off, len);
    if (verdict !== null) {
      drops[verdict === 'short' ? DROP.short : DROP.badType]! += 1;
      return;
    }
    // 2. peer (and which of its sessions)
    const entry = this.byIndex.get(buf.readUInt32LE(off + 4));
    if (entry === undefined) {
      drops[DROP.unknownPeer]! += 1;
      return;
    }
    const { session, peer } = entry;
    if (via === peer.cfg.slot) {
      // a relay passing on its own datagram under another peer's name
      drops[DROP.spoofed]! += 1;
      return;
    }
    // 3. replay pre-check
    const counter = readCounter(buf, off);
    if (!session.replay.mayAccept(counter)) {
      drops[DROP.replay]! += 1;
      return;
    }
    // 4. open
    const plen = this.aead.open(session.rxKey, counter, buf, off, HEADER_LEN, off + HEADER_LEN, len - HEADER_LEN);
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
    const now = this.clock.now();
    s[base + P_RX_BYTES] += len;
    s[base + P_RX_PKTS]! += 1;
    s[base + P_LAST_RX] = now;
    if (via === DIRECT) {
      this.stats.totals[T_RX_PKTS]! += 1;
      this.stats.totals[T_RX_BYTES] += len;
    }
    const pkt = off + HEADER_LEN;
    const kind = plen >= 2 && buf[pkt] === 0 ? buf[pkt + 1]! : -1;
    // 6. roam
    if (newest && kind !== CTRL_PONG && kind !== CTRL_PROBE && (ip !== peer.ip || port !== peer.port || via !== peer.via)) {
      peer.ip = ip;
      peer.port = port;
      peer.via = via;
      s[base + P_LAST_ROAM] = now;
      this.events.roam(peer.cfg.slot, ip, port, via);
    }
    // 7. deliver
    if (plen === 0) return; // keepalive
    if (buf[pkt] === 0) this.control(peer, batch, i, pkt, plen, kind, ip, port, via, tun);
    else this.deliver(peer, batch, i, pkt, plen, tun);
  }

  private control(peer: InPeer, batch: PacketBatch, i: number, pkt: number, plen: number, kind: number, ip: number, port: number, via: number, tun: TunIo): void {
    const buf = batch.buf;
    const drops = this.stats.drops;
    if ((kind === CTRL_PING || kind === CTRL_PROBE) && plen === CTRL_LEN) {
      this.events.ping(peer.cfg.slot, buf.readDoubleLE(pkt + 2), ip, port, via);
      return;
    }
    if (kind === CTRL_BYE && plen === CTRL_LEN) {
      this.events.bye?.(peer.cfg.slot);
      return;
    }
    if (kind === CTRL_PONG && plen === PONG_LEN) {
      const rtt = this.clock.mono() - buf.readDoubleLE(pkt + 2);
      if (!(rtt >= 0 && rtt < 60_000)) {
        drops[DROP.malformed]! += 1;
        return;
      }
      if (ip === peer.ip && port === peer.port && via === peer.via) this.stats.peers[peer.cfg.slot * PEER_STRIDE + P_RTT] = rtt;
      this.events.pong?.(peer.cfg.slot, rtt, ip, port, via, buf.readUInt32BE(pkt + 10), buf.readUInt16BE(pkt + 14));
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
      this.one(batch, i, inner, 0, 0, peer.cfg.slot, tun);
      return;
    }
    drops[DROP.malformed]! += 1;
  }

  private deliver(peer: InPeer, batch: PacketBatch, i: number, pkt: number, plen: number, tun: TunIo): void {
    const buf = batch.buf;
    const drops = this.stats.drops;
    const first = buf[pkt]!;
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
    this.bySlot.clear();
    this.byIndex.clear();
  }
}
