/**
 * Data-plane counters in shared memory: the worker writes, the control thread reads for status.
 * Each field has exactly one writer (the data-plane worker), so no locks are needed.
 */
import type { StatusOffloads } from '../status/types';

export const MAX_PEERS = 4096;
export const PEER_STRIDE = 8;
export const P_RX_BYTES = 0;
export const P_RX_PKTS = 1;
export const P_TX_BYTES = 2;
export const P_TX_PKTS = 3;
export const P_LAST_RX = 4; // wall-clock ms of the last authenticated packet from the peer
export const P_LAST_TX = 5;
export const P_RTT = 6; // ms, last ping round trip; NaN before the first pong
export const P_LAST_ROAM = 7; // wall-clock ms of the last endpoint change seen by the data plane

/** Why packets were dropped. Inbound reasons first, then outbound ones. */
export const DROP_REASONS = [
  'short', // datagram shorter than header + tag
  'badType', // unknown message type or non-zero reserved bytes
  'unknownPeer', // receiver index names no peer
  'replay', // counter already seen or too old
  'auth', // failed authentication (forged, garbled, wrong key)
  'spoofed', // inner source address not allowed for that peer
  'malformed', // inner packet not a valid IP packet
  'tunWrite', // the kernel refused the packet on the TUN
  'handshakeRateLimited', // handshake or STUN messages from one source (or relay) beyond the per-source rate
  'handshakeBadMac1', // initiation or response whose mac1 is not for us (checked before the control thread)
  'handshakeOverBudget', // handshake or STUN messages beyond the global budget (./hslimit.ts)
  'relayRefused', // a forward request we may not serve (not a relay, unknown target, loop)
  'noRoute', // TUN packet for an address no peer owns
  'noSession', // TUN packet for a peer whose session the initiator has not confirmed yet
  'notIpv4', // TUN packet that is neither IPv4 nor IPv6 (IPv6 outside the overlay prefix is noRoute)
  'sendFailed', // the UDP socket refused the datagram
  'sealFailed', // the AEAD backend failed to seal (never seen; the packet is wiped and dropped)
  'policy', // the network policy allows no such packet to this host (./policy.ts); per rule in status
] as const;
export type DropReason = (typeof DROP_REASONS)[number];
export const DROP = Object.fromEntries(DROP_REASONS.map((r, i) => [r, i])) as Record<DropReason, number>;

export const T_RX_PKTS = 0;
export const T_RX_BYTES = 1;
export const T_TX_PKTS = 2;
export const T_TX_BYTES = 3;
/** Datagrams (and their bytes) this host passed on as a relay. */
export const T_RELAY_PKTS = 4;
export const T_RELAY_BYTES = 5;
/**
 * Offload counters, copied from the worker's TUN and UDP wrappers every timer tick: UDP GSO
 * messages sent and the datagrams they carried, GSO runs the kernel refused, whether GSO is still
 * on (1/0); UDP GRO buffers received holding more than one datagram and those datagrams; TUN
 * writes of coalesced super-packets and the segments they held.
 */
export const T_GSO_MSGS = 6;
export const T_GSO_DATAGRAMS = 7;
export const T_GSO_REFUSED = 8;
export const T_GSO_ON = 9;
export const T_GRO_MSGS = 10;
export const T_GRO_DATAGRAMS = 11;
export const T_TUN_SUPER = 12;
export const T_TUN_COALESCED = 13;
/** Handshake messages and STUN answers the worker passed to the control thread. */
export const T_HS_PASSED = 14;
/** Cookie replies the worker sent to initiations over the handshake budget (./hslimit.ts). */
export const T_HS_COOKIES = 15;
const TOTALS = 16;

export class DataplaneStats {
  readonly sab: SharedArrayBuffer;
  readonly peers: Float64Array;
  readonly drops: Float64Array;
  readonly totals: Float64Array;

  constructor(sab?: SharedArrayBuffer) {
    const bytes = 8 * (MAX_PEERS * PEER_STRIDE + DROP_REASONS.length + TOTALS);
    this.sab = sab ?? new SharedArrayBuffer(bytes);
    this.peers = new Float64Array(this.sab, 0, MAX_PEERS * PEER_STRIDE);
    this.drops = new Float64Array(this.sab, MAX_PEERS * PEER_STRIDE * 8, DROP_REASONS.length);
    this.totals = new Float64Array(this.sab, (MAX_PEERS * PEER_STRIDE + DROP_REASONS.length) * 8, TOTALS);
    if (!sab) for (let s = 0; s < MAX_PEERS; s++) this.peers[s * PEER_STRIDE + P_RTT] = NaN;
  }

  /**
   * The other workers' regions (read only), when there are several: the pinging worker's timers
   * see a peer's traffic whichever worker received it (rxPackets, lastRx).
   */
  siblings: readonly DataplaneStats[] = [];

  peer(slot: number, field: number): number {
    return this.peers[slot * PEER_STRIDE + field]!;
  }

