/**
 * Pure unit tests for src/dataplane/offload.ts (TUN offloads: virtio-net header, TSO splitting,
 * checksum completion, receive coalescing). No root, no TUN: packets are built by hand and every
 * checksum is checked against an independent RFC 1071 reference written below.
 */
import { describe, expect, it } from 'vitest';
import { PacketBatch, slotSizeFor } from '../../src/dataplane/batch';
import { FLAG_CSUM_PARTIAL, HEADER_LEN, RELAY_OVERHEAD, TAG_LEN } from '../../src/dataplane/wire';
import {
  completeChecksum,
  GRO_MAX,
  GSO_ECN,
  GSO_NONE,
  GSO_TCPV4,
  GSO_TCPV6,
  ipv4HeaderChecksum,
  l4ChecksumOffset,
  splitFromTun,
  sum16,
  TcpCoalescer,
  VNET_F_DATA_VALID,
  VNET_F_NEEDS_CSUM,
  VNET_HDR_LEN,
  writeVnetHeader,
} from '../../src/dataplane/offload';
import { rng } from '../helpers/rng';

// ---------------------------------------------------------------------------------------------
// Reference implementation (RFC 1071), deliberately different from offload.ts: BigInt sum over
// the concatenation of the parts, odd tail padded with a zero byte, carries folded at the end.
// ---------------------------------------------------------------------------------------------

/** One's-complement sum (folded, not complemented) of the concatenated parts. */
function refSum(...parts: Uint8Array[]): number {
  const all = Buffer.concat(parts);
  let s = 0n;
  for (let i = 0; i < all.length; i += 2) {
    const hi = all[i]!;
    const lo = i + 1 < all.length ? all[i + 1]! : 0;
    s += BigInt(hi * 256 + lo);
  }
  while (s > 0xffffn) s = (s & 0xffffn) + (s >> 16n);
  return Number(s);
}

/** The Internet checksum: complement of the one's-complement sum. */
function refChecksum(...parts: Uint8Array[]): number {
  return 0xffff - refSum(...parts);
}

function ihlOf(pkt: Buffer): number {
  return (pkt[0]! & 15) * 4;
}

/** IPv4 header checksum computed with the checksum field taken as zero. */
function refIpv4Checksum(pkt: Buffer): number {
  const h = Buffer.from(pkt.subarray(0, ihlOf(pkt)));
  h[10] = 0;
  h[11] = 0;
  return refChecksum(h);
}

/** IPv4 pseudo-header: source, destination, zero, protocol, L4 length. */
function pseudoHeader(pkt: Buffer, proto: number, l4len: number): Buffer {
  const ph = Buffer.alloc(12);
  pkt.copy(ph, 0, 12, 20);
  ph[9] = proto;
  ph.writeUInt16BE(l4len, 10);
  return ph;
}

/** What a CHECKSUM_PARTIAL packet carries in its L4 checksum field: the folded pseudo-header sum. */
function refPseudoSum(pkt: Buffer, proto: number): number {
  return refSum(pseudoHeader(pkt, proto, pkt.length - ihlOf(pkt)));
}

/** Full TCP/UDP checksum of an IPv4 packet (the field at `field` inside L4 taken as zero). */
function refL4Checksum(pkt: Buffer, proto: number, field: number): number {
  const ihl = ihlOf(pkt);
  const l4 = Buffer.from(pkt.subarray(ihl));
  l4[field] = 0;
  l4[field + 1] = 0;
  return refChecksum(pseudoHeader(pkt, proto, l4.length), l4);
}

const refTcpChecksum = (pkt: Buffer) => refL4Checksum(pkt, 6, 16);
const refUdpChecksum = (pkt: Buffer) => refL4Checksum(pkt, 17, 6);

/** A receiver's check: the sum over pseudo-header and segment (field included) is 0xffff. */
function tcpVerifies(pkt: Buffer): boolean {
  const ihl = ihlOf(pkt);
  return refSum(pseudoHeader(pkt, 6, pkt.length - ihl), pkt.subarray(ihl)) === 0xffff;
}

// ---------------------------------------------------------------------------------------------
// Deterministic random data
// ---------------------------------------------------------------------------------------------


