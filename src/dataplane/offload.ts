/**
 * TUN offloads (IFF_VNET_HDR): with TSO enabled, the kernel hands the TUN reader whole TCP
 * "super-packets" of up to 64 KiB plus a virtio-net header, instead of ~45 MTU-sized packets, and
 * leaves TCP/UDP checksums to "hardware" (us). That saves the kernel most of its per-packet TCP
 * work on the sending host. Here we do the hardware's job: cut a super-packet into MTU-sized
 * segments, each a valid IPv4/TCP packet, straight into batch slots.
 *
 * Checksums: an inner L4 checksum the kernel left partial stays partial across the tunnel (wire
 * flag FLAG_CSUM_PARTIAL, authenticated as part of the header); the receiving agent hands the
 * packet to its kernel marked NEEDS_CSUM, which is what a virtio NIC does. Packets that arrive
 * complete are handed over marked DATA_VALID: the AEAD already proved them intact.
 */
import { copyBytes, type PacketBatch } from './batch';
import { FLAG_CSUM_PARTIAL, HEADER_LEN } from './wire';

export const VNET_HDR_LEN = 10;
export const VNET_F_NEEDS_CSUM = 1;
export const VNET_F_DATA_VALID = 2;
export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_TCPV6 = 4;
export const GSO_ECN = 0x80;

const PROTO_TCP = 6;
/** The IPv6 fixed header. */
export const IPV6_HLEN = 40;
const PROTO_UDP = 17;

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** One's-complement sum of 16-bit words of buf[off, off+len). */
export function sum16(buf: Buffer, off: number, len: number, init = 0): number {
  let s = init;
  const end = off + (len & ~1);
  for (let i = off; i < end; i += 2) s += (buf[i]! << 8) | buf[i + 1]!;
  if (len & 1) s += buf[off + len - 1]! << 8;
  return fold(s);
}

export function ipv4HeaderChecksum(buf: Buffer, ip: number, ihl: number): void {
  buf[ip + 10] = 0;
  buf[ip + 11] = 0;
  const c = ~sum16(buf, ip, ihl) & 0xffff;
  buf[ip + 10] = c >>> 8;
  buf[ip + 11] = c & 0xff;
}

/** Pseudo-header sum (not complemented): what a CHECKSUM_PARTIAL packet carries in its L4 field. */
function pseudoSum(buf: Buffer, ip: number, proto: number, l4len: number): number {
  return fold(
    ((buf[ip + 12]! << 8) | buf[ip + 13]!) +
      ((buf[ip + 14]! << 8) | buf[ip + 15]!) +
      ((buf[ip + 16]! << 8) | buf[ip + 17]!) +
      ((buf[ip + 18]! << 8) | buf[ip + 19]!) +
      proto +
      l4len,
  );
}

/** IPv6 pseudo-header sum (not complemented) for an upper-layer packet of l4len bytes. */
function pseudoSum6(buf: Buffer, ip: number, proto: number, l4len: number): number {
  let s = proto + (l4len >>> 16) + (l4len & 0xffff);
  for (let i = ip + 8; i < ip + 40; i += 2) s += (buf[i]! << 8) | buf[i + 1]!;
  return fold(s);
}

/** Offset of the checksum field inside the L4 header, or -1 for protocols we do not offload. */
export function l4ChecksumOffset(proto: number): number {
  return proto === PROTO_TCP ? 16 : proto === PROTO_UDP ? 6 : -1;
}

/** Offset of the L4 header in the IP packet at `pkt`: IPv4's IHL, or IPv6's fixed header (no extension headers offloaded). */
export function l4Start(buf: Buffer, pkt: number): number {
  return buf[pkt]! >> 4 === 6 ? IPV6_HLEN : (buf[pkt]! & 15) * 4;
}

/** The L4 protocol of the IP packet at `pkt` (IPv4 protocol, IPv6 next header). */
export function l4Proto(buf: Buffer, pkt: number): number {
  return buf[pkt]! >> 4 === 6 ? buf[pkt + 6]! : buf[pkt + 9]!;
}

