/**
 * Outbound: TUN -> UDP. Per batch of packets read from the TUN, each packet goes through:
 *
 *   1. classify   IPv4 with a whole header, else drop (notIpv4, malformed)
 *   2. route      destination overlay address -> peer (exact match, then advertised prefixes),
 *                 else drop (noRoute); a peer whose only session awaits the initiator's first
 *                 packet takes nothing yet (noSession, a few milliseconds after a handshake)
 *   3. number     take the peer's next counter; write the 16-byte header in the slot's headroom
 *   4. seal       ChaCha20-Poly1305 in place, header as associated data, tag appended
 *   5. address    the peer's current endpoint; queue the slot on the send list
 *
 * The worker then hands the send list to sendmmsg. Nothing here allocates or throws per packet.
 * Control messages (ping, pong) take the same stages 3-5 from a separate small batch.
 */
import type { Aead } from '../crypto/aead';
import type { PacketBatch, SendList } from './batch';
import type { Clock, WorkerPeer } from './peer';
import { PrefixTable } from './peer';
import {
  DROP,
  type DataplaneStats,
  PEER_STRIDE,
  P_LAST_RX,
  P_LAST_TX,
  P_TX_BYTES,
  P_TX_PKTS,
  T_TX_BYTES,
  T_TX_PKTS,
} from './stats';
import { COUNTER_LIMIT, CTRL_LEN, CTRL_PING, CTRL_PONG, HEADER_LEN, TAG_LEN, writeHeader } from './wire';

/** Ping every peer this often once it is up (keeps NAT mappings open and measures RTT). */
export const PING_INTERVAL_MS = 5_000;
/** Ping this often while a peer has not answered yet. */
export const PING_INTERVAL_CONNECTING_MS = 500;
/** A peer is up while its last authenticated packet is younger than this. */
export const PEER_UP_MS = 3 * PING_INTERVAL_MS + 1_000;

class OutPeer {
  counter = 0;
  lastPingMono = -Infinity;
  /** False while the send session is one we answered and the initiator has not used yet. */
  sendable: boolean;
  ip: number;
  port: number;
  constructor(
    public cfg: WorkerPeer,
    public key: number,
  ) {
    this.ip = cfg.endpointIp;
    this.port = cfg.endpointPort;
    this.sendable = !cfg.unconfirmed;
  }
}

export class Outbound {
  private readonly byIp = new Map<number, OutPeer>();
  private readonly bySlot = new Map<number, OutPeer>();
  private readonly prefixes = new PrefixTable<OutPeer>();

  constructor(
    private readonly aead: Aead,
    private readonly stats: DataplaneStats,
    private readonly clock: Clock,
  ) {}