function randomBytes(n: number, seed: number): Buffer {
  const r = rng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Packet builders
// ---------------------------------------------------------------------------------------------

const IP_A = 0x0a_63_00_01; // 10.99.0.1
const IP_B = 0x0a_63_00_02; // 10.99.0.2

const F_FIN = 0x01;
const F_SYN = 0x02;
const F_RST = 0x04;
const F_PSH = 0x08;
const F_ACK = 0x10;
const F_URG = 0x20;
const F_ECE = 0x40;
const F_CWR = 0x80;

interface IpSpec {
  src?: number;
  dst?: number;
  tos?: number;
  ttl?: number;
  id?: number;
  /** Raw flags + fragment offset word (default DF). */
  frag?: number;
  /** Bytes of IP options (NOPs), a multiple of 4. */
  ipOptions?: number;
  /** Overrides the version/IHL byte (after everything else is built). */
  verIhl?: number;
}

interface TcpSpec extends IpSpec {
  sport?: number;
  dport?: number;
  seq?: number;
  ack?: number;
  flags?: number;
  window?: number;
  /** Timestamp option (NOP NOP TS): TCP header of 32 bytes. null: no options (20 bytes). */
  ts?: [number, number] | null;
  payload: Buffer;
  /** TCP checksum field: complete, pseudo-header sum (CHECKSUM_PARTIAL) or zero. */
  csum?: 'full' | 'partial' | 'zero';
}

function ipHeader(spec: IpSpec, proto: number, l4len: number): Buffer {
  const ihl = 20 + (spec.ipOptions ?? 0);
  const h = Buffer.alloc(ihl, 0x01); // options: NOP
  h[0] = 0x40 | (ihl / 4);
  h[1] = spec.tos ?? 0;
  h.writeUInt16BE(ihl + l4len, 2);
  h.writeUInt16BE(spec.id ?? 0x1234, 4);
  h.writeUInt16BE(spec.frag ?? 0x4000, 6);
  h[8] = spec.ttl ?? 64;
  h[9] = proto;
  h.writeUInt16BE(0, 10);
  h.writeUInt32BE(spec.src ?? IP_A, 12);
  h.writeUInt32BE(spec.dst ?? IP_B, 16);
  h.writeUInt16BE(refIpv4Checksum(h), 10);
  return h;
}

function tcpPacket(spec: TcpSpec): Buffer {
  const ts = spec.ts === undefined ? null : spec.ts;
  const thl = ts ? 32 : 20;
  const t = Buffer.alloc(thl);
  t.writeUInt16BE(spec.sport ?? 40000, 0);
  t.writeUInt16BE(spec.dport ?? 5201, 2);
  t.writeUInt32BE((spec.seq ?? 1000) >>> 0, 4);
  t.writeUInt32BE((spec.ack ?? 0x55667788) >>> 0, 8);
  t[12] = (thl / 4) << 4;
  t[13] = spec.flags ?? F_ACK;
  t.writeUInt16BE(spec.window ?? 502, 14);
  if (ts) {
    t[20] = 1;
    t[21] = 1;
    t[22] = 8;
    t[23] = 10;
    t.writeUInt32BE(ts[0] >>> 0, 24);
    t.writeUInt32BE(ts[1] >>> 0, 28);
  }
  const pkt = Buffer.concat([ipHeader(spec, 6, thl + spec.payload.length), t, spec.payload]);
  const ihl = ihlOf(pkt);
  const mode = spec.csum ?? 'full';
  const c = mode === 'full' ? refTcpChecksum(pkt) : mode === 'partial' ? refPseudoSum(pkt, 6) : 0;
  pkt.writeUInt16BE(c, ihl + 16);
  if (spec.verIhl !== undefined) pkt[0] = spec.verIhl;
  return pkt;
}

function udpPacket(spec: IpSpec & { payload: Buffer; csum?: 'full' | 'partial' | 'zero' }): Buffer {
  const u = Buffer.alloc(8);
  u.writeUInt16BE(53000, 0);
  u.writeUInt16BE(4789, 2);
  u.writeUInt16BE(8 + spec.payload.length, 4);
  const pkt = Buffer.concat([ipHeader(spec, 17, 8 + spec.payload.length), u, spec.payload]);
  const ihl = ihlOf(pkt);
  const mode = spec.csum ?? 'full';
  const c = mode === 'full' ? refUdpChecksum(pkt) : mode === 'partial' ? refPseudoSum(pkt, 17) : 0;
  pkt.writeUInt16BE(c, ihl + 6);
  return pkt;
}

function icmpEcho(payload: Buffer, csum: 'full' | 'zero'): Buffer {
  const m = Buffer.alloc(8);
  m[0] = 8; // echo request
  m.writeUInt16BE(0x4242, 4);
  m.writeUInt16BE(7, 6);
  const pkt = Buffer.concat([ipHeader({}, 1, 8 + payload.length), m, payload]);
  if (csum === 'full') pkt.writeUInt16BE(refChecksum(pkt.subarray(20)), 22);
  return pkt;
}

interface VnetSpec {
  flags?: number;
  gso?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

function vnetHdr(v: VnetSpec): Buffer {
  const h = Buffer.alloc(VNET_HDR_LEN);
  h[0] = v.flags ?? 0;
  h[1] = v.gso ?? GSO_NONE;
  h.writeUInt16LE(v.hdrLen ?? 0, 2);
  h.writeUInt16LE(v.gsoSize ?? 0, 4);
  h.writeUInt16LE(v.csumStart ?? 0, 6);
  h.writeUInt16LE(v.csumOffset ?? 0, 8);
  return h;
}

/** A TUN read (virtio-net header + packet) inside a larger buffer, at a non-zero offset. */
function tunRead(v: VnetSpec, pkt: Buffer, lead = 7): { src: Buffer; off: number; len: number } {
  const src = Buffer.concat([Buffer.alloc(lead, 0xa5), vnetHdr(v), pkt, Buffer.alloc(13, 0x5a)]);
  return { src, off: lead, len: VNET_HDR_LEN + pkt.length };
}

const SLOT = slotSizeFor(1420);

function newBatch(capacity: number): PacketBatch {
  const b = new PacketBatch(Buffer.alloc(SLOT * capacity, 0xee), SLOT, capacity);
  b.len.fill(-7);
  b.flags.fill(0xcc);
  return b;
}

function slotPacket(b: PacketBatch, i: number): Buffer {
  const at = b.offset(i) + HEADER_LEN;
  return b.buf.subarray(at, at + b.len[i]!);
}

/** Every byte of slot i outside [HEADER, HEADER + used) still holds the 0xee fill. */
function slotUntouchedOutside(b: PacketBatch, i: number, used: number): boolean {
  const s = b.buf.subarray(b.offset(i), b.offset(i) + SLOT);
  for (let k = 0; k < SLOT; k++) {
    if (k >= HEADER_LEN && k < HEADER_LEN + used) continue;
    if (s[k] !== 0xee) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------

describe('reference checksum (sanity of the test oracle)', () => {
  it('matches the RFC 1071 worked example and a known IPv4 header', () => {
    // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    expect(refSum(Buffer.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]))).toBe(0xddf2);
    expect(refChecksum(Buffer.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]))).toBe(0x220d);
    const h = Buffer.from('450000730000400040110000c0a80001c0a800c7', 'hex');
    expect(refIpv4Checksum(h)).toBe(0xb861);
    expect(refSum(Buffer.from([0xab]))).toBe(0xab00); // odd tail is the high byte
  });
});

describe('sum16 / ipv4HeaderChecksum against the reference', () => {
  const lengths = [0, 1, 2, 3, 4, 5, 19, 20, 21, 39, 40, 41, 255, 256, 1367, 1368, 1499, 1500, 9001, 65535];

  it.each(lengths)('sum16 over %d random bytes at odd and even offsets, with and without init', (len) => {
    const data = randomBytes(len + 11, 1000 + len);
    for (const off of [0, 1, 4, 7]) {
      const slice = data.subarray(off, off + len);
      const want = refSum(slice);
      expect(sum16(data, off, len)).toBe(want);
      for (const init of [1, 0x8001, 0xffff]) {
        const withInit = refSum(Buffer.from([init >> 8, init & 0xff]), slice); // init first: keeps alignment
        expect(sum16(data, off, len, init)).toBe(withInit);
      }
    }
  });

  it('sum16 handles the largest sums without overflow (64 KiB of 0xff, init 0xffff)', () => {
    const ones = Buffer.alloc(65535, 0xff);
    expect(sum16(ones, 0, 65535, 0xffff)).toBe(refSum(Buffer.from([0xff, 0xff]), ones));
    expect(sum16(ones, 0, 65535, 0xffff)).toBe(0xff00); // the odd tail 0xff counts as 0xff00
    expect(sum16(ones, 0, 65534, 0xffff)).toBe(0xffff);
    expect(sum16(ones, 1, 65534, 0xfffe)).toBe(0xfffe); // 0xffff is one's-complement zero
    expect(sum16(Buffer.alloc(100), 0, 100)).toBe(0);
    expect(sum16(Buffer.from([0x12, 0x34, 0x56]), 0, 3)).toBe(0x1234 + 0x5600);
  });

  it.each([20, 24, 40, 60])('ipv4HeaderChecksum on random %d-byte headers', (ihl) => {
    for (let seed = 0; seed < 50; seed++) {
      const buf = randomBytes(ihl + 30, seed * 7 + ihl);
      const at = 13;
      buf[at] = 0x40 | (ihl / 4);
      const before = Buffer.from(buf);
      const want = refIpv4Checksum(buf.subarray(at, at + ihl));
      ipv4HeaderChecksum(buf, at, ihl);
      expect(buf.readUInt16BE(at + 10)).toBe(want);
      // Nothing else changed, and the header now verifies.
      expect(buf.subarray(0, at + 10)).toEqual(before.subarray(0, at + 10));
      expect(buf.subarray(at + 12)).toEqual(before.subarray(at + 12));
      expect(refSum(buf.subarray(at, at + ihl))).toBe(0xffff);
    }
  });
});

describe('completeChecksum', () => {
  it('turns a partial TCP checksum into the full one', () => {
    const cases: [number, [number, number] | null][] = [
      [0, null],
      [1, null],
      [1367, [1, 2]],
      [1368, [0xdeadbeef, 0x01020304]],
    ];
    for (const [len, ts] of cases) {
      const pkt = tcpPacket({ payload: randomBytes(len, len + 3), ts, csum: 'partial' });
      const want = refTcpChecksum(pkt);
      const buf = Buffer.concat([Buffer.alloc(5, 0x77), pkt]);
      completeChecksum(buf, 5, pkt.length, 20, 16);
      expect(buf.readUInt16BE(5 + 36)).toBe(want);
      expect(tcpVerifies(buf.subarray(5))).toBe(true);
    }
  });

  it('turns a partial UDP checksum into the full one', () => {
    const pkt = udpPacket({ payload: randomBytes(333, 9), csum: 'partial' });
    const want = refUdpChecksum(pkt);
    completeChecksum(pkt, 0, pkt.length, 20, 6);
    expect(pkt.readUInt16BE(26)).toBe(want);
    expect(want).not.toBe(0);
  });
});

describe('splitFromTun, gso NONE', () => {
  it('copies a plain packet to the slot at HEADER with its length and no flags', () => {
    const pkt = tcpPacket({ payload: randomBytes(700, 1) });
    const { src, off, len } = tunRead({}, pkt);
    const b = newBatch(8);
    expect(splitFromTun(src, off, len, b, 3)).toBe(1);
    expect(b.len[3]).toBe(pkt.length);
    expect(b.flags[3]).toBe(0);
    expect(slotPacket(b, 3)).toEqual(pkt);
    expect(slotUntouchedOutside(b, 3, pkt.length)).toBe(true);
    for (const i of [0, 1, 2, 4, 5, 6, 7]) {
      expect(slotUntouchedOutside(b, i, 0)).toBe(true);
      expect(b.len[i]).toBe(-7);
      expect(b.flags[i]).toBe(0xcc);
    }
  });

  it('treats DATA_VALID like a plain packet', () => {
    const pkt = udpPacket({ payload: randomBytes(100, 2) });
    const { src, off, len } = tunRead({ flags: VNET_F_DATA_VALID }, pkt);
    const b = newBatch(2);
    expect(splitFromTun(src, off, len, b, 0)).toBe(1);
    expect(b.flags[0]).toBe(0);
    expect(slotPacket(b, 0)).toEqual(pkt);
  });

  it('accepts exactly the smallest read (header + 20 bytes) and the largest packet a slot holds', () => {
    const b = newBatch(2);
    const tiny = ipHeader({}, 6, 0);
    const r1 = tunRead({}, tiny);
    expect(r1.len).toBe(VNET_HDR_LEN + 20);
    expect(splitFromTun(r1.src, r1.off, r1.len, b, 0)).toBe(1);
    expect(b.len[0]).toBe(20);
    expect(slotPacket(b, 0)).toEqual(tiny);

    // The slot keeps RELAY_OVERHEAD spare after the tag, so a packet can be wrapped for a relay hop
    // in place; the largest packet is still more than the MTU.
    expect(b.maxPacket).toBe(1466);
    expect(b.maxPacket).toBeGreaterThanOrEqual(1420);
    expect(HEADER_LEN + b.maxPacket + TAG_LEN + RELAY_OVERHEAD).toBeLessThanOrEqual(SLOT);
    const big = tcpPacket({ payload: randomBytes(b.maxPacket - 40, 3) });
    const r2 = tunRead({}, big);
    expect(splitFromTun(r2.src, r2.off, r2.len, b, 1)).toBe(1);
    expect(b.len[1]).toBe(b.maxPacket);
    expect(slotPacket(b, 1)).toEqual(big);
  });

  it('keeps a NEEDS_CSUM TCP packet (csum_start = ihl, offset 16) partial and unchanged', () => {
    const pkt = tcpPacket({ payload: randomBytes(1000, 4), ts: [5, 6], csum: 'partial' });
    const { src, off, len } = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 16 }, pkt);
    const b = newBatch(4);
    expect(splitFromTun(src, off, len, b, 2)).toBe(1);
    expect(b.flags[2]).toBe(FLAG_CSUM_PARTIAL);
    expect(b.len[2]).toBe(pkt.length);
    expect(slotPacket(b, 2)).toEqual(pkt);
    expect(slotPacket(b, 2).readUInt16BE(36)).toBe(refPseudoSum(pkt, 6));
  });

  it('keeps a NEEDS_CSUM UDP packet (csum_start = ihl, offset 6) partial and unchanged', () => {
    const pkt = udpPacket({ payload: randomBytes(1200, 5), csum: 'partial' });
    const { src, off, len } = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 6 }, pkt);
    const b = newBatch(4);
    expect(splitFromTun(src, off, len, b, 0)).toBe(1);
    expect(b.flags[0]).toBe(FLAG_CSUM_PARTIAL);
    expect(slotPacket(b, 0)).toEqual(pkt);
  });

  it('keeps a NEEDS_CSUM TCP packet with IP options (csum_start 24) partial', () => {
    const pkt = tcpPacket({ payload: randomBytes(500, 6), ipOptions: 4, csum: 'partial' });
    expect(ihlOf(pkt)).toBe(24);
    const { src, off, len } = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart: 24, csumOffset: 16 }, pkt);
    const b = newBatch(1);
    expect(splitFromTun(src, off, len, b, 0)).toBe(1);
    expect(b.flags[0]).toBe(FLAG_CSUM_PARTIAL);
    expect(slotPacket(b, 0)).toEqual(pkt);
  });

  it('completes in place a checksum at an unusual csum_start (TCP inside VXLAN inside UDP)', () => {
    // outer IPv4 (20) + UDP (8, checksum 0) + VXLAN (8) + Ethernet (14) + inner IPv4 (20) + TCP.
    const inner = tcpPacket({ src: 0xc0a80101, dst: 0xc0a80102, payload: randomBytes(900, 7), ts: [9, 10], csum: 'partial' });
    const vx = Buffer.alloc(8 + 8 + 14);
    vx.writeUInt16BE(50000, 0);
    vx.writeUInt16BE(4789, 2);
    vx.writeUInt16BE(vx.length + inner.length, 4);
    vx[8] = 0x08;
    vx.writeUInt16BE(0x0800, 8 + 8 + 12); // ethertype IPv4
    const pkt = Buffer.concat([ipHeader({}, 17, vx.length + inner.length), vx, inner]);
    const csumStart = 20 + vx.length + 20;
    expect(csumStart).toBe(70);
    const { src, off, len } = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart, csumOffset: 16 }, pkt);
    const b = newBatch(2);
    expect(splitFromTun(src, off, len, b, 1)).toBe(1);
    expect(b.flags[1]).toBe(0);
    expect(b.len[1]).toBe(pkt.length);
    const out = slotPacket(b, 1);
    const want = refTcpChecksum(inner);
    expect(out.readUInt16BE(csumStart + 16)).toBe(want);
    // Everything else is byte for byte the input.
    const expected = Buffer.from(pkt);
    expected.writeUInt16BE(want, csumStart + 16);
    expect(out).toEqual(expected);
    expect(tcpVerifies(out.subarray(50))).toBe(true);
  });

  it('completes in place a NEEDS_CSUM ICMP packet (no pseudo-header)', () => {
    const full = icmpEcho(randomBytes(56, 8), 'full');
    const partial = icmpEcho(full.subarray(28), 'zero');
    const { src, off, len } = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 2 }, partial);
    const b = newBatch(1);
    expect(splitFromTun(src, off, len, b, 0)).toBe(1);
    expect(b.flags[0]).toBe(0);
    expect(slotPacket(b, 0)).toEqual(full);
  });

  it('completes a TCP packet whose csum_offset does not match its protocol', () => {
    // csum_start = ihl but the offset is UDP's: not the fast path, completed where the kernel asked
    // (the field's old contents are the seed, as NEEDS_CSUM defines).
    const pkt = tcpPacket({ payload: randomBytes(64, 9), csum: 'zero' });
    const { src, off, len } = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 6 }, pkt);
    const b = newBatch(1);
    expect(splitFromTun(src, off, len, b, 0)).toBe(1);
    expect(b.flags[0]).toBe(0);
    const want = refChecksum(pkt.subarray(20));
    expect(slotPacket(b, 0).readUInt16BE(26)).toBe(want);
    const expected = Buffer.from(pkt);
    expected.writeUInt16BE(want, 26);
    expect(slotPacket(b, 0).equals(expected)).toBe(true);
  });

  it("is 'malformed' when the checksum field lies outside the packet", () => {
    const pkt = icmpEcho(randomBytes(8, 10), 'zero'); // 36 bytes
    const b = newBatch(1);
    let r = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 15 }, pkt);
    expect(splitFromTun(r.src, r.off, r.len, b, 0)).toBe('malformed');
    r = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 14 }, pkt); // last two bytes: fine
    expect(splitFromTun(r.src, r.off, r.len, b, 0)).toBe(1);
  });

  it("is 'malformed' when too short or larger than a slot", () => {
    const b = newBatch(2);
    const pkt = ipHeader({}, 6, 0);
    for (const cut of [0, 1, VNET_HDR_LEN, VNET_HDR_LEN + 19]) {
      const r = tunRead({}, pkt);
      expect(splitFromTun(r.src, r.off, cut, b, 0)).toBe('malformed');
    }
    const big = tcpPacket({ payload: randomBytes(b.maxPacket - 39, 11) });
    const r = tunRead({}, big);
    expect(splitFromTun(r.src, r.off, r.len, b, 0)).toBe('malformed');
    expect(slotUntouchedOutside(b, 0, 0)).toBe(true);
    expect(b.len[0]).toBe(-7);
  });

  it("is 'full' when first >= capacity", () => {
    const b = newBatch(4);
    const r = tunRead({}, tcpPacket({ payload: randomBytes(10, 12) }));
    expect(splitFromTun(r.src, r.off, r.len, b, 4)).toBe('full');
    expect(splitFromTun(r.src, r.off, r.len, b, 5)).toBe('full');
    expect(splitFromTun(r.src, r.off, r.len, b, 3)).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------

interface SuperSpec {
  payloadLen: number;
  ts: [number, number] | null;
  flags: number;
  seq: number;
  id: number;
  seed: number;
}

function superPacket(s: SuperSpec): Buffer {
  return tcpPacket({
    payload: randomBytes(s.payloadLen, s.seed),
    ts: s.ts,
    flags: s.flags,
    seq: s.seq,
    id: s.id,
    tos: 0x02,
    ttl: 61,
    window: 0x1f2e,
    csum: 'partial',
  });
}

function tsoRead(sp: Buffer, gsoSize: number, gso = GSO_TCPV4) {
  const hlen = 20 + (sp[32]! >> 4) * 4;
  return tunRead({ flags: VNET_F_NEEDS_CSUM, gso, hdrLen: hlen, gsoSize, csumStart: 20, csumOffset: 16 }, sp);
}

/** Checks slot first+k against what segment k of super-packet sp must be. */
function checkSegment(b: PacketBatch, slot: number, sp: Buffer, k: number, count: number, mss: number): void {
  const hlen = 20 + (sp[32]! >> 4) * 4;
  const payload = sp.length - hlen;
  const from = k * mss;
  const segLen = Math.min(mss, payload - from);
  const seg = slotPacket(b, slot);
  expect(b.len[slot]).toBe(hlen + segLen);
  expect(b.flags[slot]).toBe(FLAG_CSUM_PARTIAL);
  // payload slice
  expect(seg.subarray(hlen).equals(sp.subarray(hlen + from, hlen + from + segLen))).toBe(true);
  // IPv4
  expect(seg.readUInt16BE(2)).toBe(hlen + segLen);
  expect(seg.readUInt16BE(4)).toBe((sp.readUInt16BE(4) + k) & 0xffff);
  expect(seg.readUInt16BE(10)).toBe(refIpv4Checksum(seg));
  expect(refSum(seg.subarray(0, 20))).toBe(0xffff);
  // TCP
  expect(seg.readUInt32BE(24)).toBe((sp.readUInt32BE(24) + from) % 2 ** 32);
  let f = sp[33]!;
  if (k < count - 1) f &= ~(F_FIN | F_PSH);
  if (k > 0) f &= ~F_CWR;
  expect(seg[33]).toBe(f);
  expect(seg.readUInt16BE(36)).toBe(refPseudoSum(seg, 6));
  // Every other header byte is the super-packet's.
  const same = (a: number, z: number) => expect(seg.subarray(a, z).equals(sp.subarray(a, z))).toBe(true);
  same(0, 2);
  same(6, 10);
  same(12, 24);
  same(28, 33);
  same(34, 36);
  same(38, hlen);
  // Completing the partial checksum gives the full reference checksum.
  const done = Buffer.from(seg);
  completeChecksum(done, 0, done.length, 20, 16);
  expect(done.readUInt16BE(36)).toBe(refTcpChecksum(seg));
  expect(tcpVerifies(done)).toBe(true);
}

describe('splitFromTun, GSO_TCPV4', () => {
  it('fits the largest super-packet at the smallest IPv4 MSS (536) into a 128-slot outbound batch', () => {
    // The worker sizes its outbound batch for this case (MAX_TSO_SEGMENTS in worker.ts).
    const sp = superPacket({ payloadLen: 65535 - 52, ts: [1, 2], flags: F_ACK, seq: 1, id: 1, seed: 536 });
    const { src, off, len } = tsoRead(sp, 536);
    const count = Math.ceil((65535 - 52) / 536);
    expect(count).toBeGreaterThan(64);
    expect(count).toBeLessThanOrEqual(128);
    expect(splitFromTun(src, off, len, newBatch(64), 0)).toBe('full');
    const b = newBatch(128);
    expect(splitFromTun(src, off, len, b, 0)).toBe(count);
    for (const k of [0, 1, count - 1]) checkSegment(b, k, sp, k, count, 536);
  });

  const cases = [
    { name: 'thl 32 (timestamps), gso 1368', ts: [0x01020304, 0xa0b0c0d0] as [number, number], gsoSize: 1368, payloadLen: 64000, ecn: false },
    { name: 'thl 32, gso 1368, GSO_ECN bit', ts: [7, 8] as [number, number], gsoSize: 1368, payloadLen: 64000, ecn: true },
    { name: 'thl 20, gso 1380', ts: null, gsoSize: 1380, payloadLen: 64000, ecn: false },
    { name: 'thl 32, exact multiple of gso', ts: [1, 2] as [number, number], gsoSize: 1368, payloadLen: 1368 * 5, ecn: false },
    { name: 'thl 32, one byte over a multiple', ts: [1, 2] as [number, number], gsoSize: 1368, payloadLen: 1368 * 5 + 1, ecn: false },
    { name: 'thl 32, payload below gso', ts: [1, 2] as [number, number], gsoSize: 1368, payloadLen: 1000, ecn: false },
  ];

  it.each(cases)('cuts $name into MTU-sized segments', ({ ts, gsoSize, payloadLen, ecn }) => {
    const flags = F_CWR | F_ECE | F_ACK | F_PSH | F_FIN;
    const sp = superPacket({ payloadLen, ts, flags, seq: 0xffff_0000, id: 0xffe0, seed: payloadLen + gsoSize });
    const { src, off, len } = tsoRead(sp, gsoSize, ecn ? GSO_TCPV4 | GSO_ECN : GSO_TCPV4);
    const count = Math.ceil(payloadLen / gsoSize);
    const b = newBatch(64);
    const first = 5;
    expect(splitFromTun(src, off, len, b, first)).toBe(count);
    for (let k = 0; k < count; k++) checkSegment(b, first + k, sp, k, count, gsoSize);
    // Slots around the segments untouched.
    for (let i = 0; i < 64; i++) {
      if (i >= first && i < first + count) {
        expect(slotUntouchedOutside(b, i, b.len[i]!)).toBe(true);
      } else {
        expect(slotUntouchedOutside(b, i, 0)).toBe(true);
        expect(b.len[i]).toBe(-7);
        expect(b.flags[i]).toBe(0xcc);
      }
    }
  });

  it('gives 47 segments for 64000 bytes at 1368, with the flags and sequence numbers spelled out', () => {
    const sp = superPacket({ payloadLen: 64000, ts: [3, 4], flags: F_CWR | F_ACK | F_PSH | F_FIN, seq: 0xffff_ff00, id: 0xfffe, seed: 42 });
    const { src, off, len } = tsoRead(sp, 1368);
    const b = newBatch(64);
    expect(splitFromTun(src, off, len, b, 0)).toBe(47);
    expect(slotPacket(b, 0)[33]).toBe(F_CWR | F_ACK);
    expect(slotPacket(b, 1)[33]).toBe(F_ACK);
    expect(slotPacket(b, 45)[33]).toBe(F_ACK);
    expect(slotPacket(b, 46)[33]).toBe(F_ACK | F_PSH | F_FIN);
    expect(b.len[0]).toBe(52 + 1368);
    expect(b.len[46]).toBe(52 + (64000 - 46 * 1368));
    expect(b.len[46]).toBe(52 + 1072);
    expect(slotPacket(b, 0).readUInt32BE(24)).toBe(0xffff_ff00);
    expect(slotPacket(b, 1).readUInt32BE(24)).toBe((0xffff_ff00 + 1368) % 2 ** 32); // wrapped
    expect(slotPacket(b, 1).readUInt32BE(24)).toBe(1368 - 256);
    expect(slotPacket(b, 0).readUInt16BE(4)).toBe(0xfffe);
    expect(slotPacket(b, 1).readUInt16BE(4)).toBe(0xffff);
    expect(slotPacket(b, 2).readUInt16BE(4)).toBe(0);
    expect(b.len[47]).toBe(-7);
  });

  it("returns 'full' and writes nothing when the segments do not fit the slots left", () => {
    const sp = superPacket({ payloadLen: 64000, ts: [3, 4], flags: F_ACK | F_PSH, seq: 1, id: 1, seed: 43 });
    const { src, off, len } = tsoRead(sp, 1368);
    const b = newBatch(64);
    const before = Buffer.from(b.buf);
    expect(splitFromTun(src, off, len, b, 64 - 46)).toBe('full'); // 46 slots left, 47 needed
    expect(b.buf.equals(before)).toBe(true);
    expect(Array.from(b.len).every((x) => x === -7)).toBe(true);
    expect(Array.from(b.flags).every((x) => x === 0xcc)).toBe(true);
    expect(splitFromTun(src, off, len, newBatch(46), 0)).toBe('full');
    expect(splitFromTun(src, off, len, b, 64 - 47)).toBe(47); // exactly fits
    expect(b.len[63]).toBe(52 + 1072);
  });

  it('clamps gso_size larger than the slot room to maxPacket - headers', () => {
    const sp = superPacket({ payloadLen: 10000, ts: [3, 4], flags: F_ACK | F_PSH, seq: 77, id: 9, seed: 44 });
    const { src, off, len } = tsoRead(sp, 1448);
    const b = newBatch(16);
    const mss = b.maxPacket - 52;
    expect(mss).toBe(1414);
    expect(mss).toBeLessThan(1448); // the gso_size asked for does not fit: it is clamped
    const count = Math.ceil(10000 / mss);
    expect(count).toBe(8);
    expect(splitFromTun(src, off, len, b, 0)).toBe(count);
    expect(b.len[0]).toBe(b.maxPacket);
    for (let k = 0; k < count; k++) checkSegment(b, k, sp, k, count, mss);
    expect(b.len[7]).toBe(52 + 10000 - 7 * 1414);
  });

  it('keeps a segment with IP options (ihl 24) valid', () => {
    const sp = tcpPacket({ payload: randomBytes(5000, 45), ipOptions: 4, ts: [1, 1], flags: F_ACK, csum: 'partial' });
    const { src, off, len } = tunRead(
      { flags: VNET_F_NEEDS_CSUM, gso: GSO_TCPV4, hdrLen: 56, gsoSize: 1300, csumStart: 24, csumOffset: 16 },
      sp,
    );
    const b = newBatch(8);
    expect(splitFromTun(src, off, len, b, 0)).toBe(4);
    for (let k = 0; k < 4; k++) {
      const seg = slotPacket(b, k);
      expect(b.len[k]).toBe(56 + Math.min(1300, 5000 - k * 1300));
      expect(seg.readUInt16BE(10)).toBe(refIpv4Checksum(seg));
      expect(seg.subarray(20, 24).equals(sp.subarray(20, 24))).toBe(true);
      expect(seg.readUInt32BE(28)).toBe(1000 + k * 1300);
      expect(seg.readUInt16BE(40)).toBe(refPseudoSum(seg, 6));
      expect(seg.subarray(56).equals(sp.subarray(56 + k * 1300, 56 + k * 1300 + seg.length - 56))).toBe(true);
      const done = Buffer.from(seg);
      completeChecksum(done, 0, done.length, 24, 16);
      expect(done.readUInt16BE(40)).toBe(refTcpChecksum(seg));
    }
  });

  it("is 'malformed' for non-TCPv4 GSO, IPv6, non-TCP protocols and broken headers", () => {
    const sp = superPacket({ payloadLen: 3000, ts: [3, 4], flags: F_ACK, seq: 1, id: 1, seed: 46 });
    const b = newBatch(8);
    const bad = (v: VnetSpec, pkt: Buffer) => {
      const r = tunRead({ flags: VNET_F_NEEDS_CSUM, gso: GSO_TCPV4, hdrLen: 52, gsoSize: 1368, csumStart: 20, csumOffset: 16, ...v }, pkt);
      return splitFromTun(r.src, r.off, r.len, b, 0);
    };
    expect(bad({}, sp)).toBe(3); // the control: this one is fine
    expect(bad({ gso: 3 }, sp)).toBe('malformed'); // GSO_UDP
    expect(bad({ gso: 4 }, sp)).toBe('malformed'); // GSO_TCPV6
    expect(bad({ gso: 4 | GSO_ECN }, sp)).toBe('malformed');
    expect(bad({ gso: 5 }, sp)).toBe('malformed'); // GSO_UDP_L4
    expect(bad({ gsoSize: 0 }, sp)).toBe('malformed');
    const v6 = Buffer.from(sp);
    v6[0] = 0x60;
    expect(bad({}, v6)).toBe('malformed');
    const udp = udpPacket({ payload: randomBytes(3000, 47), csum: 'partial' });
    expect(bad({ csumOffset: 6 }, udp)).toBe('malformed');
    const ihl4 = Buffer.from(sp);
    ihl4[0] = 0x44; // IHL 16 bytes
    expect(bad({}, ihl4)).toBe('malformed');
    const doff4 = Buffer.from(sp);
    doff4[32] = 4 << 4; // TCP header 16 bytes
    expect(bad({}, doff4)).toBe('malformed');
    expect(bad({}, sp.subarray(0, 39))).toBe('malformed'); // TCP header cut
    const doff15 = Buffer.from(sp.subarray(0, 70));
    doff15[32] = 15 << 4; // 60-byte TCP header in a 70-byte packet
    expect(bad({}, doff15)).toBe('malformed');
    expect(b.len[0]).toBe(52 + 1368); // only the control wrote
    expect(b.len[3]).toBe(-7);
  });
});

// ---------------------------------------------------------------------------------------------

function newCoalescer(): TcpCoalescer {
  return new TcpCoalescer(Buffer.alloc(GRO_MAX + HEADER_LEN, 0x33), HEADER_LEN);
}

/** The bytes finish() asks the TUN to write. */
function written(c: TcpCoalescer, n: number): Buffer {
  return c.buf.subarray(c.base - VNET_HDR_LEN, c.base - VNET_HDR_LEN + n);
}

describe('split then coalesce: round trip', () => {
  const cases = [
    { name: '64000 bytes, thl 32, gso 1368', payloadLen: 64000, ts: [0x11111111, 0x22222222] as [number, number], gsoSize: 1368 },
    { name: '64000 bytes, thl 20, gso 1380', payloadLen: 64000, ts: null, gsoSize: 1380 },
    { name: 'exact multiple', payloadLen: 1368 * 10, ts: [5, 6] as [number, number], gsoSize: 1368 },
  ];

  it.each(cases)('rebuilds the original super-packet ($name)', ({ payloadLen, ts, gsoSize }) => {
    const sp = superPacket({ payloadLen, ts, flags: F_ACK | F_PSH, seq: 0xffff_f000, id: 0x4321, seed: payloadLen + 1 });
    const hlen = 20 + (ts ? 32 : 20);
    const read = tsoRead(sp, gsoSize);
    const b = newBatch(64);
    const count = splitFromTun(read.src, read.off, read.len, b, 0);
    expect(count).toBe(Math.ceil(payloadLen / gsoSize));
    const n = count as number;

    const c = newCoalescer();
    const at = (i: number) => b.offset(i) + HEADER_LEN;
    expect(TcpCoalescer.eligible(b.buf, at(0), b.len[0]!)).toBe(true);
    c.start(b.buf, at(0), b.len[0]!, b.flags[0] === FLAG_CSUM_PARTIAL);
    for (let i = 1; i < n; i++) expect(c.append(b.buf, at(i), b.len[i]!)).toBe(true);
    expect(c.segments).toBe(n);
    expect(c.len).toBe(sp.length);

    const out = c.finish();
    expect(out).toBe(sp.length + VNET_HDR_LEN);
    expect(c.len).toBe(0);
    const w = written(c, out);
    const v = w.subarray(0, VNET_HDR_LEN);
    expect(v[0]).toBe(VNET_F_NEEDS_CSUM);
    expect(v[1]).toBe(GSO_TCPV4);
    expect(v.readUInt16LE(2)).toBe(hlen);
    expect(v.readUInt16LE(4)).toBe(gsoSize);
    expect(v.readUInt16LE(6)).toBe(20);
    expect(v.readUInt16LE(8)).toBe(16);
    const pkt = w.subarray(VNET_HDR_LEN);
    expect(pkt.readUInt16BE(2)).toBe(sp.length);
    expect(pkt.readUInt16BE(10)).toBe(refIpv4Checksum(pkt));
    expect(pkt.readUInt16BE(36)).toBe(refPseudoSum(pkt, 6));
    expect(pkt.subarray(hlen).equals(sp.subarray(hlen))).toBe(true);
    // The whole write is the read the kernel gave us, byte for byte.
    expect(w.equals(read.src.subarray(read.off, read.off + read.len))).toBe(true);
    // And its checksum completes to the reference over the whole super-packet.
    const done = Buffer.from(pkt);
    completeChecksum(done, 0, done.length, 20, 16);
    expect(done.readUInt16BE(36)).toBe(refTcpChecksum(sp));
  });
});

// ---------------------------------------------------------------------------------------------

const FLOW_PAYLOAD = randomBytes(70000, 99);
const SEQ0 = 0x7000_0000;

/** Segment of a test flow: payload bytes [from, from+len) at seq SEQ0 + from, full checksums. */
function flowSeg(from: number, len: number, o: Partial<TcpSpec> = {}): Buffer {
  return tcpPacket({
    seq: SEQ0 + from,
    ts: [1000, 2000],
    payload: FLOW_PAYLOAD.subarray(from, from + len),
    ...o,
  });
}

/** Puts a packet inside a larger buffer at a non-zero offset, as in a batch slot. */
function inSlot(pkt: Buffer): [Buffer, number, number] {
  const b = Buffer.alloc(pkt.length + 40, 0x99);
  pkt.copy(b, HEADER_LEN);
  return [b, HEADER_LEN, pkt.length];
}

function snapshot(c: TcpCoalescer) {
  return { buf: Buffer.from(c.buf), len: c.len, segments: c.segments };
}

describe('TcpCoalescer', () => {
  const MSS = 1000;

  function started(first = flowSeg(0, MSS), partial = false): TcpCoalescer {
    const c = newCoalescer();
    expect(TcpCoalescer.eligible(...inSlot(first))).toBe(true);
    c.start(...inSlot(first), partial);
    return c;
  }

  /** The candidate is refused, the run is unchanged, and the proper next segment still fits. */
  function expectRefused(c: TcpCoalescer, candidate: Buffer, next = flowSeg(c.len - 52, MSS)): void {
    const before = snapshot(c);
    expect(c.append(...inSlot(candidate))).toBe(false);
    expect(c.len).toBe(before.len);
    expect(c.segments).toBe(before.segments);
    expect(c.buf.equals(before.buf)).toBe(true);
    expect(c.append(...inSlot(next))).toBe(true);
  }

  it('appends in-order segments of one flow', () => {
    const c = started();
    expect(c.append(...inSlot(flowSeg(1000, MSS)))).toBe(true);
    expect(c.append(...inSlot(flowSeg(2000, MSS)))).toBe(true);
    expect(c.append(...inSlot(flowSeg(3000, 400)))).toBe(true); // shorter: last
    expect(c.segments).toBe(4);
    expect(c.len).toBe(52 + 3400);
    expect(c.buf.subarray(HEADER_LEN + 52, HEADER_LEN + 52 + 3400).equals(FLOW_PAYLOAD.subarray(0, 3400))).toBe(true);
  });

  it.each([
    ['another source port', { sport: 40001 }],
    ['another destination port', { dport: 5202 }],
    ['another source address', { src: IP_A + 1 }],
    ['another destination address', { dst: IP_B + 1 }],
    ['another ack number', { ack: 0x55667789 }],
    ['another timestamp value', { ts: [1001, 2000] }],
    ['another timestamp echo', { ts: [1000, 2001] }],
    ['no timestamp option (other header length)', { ts: null }],
    ['another TOS', { tos: 4 }],
    ['another TTL', { ttl: 63 }],
    ['SYN', { flags: F_ACK | F_SYN }],
    ['FIN', { flags: F_ACK | F_FIN }],
    ['RST', { flags: F_ACK | F_RST }],
    ['URG', { flags: F_ACK | F_URG }],
    ['ECE', { flags: F_ACK | F_ECE }],
    ['CWR', { flags: F_ACK | F_CWR }],
    ['no ACK when the run has one', { flags: 0 }],
    ['MF (first fragment)', { frag: 0x2000 }],
    ['a fragment offset', { frag: 0x0010 }],
    ['IP options', { ipOptions: 4 }],
  ] as [string, Partial<TcpSpec>][])('refuses a segment with %s', (_name, o) => {
    const c = started();
    expect(c.append(...inSlot(flowSeg(1000, MSS)))).toBe(true);
    expectRefused(c, flowSeg(2000, MSS, o));
  });

  it('refuses a segment with another window (the run would carry a stale window)', () => {
    // tcp_gro_receive flushes on any difference in the flags word, which includes the window.
    const c = started();
    expectRefused(c, flowSeg(1000, MSS, { window: 503 }));
  });

  it('refuses a non-TCP packet and an IPv6 packet', () => {
    const c = started();
    const udp = udpPacket({ payload: FLOW_PAYLOAD.subarray(1000, 1000 + MSS + 24) });
    expect(udp.length).toBe(flowSeg(1000, MSS).length);
    expectRefused(c, udp);
    const v6 = flowSeg(1000, MSS);
    v6[0] = 0x60;
    expectRefused(c, v6);
  });

  it('refuses a sequence gap, an overlap and a retransmission', () => {
    const c = started();
    expectRefused(c, flowSeg(1001, MSS), flowSeg(1000, MSS));
    expectRefused(c, flowSeg(1999, MSS), flowSeg(2000, MSS));
    expectRefused(c, flowSeg(1000, MSS), flowSeg(3000, MSS));
    expect(c.segments).toBe(4);
  });

  it('refuses a payload larger than the first segment, and an empty one', () => {
    const c = started();
    expectRefused(c, flowSeg(1000, MSS + 1));
    expectRefused(c, flowSeg(2000, 0), flowSeg(2000, MSS));
  });

  it('closes the run after a PSH on the first segment', () => {
    const c = started(flowSeg(0, MSS, { flags: F_ACK | F_PSH }));
    const before = snapshot(c);
    expect(c.append(...inSlot(flowSeg(1000, MSS)))).toBe(false);
    expect(c.append(...inSlot(flowSeg(1000, MSS, { flags: F_ACK | F_PSH })))).toBe(false);
    expect(c.buf.equals(before.buf)).toBe(true);
    expect(c.segments).toBe(1);
  });

  it('takes a PSH segment as the last one and carries PSH in the run', () => {
    const c = started();
    expect(c.append(...inSlot(flowSeg(1000, MSS, { flags: F_ACK | F_PSH })))).toBe(true);
    expect(c.buf[HEADER_LEN + 33]).toBe(F_ACK | F_PSH);
    const before = snapshot(c);
    expect(c.append(...inSlot(flowSeg(2000, MSS)))).toBe(false);
    expect(c.buf.equals(before.buf)).toBe(true);
    expect(c.segments).toBe(2);
  });

  it('closes the run after a shorter segment', () => {
    const c = started();
    expect(c.append(...inSlot(flowSeg(1000, MSS - 1)))).toBe(true);
    const before = snapshot(c);
    expect(c.append(...inSlot(flowSeg(1999, MSS)))).toBe(false);
    expect(c.append(...inSlot(flowSeg(1999, 1)))).toBe(false);
    expect(c.buf.equals(before.buf)).toBe(true);
    expect(c.len).toBe(52 + 2 * MSS - 1);
  });

  it('stops at 65535 bytes', () => {
    const mss = 1368;
    const c = started(flowSeg(0, mss));
    for (let k = 1; k < 47; k++) expect(c.append(...inSlot(flowSeg(k * mss, mss)))).toBe(true);
    expect(c.len).toBe(52 + 47 * mss); // 64348
    const room = GRO_MAX - c.len; // 1187
    expect(room).toBe(1187);
    const before = snapshot(c);
    expect(c.append(...inSlot(flowSeg(47 * mss, mss)))).toBe(false);
    expect(c.append(...inSlot(flowSeg(47 * mss, room + 1)))).toBe(false);
    expect(c.buf.equals(before.buf)).toBe(true);
    expect(c.append(...inSlot(flowSeg(47 * mss, room)))).toBe(true);
    expect(c.len).toBe(GRO_MAX);
    const n = c.finish();
    expect(n).toBe(GRO_MAX + VNET_HDR_LEN);
    const pkt = written(c, n).subarray(VNET_HDR_LEN);
    expect(pkt.readUInt16BE(2)).toBe(GRO_MAX);
    expect(pkt.subarray(52).equals(FLOW_PAYLOAD.subarray(0, GRO_MAX - 52))).toBe(true);
  });

  it('refuses appends with no run, and after finish', () => {
    const c = newCoalescer();
    expect(c.append(...inSlot(flowSeg(0, MSS)))).toBe(false);
    expect(c.len).toBe(0);
    expect(c.finish()).toBe(0);
    c.start(...inSlot(flowSeg(0, MSS)), false);
    expect(c.finish()).toBe(52 + MSS + VNET_HDR_LEN);
    expect(c.append(...inSlot(flowSeg(1000, MSS)))).toBe(false);
    expect(c.finish()).toBe(0);
  });

  it('finishes a lone complete segment as DATA_VALID, unchanged', () => {
    const seg = flowSeg(0, MSS);
    const c = started(seg, false);
    const n = c.finish();
    expect(n).toBe(seg.length + VNET_HDR_LEN);
    const w = written(c, n);
    expect(w.subarray(0, VNET_HDR_LEN).equals(Buffer.from([VNET_F_DATA_VALID, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).toBe(true);
    expect(w.subarray(VNET_HDR_LEN).equals(seg)).toBe(true);
  });

  it('finishes a lone partial segment as NEEDS_CSUM 20/16, unchanged', () => {
    const seg = flowSeg(0, MSS, { csum: 'partial' });
    const c = started(seg, true);
    const n = c.finish();
    const w = written(c, n);
    expect(w.subarray(0, VNET_HDR_LEN).equals(Buffer.from([VNET_F_NEEDS_CSUM, 0, 0, 0, 0, 0, 20, 0, 16, 0]))).toBe(true);
    expect(w.subarray(VNET_HDR_LEN).equals(seg)).toBe(true);
  });

  it('finishes a run of complete-checksum segments as a valid NEEDS_CSUM super-packet', () => {
    const c = started(flowSeg(0, MSS, { id: 0x0100 }), false);
    for (let k = 1; k < 5; k++) expect(c.append(...inSlot(flowSeg(k * MSS, MSS, { id: 0x0100 + k })))).toBe(true);
    expect(c.append(...inSlot(flowSeg(5 * MSS, 123, { id: 0x0105, flags: F_ACK | F_PSH })))).toBe(true);
    const n = c.finish();
    const total = 52 + 5 * MSS + 123;
    expect(n).toBe(total + VNET_HDR_LEN);
    const w = written(c, n);
    const v = w.subarray(0, VNET_HDR_LEN);
    const wantV = Buffer.alloc(VNET_HDR_LEN);
    wantV[0] = VNET_F_NEEDS_CSUM;
    wantV[1] = GSO_TCPV4;
    wantV.writeUInt16LE(52, 2);
    wantV.writeUInt16LE(MSS, 4);
    wantV.writeUInt16LE(20, 6);
    wantV.writeUInt16LE(16, 8);
    expect(v.equals(wantV)).toBe(true);
    const pkt = w.subarray(VNET_HDR_LEN);
    // The super-packet a sender would have handed its NIC.
    const want = tcpPacket({ seq: SEQ0, ts: [1000, 2000], id: 0x0100, flags: F_ACK | F_PSH, payload: FLOW_PAYLOAD.subarray(0, total - 52), csum: 'partial' });
    expect(pkt.equals(want)).toBe(true);
    const done = Buffer.from(pkt);
    completeChecksum(done, 0, done.length, 20, 16);
    expect(done.readUInt16BE(36)).toBe(refTcpChecksum(want));
  });

  describe('eligible', () => {
    const ok = flowSeg(0, MSS);
    const el = (p: Buffer) => TcpCoalescer.eligible(...inSlot(p));

    it('accepts a plain ACK or ACK|PSH data segment, with or without options', () => {
      expect(el(ok)).toBe(true);
      expect(el(flowSeg(0, 1, { flags: F_ACK | F_PSH }))).toBe(true);
      expect(el(flowSeg(0, 1, { ts: null }))).toBe(true);
    });

    it.each([
      ['UDP', udpPacket({ payload: randomBytes(500, 1) })],
      ['ICMP', icmpEcho(randomBytes(56, 2), 'full')],
      ['IP options (ihl 6)', flowSeg(0, MSS, { ipOptions: 4 })],
      ['no payload (thl 32)', flowSeg(0, 0)],
      ['no payload (thl 20)', flowSeg(0, 0, { ts: null })],
      ['SYN', flowSeg(0, MSS, { flags: F_SYN })],
      ['SYN|ACK', flowSeg(0, MSS, { flags: F_SYN | F_ACK })],
      ['FIN', flowSeg(0, MSS, { flags: F_ACK | F_FIN })],
      ['RST', flowSeg(0, MSS, { flags: F_ACK | F_RST })],
      ['URG', flowSeg(0, MSS, { flags: F_ACK | F_URG })],
      ['CWR', flowSeg(0, MSS, { flags: F_ACK | F_CWR })],
      ['MF', flowSeg(0, MSS, { frag: 0x2000 })],
      ['fragment offset', flowSeg(0, MSS, { frag: 0x4001 })],
      ['IPv6', flowSeg(0, MSS, { verIhl: 0x60 })],
      ['TCP data offset below 5', (() => { const p = flowSeg(0, MSS, { ts: null }); p[32] = 4 << 4; return p; })()],
    ] as [string, Buffer][])('refuses %s', (_name, p) => {
      expect(el(p)).toBe(false);
    });

    it('refuses packets shorter than 40 bytes', () => {
      const p = flowSeg(0, 19, { ts: null });
      expect(TcpCoalescer.eligible(p, 0, 39)).toBe(false);
      expect(TcpCoalescer.eligible(p, 0, 41)).toBe(true);
    });
  });
});

// ---------------------------------------------------------------------------------------------

describe('writeVnetHeader', () => {
  function room(pkt: Buffer): [Buffer, number] {
    const b = Buffer.alloc(HEADER_LEN + pkt.length + 4, 0xab);
    pkt.copy(b, HEADER_LEN);
    return [b, HEADER_LEN];
  }

  it('writes DATA_VALID for a packet that is not partial', () => {
    for (const pkt of [flowSeg(0, 100), udpPacket({ payload: randomBytes(30, 3) }), icmpEcho(randomBytes(8, 4), 'full')]) {
      const [b, at] = room(pkt);
      expect(writeVnetHeader(b, at, false)).toBe(true);
      expect(b.subarray(at - 10, at).equals(Buffer.from([VNET_F_DATA_VALID, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).toBe(true);
      expect(b.subarray(0, at - 10).every((x) => x === 0xab)).toBe(true);
      expect(b.subarray(at, at + pkt.length).equals(pkt)).toBe(true);
    }
  });

  it('writes NEEDS_CSUM with csum_start = ihl and offset 16 for partial TCP', () => {
    const pkt = flowSeg(0, 100, { csum: 'partial' });
    const [b, at] = room(pkt);
    expect(writeVnetHeader(b, at, true)).toBe(true);
    expect(b.subarray(at - 10, at).equals(Buffer.from([VNET_F_NEEDS_CSUM, 0, 0, 0, 0, 0, 20, 0, 16, 0]))).toBe(true);
    expect(b.subarray(at, at + pkt.length).equals(pkt)).toBe(true);
  });

  it('writes NEEDS_CSUM with offset 6 for partial UDP, and csum_start 24 with IP options', () => {
    const pkt = udpPacket({ payload: randomBytes(30, 5), ipOptions: 4, csum: 'partial' });
    const [b, at] = room(pkt);
    expect(writeVnetHeader(b, at, true)).toBe(true);
    expect(b.subarray(at - 10, at).equals(Buffer.from([VNET_F_NEEDS_CSUM, 0, 0, 0, 0, 0, 24, 0, 6, 0]))).toBe(true);
    const plain = udpPacket({ payload: randomBytes(30, 5), csum: 'partial' });
    const [b2, at2] = room(plain);
    expect(writeVnetHeader(b2, at2, true)).toBe(true);
    expect(b2.subarray(at2 - 10, at2).equals(Buffer.from([VNET_F_NEEDS_CSUM, 0, 0, 0, 0, 0, 20, 0, 6, 0]))).toBe(true);
  });

  it('returns false for a partial ICMP packet', () => {
    const [b, at] = room(icmpEcho(randomBytes(8, 6), 'zero'));
    expect(writeVnetHeader(b, at, true)).toBe(false);
  });

  it('l4ChecksumOffset knows TCP and UDP only', () => {
    expect(l4ChecksumOffset(6)).toBe(16);
    expect(l4ChecksumOffset(17)).toBe(6);
    expect(l4ChecksumOffset(1)).toBe(-1);
    expect(l4ChecksumOffset(58)).toBe(-1);
  });
});

// ---------------------------------------------------------------------------------------------
// IPv6 (issue 16): TSO for TCPv6 cut on the way out, coalesced again on the way in
// ---------------------------------------------------------------------------------------------

const IP6_A = Buffer.from('fd12345678900000000000006440000a', 'hex');
const IP6_B = Buffer.from('fd12345678900000000000006440000b', 'hex');

/** IPv6 pseudo-header: source, destination, upper-layer length (32 bits), zeros, next header. */
function pseudoHeader6(pkt: Buffer, proto: number, l4len: number): Buffer {
  const ph = Buffer.alloc(40);
  pkt.copy(ph, 0, 8, 40);
  ph.writeUInt32BE(l4len, 32);
  ph[39] = proto;
  return ph;
}

/** An IPv6/TCP packet (fixed header only), checksum full or partial (pseudo-header sum). */
function tcp6Packet(spec: { payload: Buffer; seq?: number; flags?: number; ts?: [number, number] | null; flow?: number; hop?: number; csum?: 'full' | 'partial' }): Buffer {
  const v4 = tcpPacket({ payload: spec.payload, seq: spec.seq, flags: spec.flags, ts: spec.ts, csum: 'zero' });
  const tcp = Buffer.from(v4.subarray(20));
  const h = Buffer.alloc(40);
  h.writeUInt32BE((0x6 << 28) | (0x2 << 20) | (spec.flow ?? 0x12345), 0);
  h.writeUInt16BE(tcp.length, 4);
  h[6] = 6;
  h[7] = spec.hop ?? 64;
  IP6_A.copy(h, 8);
  IP6_B.copy(h, 24);
  tcp.writeUInt16BE(0, 16);
  const ph = pseudoHeader6(h, 6, tcp.length);
  tcp.writeUInt16BE(spec.csum === 'partial' ? refSum(ph) : refChecksum(ph, tcp), 16);
  return Buffer.concat([h, tcp]);
}

function tcp6Verifies(pkt: Buffer): boolean {
  return refSum(pseudoHeader6(pkt, 6, pkt.length - 40), pkt.subarray(40)) === 0xffff;
}

function tso6Read(sp: Buffer, gsoSize: number) {
  const hlen = 40 + (sp[52]! >> 4) * 4;
  return tunRead({ flags: VNET_F_NEEDS_CSUM, gso: GSO_TCPV6, hdrLen: hlen, gsoSize, csumStart: 40, csumOffset: 16 }, sp);
}

describe('IPv6: splitFromTun GSO_TCPV6 and TcpCoalescer', () => {
  const cases = [
    { name: '64000 bytes, thl 32, gso 1348', payloadLen: 64000, ts: [9, 10] as [number, number], gsoSize: 1348 },
    { name: '20000 bytes, thl 20, gso 1360', payloadLen: 20000, ts: null, gsoSize: 1360 },
    { name: 'below gso', payloadLen: 700, ts: [1, 2] as [number, number], gsoSize: 1348 },
  ];

  it.each(cases)('cuts a TCPv6 super-packet into segments whose checksums complete, and coalesces them back byte for byte ($name)', ({ payloadLen, ts, gsoSize }) => {
    const flags = F_ACK | F_PSH;
    const sp = tcp6Packet({ payload: randomBytes(payloadLen, payloadLen), seq: 0xffff_f000, flags, ts, csum: 'partial' });
    const hlen = 40 + (ts ? 32 : 20);
    const read = tso6Read(sp, gsoSize);
    const b = newBatch(64);
    const count = Math.ceil(payloadLen / gsoSize);
    expect(splitFromTun(read.src, read.off, read.len, b, 3)).toBe(count);
    for (let k = 0; k < count; k++) {
      const seg = slotPacket(b, 3 + k);
      const segLen = Math.min(gsoSize, payloadLen - k * gsoSize);
      expect(b.len[3 + k]).toBe(hlen + segLen);
      expect(b.flags[3 + k]).toBe(FLAG_CSUM_PARTIAL);
      expect(seg.readUInt16BE(4)).toBe(hlen - 40 + segLen);
      expect(seg.readUInt32BE(44)).toBe((0xffff_f000 + k * gsoSize) % 2 ** 32);
      expect(seg[53]).toBe(k < count - 1 ? F_ACK : F_ACK | F_PSH);
      expect(seg.subarray(hlen).equals(sp.subarray(hlen + k * gsoSize, hlen + k * gsoSize + segLen))).toBe(true);
      expect(seg.subarray(0, 4).equals(sp.subarray(0, 4))).toBe(true);
      expect(seg.subarray(6, 44).equals(sp.subarray(6, 44))).toBe(true);
      expect(seg.readUInt16BE(56)).toBe(refSum(pseudoHeader6(seg, 6, seg.length - 40)));
      const done = Buffer.from(seg);
      completeChecksum(done, 0, done.length, 40, 16);
      expect(tcp6Verifies(done)).toBe(true);
    }
    // and back: one super-packet, the kernel's read byte for byte
    const c = newCoalescer();
    const at = (i: number) => b.offset(i) + HEADER_LEN;
    expect(TcpCoalescer.eligible(b.buf, at(3), b.len[3]!)).toBe(true);
    c.start(b.buf, at(3), b.len[3]!, true);
    for (let k = 1; k < count; k++) expect(c.append(b.buf, at(3 + k), b.len[3 + k]!)).toBe(true);
    expect(c.segments).toBe(count);
    const out = c.finish();
    const w = written(c, out);
    if (count > 1) {
      expect(w[1]).toBe(GSO_TCPV6);
      expect(w.equals(read.src.subarray(read.off, read.off + read.len))).toBe(true);
    } else {
      // a lone segment goes as it is, checksum partial at 40 + 16
      expect([w[0], w[1], w.readUInt16LE(6), w.readUInt16LE(8)]).toEqual([VNET_F_NEEDS_CSUM, GSO_NONE, 40, 16]);
    }
  });

  it('a run never mixes families or flows: IPv4 after IPv6, another flow label or hop limit, a gap in sequence all end it', () => {
    const pay = randomBytes(4000, 5);
    const seg6 = (from: number, o: { flow?: number; hop?: number } = {}) =>
      tcp6Packet({ payload: pay.subarray(from, from + 1000), seq: 5000 + from, ts: [1, 2], ...o });
    const c = newCoalescer();
    c.start(...inSlot(seg6(0)), false);
    expect(c.append(...inSlot(seg6(1000)))).toBe(true);
    expect(c.append(...inSlot(seg6(2000, { flow: 0x54321 })))).toBe(false);
    expect(c.append(...inSlot(seg6(2000, { hop: 63 })))).toBe(false);
    expect(c.append(...inSlot(seg6(3000)))).toBe(false); // gap
    const v4 = tcpPacket({ payload: pay.subarray(2000, 3000), seq: 7000, ts: [1, 2] });
    expect(c.append(...inSlot(v4))).toBe(false);
    expect(c.append(...inSlot(seg6(2000)))).toBe(true);
    expect(c.segments).toBe(3);
    const w = written(c, c.finish());
    const pkt = w.subarray(VNET_HDR_LEN);
    expect(pkt.readUInt16BE(4)).toBe(32 + 3000);
    const done = Buffer.from(pkt);
    completeChecksum(done, 0, done.length, 40, 16);
    expect(tcp6Verifies(done)).toBe(true);
    // an extension header (hop-by-hop) first: not eligible
    const ext = seg6(0);
    ext[6] = 0;
    expect(TcpCoalescer.eligible(...inSlot(ext))).toBe(false);
  });

  it('a lone IPv6 packet with a partial checksum keeps it across the tunnel (csum_start 40), and TCPV6 GSO over an IPv4 packet is malformed', () => {
    const p = tcp6Packet({ payload: randomBytes(300, 8), csum: 'partial' });
    const read = tunRead({ flags: VNET_F_NEEDS_CSUM, csumStart: 40, csumOffset: 16 }, p);
    const b = newBatch(4);
    expect(splitFromTun(read.src, read.off, read.len, b, 0)).toBe(1);
    expect(b.flags[0]).toBe(FLAG_CSUM_PARTIAL);
    const slot = Buffer.alloc(p.length + HEADER_LEN);
    p.copy(slot, HEADER_LEN);
    expect(writeVnetHeader(slot, HEADER_LEN, true)).toBe(true);
    const v = slot.subarray(HEADER_LEN - VNET_HDR_LEN, HEADER_LEN);
    expect([v[0], v.readUInt16LE(6), v.readUInt16LE(8)]).toEqual([VNET_F_NEEDS_CSUM, 40, 16]);
    const v4 = tcpPacket({ payload: randomBytes(3000, 9), csum: 'partial' });
    const bad = tunRead({ flags: VNET_F_NEEDS_CSUM, gso: GSO_TCPV6, hdrLen: 40, gsoSize: 1000, csumStart: 20, csumOffset: 16 }, v4);
    expect(splitFromTun(bad.src, bad.off, bad.len, newBatch(8), 0)).toBe('malformed');
  });
});