/** Completes a partial L4 checksum in place (the fallback when a packet cannot stay partial). */
export function completeChecksum(buf: Buffer, pkt: number, len: number, csumStart: number, csumOffset: number): void {
  const at = pkt + csumStart + csumOffset;
  // The field holds the pseudo-header sum; summing the whole L4 segment over it gives the total.
  const c = ~sum16(buf, pkt + csumStart, len - csumStart) & 0xffff;
  buf[at] = c >>> 8;
  buf[at + 1] = c & 0xff;
}

/** Why a TUN read could not be turned into packets (counted by the caller). */
export type SplitResult = number | 'malformed' | 'full';

/**
 * Turns one TUN read (virtio-net header + packet, at src[off, off+len)) into packets in batch
 * slots first.. (IP packet at slot + HEADER). Returns how many slots it filled, 'full' when they
 * would not fit in the slots left (nothing written), or 'malformed'.
 */
export function splitFromTun(src: Buffer, off: number, len: number, batch: PacketBatch, first: number): SplitResult {
  if (len < VNET_HDR_LEN + 20) return 'malformed';
  const vflags = src[off]!;
  const gso = src[off + 1]! & ~GSO_ECN;
  const gsoSize = src.readUInt16LE(off + 4);
  const csumStart = src.readUInt16LE(off + 6);
  const csumOffset = src.readUInt16LE(off + 8);
  const p = off + VNET_HDR_LEN;
  const plen = len - VNET_HDR_LEN;
  const buf = batch.buf;

  if (gso === GSO_NONE) {
    if (first >= batch.capacity) return 'full';
    if (plen > batch.maxPacket) return 'malformed';
    const dst = batch.offset(first) + HEADER_LEN;
    copyBytes(src, buf, dst, p, p + plen);
    batch.len[first] = plen;
    batch.flags[first] = 0;
    if (vflags & VNET_F_NEEDS_CSUM) {
      const v = src[p]! >> 4;
      if ((v === 4 || v === 6) && csumStart === l4Start(src, p) && csumOffset === l4ChecksumOffset(l4Proto(src, p))) {
        batch.flags[first] = FLAG_CSUM_PARTIAL;
      } else if (csumStart + csumOffset + 2 <= plen) {
        completeChecksum(buf, dst, plen, csumStart, csumOffset);
      } else return 'malformed';
    }
    return 1;
  }
  let l3: number;
  if (gso === GSO_TCPV6) {
    // the kernel puts no extension header in a TCPv6 super-packet: TCP follows the fixed header
    if (src[p]! >> 4 !== 6 || src[p + 6] !== PROTO_TCP) return 'malformed';
    l3 = IPV6_HLEN;
  } else {
    if (gso !== GSO_TCPV4 || src[p]! >> 4 !== 4 || src[p + 9] !== PROTO_TCP) return 'malformed';
    l3 = (src[p]! & 15) * 4;
    if (l3 < 20) return 'malformed';
  }
  return splitTcp(src, p, plen, l3, gso === GSO_TCPV6, gsoSize, batch, first);
}

/**
 * A TCP super-packet (IP header of l3 bytes, IPv4 or IPv6) cut into segments of at most gsoSize
 * payload bytes in slots first..: per segment the IP length (IPv4: also id and header checksum),
 * sequence number and flags, the TCP checksum field left holding the pseudo-header sum (partial).
 */