  /**
   * Replaces the peer set. A peer whose keys are unchanged keeps its key handle and counter, and
   * keeps an endpoint it roamed to unless the control plane names a new one.
   */
  setPeers(peers: readonly WorkerPeer[]): void {
    const next = new Map<number, OutPeer>();
    for (const cfg of peers) {
      const old = this.bySlot.get(cfg.slot);
      let p: OutPeer;
      if (old && old.cfg.keyId === cfg.keyId) {
        p = old;
        // A fresher data-plane observation (roaming) survives a control-plane update that
        // repeats the endpoint it already named; a new endpoint from the control plane wins.
        if (old.cfg.endpointIp !== cfg.endpointIp || old.cfg.endpointPort !== cfg.endpointPort) {
          p.ip = cfg.endpointIp;
          p.port = cfg.endpointPort;
        }
        p.cfg = cfg;
        if (!cfg.unconfirmed) p.sendable = true;
      } else {
        if (old) this.aead.dropKey(old.key);
        p = new OutPeer(cfg, this.aead.loadKey(cfg.txKey));
      }
      next.set(cfg.slot, p);
    }
    for (const [slot, old] of this.bySlot) if (!next.has(slot)) this.aead.dropKey(old.key);
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

  /**
   * The peer sent its first packet on a session we answered as responder: send on it from now on
   * (its keys came with the peer set as a `promote` receive-only session).
   */
  promote(slot: number, keyId: string): void {
    const p = this.bySlot.get(slot);
    if (!p) return;
    if (p.cfg.keyId === keyId) {
      p.sendable = true; // our only session, answered by us: the initiator has used it now
      return;
    }
    const r = p.cfg.receiveOnly?.find((x) => x.keyId === keyId);
    if (!r || !r.txKey || r.txIndex === undefined) return;
    this.aead.dropKey(p.key);
    p.key = this.aead.loadKey(r.txKey);
    p.counter = 0;
    p.sendable = true;
    p.cfg = { ...p.cfg, keyId, txKey: r.txKey, rxKey: r.rxKey, txIndex: r.txIndex, rxIndex: r.rxIndex };
  }

  /** The data plane saw an authenticated packet from a new source: send there from now on. */
  roam(slot: number, ip: number, port: number): void {
    const p = this.bySlot.get(slot);
    if (!p) return;
    p.ip = ip;
    p.port = port;
  }

  get peerCount(): number {
    return this.bySlot.size;
  }

  /** Stages 1-5 over n packets read from the TUN into `batch`; fills `list`. */
  process(batch: PacketBatch, n: number, list: SendList): void {
    const buf = batch.buf;
    list.count = 0;
    for (let i = 0; i < n; i++) {
      const off = batch.offset(i);
      const pkt = off + HEADER_LEN;
      const len = batch.len[i]!;
      // 1. classify
      if (len < 20) {
        this.drop(DROP.malformed);
        continue;
      }
      if (buf[pkt]! >> 4 !== 4) {
        this.drop(DROP.notIpv4);
        continue;
      }
      // 2. route
      const dst = buf.readUInt32BE(pkt + 16);
      const peer = this.byIp.get(dst) ?? (this.prefixes.size > 0 ? this.prefixes.lookup(dst) : undefined);
      if (peer === undefined) {
        this.drop(DROP.noRoute);
        continue;
      }
      if (!peer.sendable) {
        this.drop(DROP.noSession);
        continue;
      }
      // 3-5. number, seal, address
      if (!this.seal(peer, batch, i, len)) continue;
      list.idx[list.count++] = i;
    }
  }

  private seal(peer: OutPeer, batch: PacketBatch, i: number, len: number): boolean {
    if (peer.counter >= COUNTER_LIMIT) {
      this.drop(DROP.sendFailed);
      return false;
    }
    const off = batch.offset(i);
    const counter = peer.counter++;
    writeHeader(batch.buf, off, peer.cfg.txIndex, counter, batch.flags[i]);
    this.aead.seal(peer.key, counter, batch.buf, off, HEADER_LEN, off + HEADER_LEN, len);
    const total = HEADER_LEN + len + TAG_LEN;
    batch.len[i] = total;
    batch.ip[i] = peer.ip;
    batch.port[i] = peer.port;
    const s = this.stats.peers;
    const base = peer.cfg.slot * PEER_STRIDE;
    s[base + P_TX_BYTES] += total;
    s[base + P_TX_PKTS]! += 1;
    s[base + P_LAST_TX] = this.clock.now();
    this.stats.totals[T_TX_PKTS]! += 1;
    this.stats.totals[T_TX_BYTES] += total;
    return true;
  }

  private drop(reason: number): void {
    this.stats.drops[reason]! += 1;
  }

  /** Writes a control message for a peer into slot i of `batch` and seals it. */
  private control(peer: OutPeer, kind: number, t0: number, batch: PacketBatch, i: number): boolean {
    const pkt = batch.offset(i) + HEADER_LEN;
    batch.flags[i] = 0;
    batch.buf[pkt] = 0;
    batch.buf[pkt + 1] = kind;
    batch.buf.writeDoubleLE(t0, pkt + 2);
    return this.seal(peer, batch, i, CTRL_LEN);
  }

  /** Queues a pong echoing t0 to the peer in `slot`. */
  pong(slot: number, t0: number, batch: PacketBatch, list: SendList): void {
    const p = this.bySlot.get(slot);
    if (!p || !p.sendable || list.count >= batch.capacity) return;
    const i = list.count;
    if (this.control(p, CTRL_PONG, t0, batch, i)) list.idx[list.count++] = i;
  }

  /**
   * Timers: pings peers that are due (fast while a peer is not answering, slow once it is).
   * Appends to `list` (slots of the control batch) and returns when the batch is full.
   */
  timers(batch: PacketBatch, list: SendList): void {
    const mono = this.clock.mono();
    const now = this.clock.now();
    for (const p of this.bySlot.values()) {
      if (list.count >= batch.capacity) return;
      if (!p.sendable) continue;
      const lastRx = this.stats.peers[p.cfg.slot * PEER_STRIDE + P_LAST_RX]!;
      const up = now - lastRx < PEER_UP_MS;
      const interval = up ? PING_INTERVAL_MS : PING_INTERVAL_CONNECTING_MS;
      if (mono - p.lastPingMono < interval) continue;
      p.lastPingMono = mono;
      const i = list.count;
      if (this.control(p, CTRL_PING, mono, batch, i)) list.idx[list.count++] = i;
    }
  }

  close(): void {
    for (const p of this.bySlot.values()) this.aead.dropKey(p.key);
    this.bySlot.clear();
    this.byIp.clear();
  }
}