  /** Packets received from the peer in `slot`, by every worker. */
  rxPackets(slot: number): number {
    let v = this.peers[slot * PEER_STRIDE + P_RX_PKTS]!;
    for (const o of this.siblings) v += o.peers[slot * PEER_STRIDE + P_RX_PKTS]!;
    return v;
  }

  /** When (wall ms) any worker last received an authenticated packet from the peer in `slot`. */
  lastRx(slot: number): number {
    let v = this.peers[slot * PEER_STRIDE + P_LAST_RX]!;
    for (const o of this.siblings) v = Math.max(v, o.peers[slot * PEER_STRIDE + P_LAST_RX]!);
    return v;
  }

  resetPeer(slot: number): void {
    this.peers.fill(0, slot * PEER_STRIDE, (slot + 1) * PEER_STRIDE);
    this.peers[slot * PEER_STRIDE + P_RTT] = NaN;
  }

  /** The offload counters by name. */
  offloadCounts(): StatusOffloads {
    const t = this.totals;
    return {
      udpGso: t[T_GSO_ON] === 1,
      gsoMessages: t[T_GSO_MSGS]!,
      gsoDatagrams: t[T_GSO_DATAGRAMS]!,
      gsoRefused: t[T_GSO_REFUSED]!,
      groMessages: t[T_GRO_MSGS]!,
      groDatagrams: t[T_GRO_DATAGRAMS]!,
      tunSuperPackets: t[T_TUN_SUPER]!,
      tunCoalesced: t[T_TUN_COALESCED]!,
    };
  }

  dropCounts(): Record<DropReason, number> {
    const out = {} as Record<DropReason, number>;
    DROP_REASONS.forEach((r, i) => (out[r] = this.drops[i]!));
    return out;
  }
}

/** Totals that are states, not counts: the largest wins. */
const TOTAL_FLAGS = new Set([T_GSO_ON]);
/** How long a sum serves readers before it is taken again (status and metrics read many fields at once). */
const SUM_FRESH_MS = 1;

/**
 * Several workers' regions (one writer each) as one, for status, metrics and the control thread:
 * counts summed, last-seen times the newest, a peer's RTT from the worker that heard from it last
 * (the one its pongs reach). Taken again when read more than SUM_FRESH_MS after the last time.
 */
export class SummedStats extends DataplaneStats {
  private takenAt = -Infinity;

  constructor(readonly parts: readonly DataplaneStats[]) {
    super();
  }

  /** Sums the parts now unless that was done within SUM_FRESH_MS. */
  refresh(): this {
    const t = performance.now();
    if (t - this.takenAt < SUM_FRESH_MS) return this;
    this.takenAt = t;
    const parts = this.parts;
    const regions = parts.map((p) => p.peers);
    const out = this.peers;
    out.fill(0);
    // counts summed, times the newest (one pass per worker over the whole region)
    for (const src of regions) {
      for (let base = 0; base < out.length; base += PEER_STRIDE) {
        out[base + P_RX_BYTES]! += src[base + P_RX_BYTES]!;
        out[base + P_RX_PKTS]! += src[base + P_RX_PKTS]!;
        out[base + P_TX_BYTES]! += src[base + P_TX_BYTES]!;
        out[base + P_TX_PKTS]! += src[base + P_TX_PKTS]!;
        if (src[base + P_LAST_RX]! > out[base + P_LAST_RX]!) out[base + P_LAST_RX] = src[base + P_LAST_RX]!;
        if (src[base + P_LAST_TX]! > out[base + P_LAST_TX]!) out[base + P_LAST_TX] = src[base + P_LAST_TX]!;
        if (src[base + P_LAST_ROAM]! > out[base + P_LAST_ROAM]!) out[base + P_LAST_ROAM] = src[base + P_LAST_ROAM]!;
      }
    }
    // the RTT of the worker heard from last (its pongs arrive there)
    for (let base = 0; base < out.length; base += PEER_STRIDE) {
      let rtt = NaN;
      let newest = -Infinity;
      for (const src of regions) {
        const r = src[base + P_RTT]!;
        if (r === r && src[base + P_LAST_RX]! >= newest) {
          newest = src[base + P_LAST_RX]!;
          rtt = r;
        }
      }
      out[base + P_RTT] = rtt;
    }
    for (let i = 0; i < this.drops.length; i++) {
      let v = 0;
      for (const p of parts) v += p.drops[i]!;
      this.drops[i] = v;
    }
    for (let i = 0; i < this.totals.length; i++) {
      let v = 0;
      for (const p of parts) v = TOTAL_FLAGS.has(i) ? Math.max(v, p.totals[i]!) : v + p.totals[i]!;
      this.totals[i] = v;
    }
    return this;
  }

  override resetPeer(slot: number): void {
    for (const p of this.parts) p.resetPeer(slot);
    super.resetPeer(slot);
  }
}