function splitTcp(src: Buffer, p: number, plen: number, l3: number, v6: boolean, gsoSize: number, batch: PacketBatch, first: number): SplitResult {
  if (plen < l3 + 20) return 'malformed';
  const thl = (src[p + l3 + 12]! >> 4) * 4;
  const hlen = l3 + thl;
  if (thl < 20 || hlen > plen || gsoSize === 0) return 'malformed';
  const buf = batch.buf;
  const payload = plen - hlen;
  const mss = Math.min(gsoSize, batch.maxPacket - hlen);
  const count = Math.max(1, Math.ceil(payload / mss));
  if (first + count > batch.capacity) return 'full';

  const id0 = src.readUInt16BE(p + 4);
  const seq0 = src.readUInt32BE(p + l3 + 4);
  const tcpFlags = src[p + l3 + 13]!;
  for (let k = 0; k < count; k++) {
    const slot = first + k;
    const dst = batch.offset(slot) + HEADER_LEN;
    const from = k * mss;
    const seg = Math.min(mss, payload - from);
    copyBytes(src, buf, dst, p, p + hlen);
    copyBytes(src, buf, dst + hlen, p + hlen + from, p + hlen + from + seg);
    const total = hlen + seg;
    if (v6) buf.writeUInt16BE(total - IPV6_HLEN, dst + 4);
    else {
      buf.writeUInt16BE(total, dst + 2);
      buf.writeUInt16BE((id0 + k) & 0xffff, dst + 4);
      ipv4HeaderChecksum(buf, dst, l3);
    }
    const t = dst + l3;
    buf.writeUInt32BE((seq0 + from) >>> 0, t + 4);
    let f = tcpFlags;
    if (k < count - 1) f &= ~0x09; // FIN and PSH only on the last segment
    if (k > 0) f &= ~0x80; // CWR only on the first
    buf[t + 13] = f;
    const ps = v6 ? pseudoSum6(buf, dst, PROTO_TCP, thl + seg) : pseudoSum(buf, dst, PROTO_TCP, thl + seg);
    buf[t + 16] = ps >>> 8;
    buf[t + 17] = ps & 0xff;
    batch.len[slot] = total;
    batch.flags[slot] = FLAG_CSUM_PARTIAL;
  }
  return count;
}

/**
 * Writes the virtio-net header for one decrypted packet at buf[pkt - 10, pkt), in the room the
 * wire header leaves. A partial checksum is passed on as NEEDS_CSUM, anything else as DATA_VALID.
 */
export function writeVnetHeader(buf: Buffer, pkt: number, partial: boolean): boolean {
  const h = pkt - VNET_HDR_LEN;
  buf.fill(0, h, pkt);
  if (!partial) {
    buf[h] = VNET_F_DATA_VALID;
    return true;
  }
  const ihl = l4Start(buf, pkt);
  const off = l4ChecksumOffset(l4Proto(buf, pkt));
  if (off < 0) return false;
  buf[h] = VNET_F_NEEDS_CSUM;
  buf.writeUInt16LE(ihl, h + 6);
  buf.writeUInt16LE(off, h + 8);
  return true;
}

/** Largest packet the kernel accepts in one TUN write with a GSO header. */
export const GRO_MAX = 65535;

/**
 * The IP header length of a packet that can start or join a coalesced run: 20 for IPv4/TCP
 * without options or fragmentation, 40 for IPv6/TCP without extension headers; 0 for anything else.
 */
function groL3(p: Buffer, off: number, len: number): number {
  const first = p[off]!;
  if (first === 0x45) {
    if (len < 40 || p[off + 9] !== PROTO_TCP || (p.readUInt16BE(off + 6) & 0x3fff) !== 0) return 0; // MF or fragment offset
    return 20;
  }
  if (first >> 4 === 6) return len >= IPV6_HLEN + 20 && p[off + 6] === PROTO_TCP ? IPV6_HLEN : 0;
  return 0;
}

/**
 * Receive-side coalescing (what a NIC's GRO does): consecutive in-order segments of one TCP flow
 * are joined into one super-packet, so the receiving kernel runs its TCP input once per ~64 KiB
 * instead of once per segment. The rules follow Linux's tcp_gro_receive: same addresses, ports,
 * header lengths, options and ack number; payload sizes equal except a shorter last one; only
 * ACK (and PSH on the last) flags; no IP options or fragments (IPv6: no extension headers, same
 * traffic class, flow label and hop limit). Anything else ends the run. IPv4 and IPv6 alike.
 *
 * The run lives in `buf` at `base` (room for the virtio-net header before it).
 */
export class TcpCoalescer {
  /** Bytes of the run (0 = none), its IP and IP+TCP header lengths, segment size and count. */
  len = 0;
  private l3 = 20;
  private hlen = 0;
  private seg = 0;
  private count = 0;
  private nextSeq = 0;
  private closed = false;
  private partial = false;

  constructor(
    readonly buf: Buffer,
    readonly base: number,
  ) {}

  get segments(): number {
    return this.count;
  }

  /** True when a packet can start a run (plain IPv4/TCP or IPv6/TCP with payload, no options/fragments/extension headers). */
  static eligible(p: Buffer, off: number, len: number): boolean {
    const l3 = groL3(p, off, len);
    if (l3 === 0) return false;
    const thl = (p[off + l3 + 12]! >> 4) * 4;
    const flags = p[off + l3 + 13]!;
    return thl >= 20 && l3 + thl < len && (flags & ~0x18) === 0; // ACK, PSH only
  }

  /** Starts a run with this packet (caller checked eligible); `partial` as on the wire. */
  start(p: Buffer, off: number, len: number, partial: boolean): void {
    this.partial = partial;
    copyBytes(p, this.buf, this.base, off, off + len);
    const l3 = (this.l3 = p[off] === 0x45 ? 20 : IPV6_HLEN);
    this.len = len;
    this.hlen = l3 + (p[off + l3 + 12]! >> 4) * 4;
    this.seg = len - this.hlen;
    this.count = 1;
    this.nextSeq = (p.readUInt32BE(off + l3 + 4) + this.seg) >>> 0;
    this.closed = (p[off + l3 + 13]! & 0x08) !== 0; // PSH ends a run
  }

  /** Appends the packet's payload when it continues the run; false leaves the run unchanged. */
  append(p: Buffer, off: number, len: number): boolean {
    if (this.len === 0 || this.closed) return false;
    const r = this.buf;
    const h = this.base;
    const hlen = this.hlen;
    const l3 = this.l3;
    const payload = len - hlen;
    if (payload <= 0 || payload > this.seg || this.len + payload > GRO_MAX) return false;
    if (groL3(p, off, len) !== l3) return false;
    if (l3 + (p[off + l3 + 12]! >> 4) * 4 !== hlen) return false;
    const t = l3; // TCP header offset
    if (p.readUInt32BE(off + t + 4) !== this.nextSeq) return false;
    const flags = p[off + t + 13]!;
    if ((flags & ~0x18) !== 0 || (flags & ~0x08) !== (r[h + t + 13]! & ~0x08)) return false;
    if (l3 === 20) {
      // addresses (12..20)
      for (let i = 12; i < 20; i++) if (p[off + i] !== r[h + i]) return false;
      if (p[off + 1] !== r[h + 1] || p[off + 8] !== r[h + 8]) return false; // TOS, TTL
    } else {
      // version, traffic class, flow label (0..4), next header and hop limit (6..8), addresses (8..40)
      for (let i = 0; i < 4; i++) if (p[off + i] !== r[h + i]) return false;
      for (let i = 6; i < IPV6_HLEN; i++) if (p[off + i] !== r[h + i]) return false;
    }
    // ports, ack, window and options must match
    for (let i = t; i < t + 4; i++) if (p[off + i] !== r[h + i]) return false;
    for (let i = t + 8; i < t + 12; i++) if (p[off + i] !== r[h + i]) return false;
    if (p[off + t + 14] !== r[h + t + 14] || p[off + t + 15] !== r[h + t + 15]) return false; // window
    for (let i = t + 20; i < hlen; i++) if (p[off + i] !== r[h + i]) return false;
    copyBytes(p, r, h + this.len, off + hlen, off + len);
    this.len += payload;
    this.count++;
    this.nextSeq = (this.nextSeq + payload) >>> 0;
    if (flags & 0x08) {
      r[h + t + 13] = r[h + t + 13]! | 0x08;
      this.closed = true;
    }
    if (payload < this.seg) this.closed = true; // a short segment is the last one
    return true;
  }

  /**
   * Finishes the run: fixes the IP header, writes the virtio-net header before it, and returns
   * the bytes to hand to the TUN from base - VNET_HDR_LEN (0 when there is no run).
   */
  finish(): number {
    if (this.len === 0) return 0;
    const r = this.buf;
    const h = this.base;
    const len = this.len;
    const l3 = this.l3;
    this.len = 0;
    if (this.count === 1) {
      writeVnetHeader(r, h, this.partial);
      return len + VNET_HDR_LEN;
    }
    let ps: number;
    if (l3 === 20) {
      r.writeUInt16BE(len, h + 2);
      ipv4HeaderChecksum(r, h, 20);
      ps = pseudoSum(r, h, PROTO_TCP, len - 20);
    } else {
      r.writeUInt16BE(len - IPV6_HLEN, h + 4);
      ps = pseudoSum6(r, h, PROTO_TCP, len - IPV6_HLEN);
    }
    r[h + l3 + 16] = ps >>> 8;
    r[h + l3 + 17] = ps & 0xff;
    const v = h - VNET_HDR_LEN;
    r.fill(0, v, h);
    r[v] = VNET_F_NEEDS_CSUM;
    r[v + 1] = l3 === 20 ? GSO_TCPV4 : GSO_TCPV6;
    r.writeUInt16LE(this.hlen, v + 2);
    r.writeUInt16LE(this.seg, v + 4);
    r.writeUInt16LE(l3, v + 6);
    r.writeUInt16LE(16, v + 8);
    return len + VNET_HDR_LEN;
  }
}

/**
 * MSS clamping: lowers the MSS option of a TCP SYN at `pkt` (an IPv4 packet of `len` bytes) to
 * `maxMss` (an IPv6 packet: to `maxMss` - 20, its header being 20 bytes longer). Used for peers
 * reached through a relay, whose path carries RELAY_OVERHEAD bytes more, so their TCP segments fit the underlay without IP fragmentation. With `partial` the checksum
 * covers only the pseudo-header (the kernel finishes it), so it is left alone; otherwise it is
 * updated incrementally (RFC 1624). Returns true when it changed the packet. Never throws.
 */
export function clampTcpMss(buf: Buffer, pkt: number, len: number, maxMss: number, partial: boolean): boolean {
  if (len < 20) return false;
  let ihl: number;
  if (buf[pkt]! >> 4 === 6) {
    // IPv6: TCP right after the fixed header (no extension headers), whose 20 more bytes come off the MSS
    if (buf[pkt + 6] !== PROTO_TCP) return false;
    ihl = IPV6_HLEN;
    maxMss -= IPV6_HLEN - 20;
  } else {
    if (buf[pkt]! >> 4 !== 4 || buf[pkt + 9] !== PROTO_TCP) return false;
    if ((buf.readUInt16BE(pkt + 6) & 0x3fff) !== 0) return false; // a fragment: no TCP header here
    ihl = (buf[pkt]! & 15) * 4;
  }
  const tcp = pkt + ihl;
  if (ihl < 20 || len < ihl + 20) return false;
  if ((buf[tcp + 13]! & 0x02) === 0) return false; // not a SYN
  const thl = (buf[tcp + 12]! >> 4) * 4;
  if (thl < 20 || ihl + thl > len) return false;
  let o = tcp + 20;
  const end = tcp + thl;
  while (o < end) {
    const kind = buf[o]!;
    if (kind === 0) return false; // end of options
    if (kind === 1) {
      o++;
      continue;
    }
    if (o + 1 >= end) return false;
    const olen = buf[o + 1]!;
    if (olen < 2 || o + olen > end) return false;
    if (kind === 2 && olen === 4) {
      const mss = buf.readUInt16BE(o + 2);
      if (mss <= maxMss) return false;
      buf.writeUInt16BE(maxMss, o + 2);
      if (!partial) {
        // HC' = ~(~HC + ~m + m')  (RFC 1624, eqn. 3)
        const hc = buf.readUInt16BE(tcp + 16);
        const sum = (~hc & 0xffff) + (~mss & 0xffff) + maxMss;
        buf.writeUInt16BE(~fold(sum) & 0xffff, tcp + 16);
      }
      return true;
    }
    o += olen;
  }
  return false;
}
