/**
 * Fuzz: TUN offloads (src/dataplane/offload.ts). What the kernel hands the TUN reader is treated
 * as untrusted, and so is what an authenticated peer sends us (it reaches the receive coalescer).
 *
 *   splitFromTun   random and mutated virtio-net header + packet inputs (no GSO and TCPv4 GSO,
 *                  checksum offsets right and wrong, header lengths, MSS, truncation), at random
 *                  offsets, into batches of every production MTU and several capacities. Never
 *                  throws; returns 'malformed', 'full' or a count that fits; writes nothing outside
 *                  the packet bytes of the slots it reports ('full': nothing at all; 'malformed':
 *                  at most the first free slot's packet area); reads nothing past `len`; and the
 *                  segments it reports are right: headers copied, lengths, IDs, sequence numbers,
 *                  flags, IPv4 and pseudo-header checksums, payload concatenation.
 *   TcpCoalescer   streams of TCP segments from a few flows, in and out of order, mutated, mixed
 *                  with junk, driven the way TunBatchIo.writeSlot drives it (append, else finish and
 *                  start or write alone). Never throws, never writes outside its buffer, and every
 *                  super-packet it finishes is exactly the segments it accepted, which all obey the
 *                  coalescing rules in its doc comment (checked by a reference predicate).
 *   TunBatchIo     writeSlot/flush, the inbound path's last step, on the real class over /dev/null
 *                  (native memory, both with and without offloads): never throws, no write errors.
 */
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PacketBatch, slotSizeFor, spareFor } from '../../src/dataplane/batch';
import {
  GRO_MAX,
  GSO_ECN,
  GSO_NONE,
  GSO_TCPV4,
  splitFromTun,
  TcpCoalescer,
  VNET_F_DATA_VALID,
  VNET_F_NEEDS_CSUM,
  VNET_HDR_LEN,
  type SplitResult,
} from '../../src/dataplane/offload';
import { FLAG_CSUM_PARTIAL, HEADER_LEN } from '../../src/dataplane/wire';
import { casesFor, check, fuzz, INTERESTING_16, INTERESTING_8, mutate, type Rand } from '../helpers/fuzz';

const TCP = 6;
const UDP = 17;
const GUARD = 256;

// ---------------------------------------------------------------------------------------------
// Reference checksums (RFC 1071), written differently from offload.ts: byte pairs with an explicit
// zero pad, carries folded once at the end.

function onesSum(...parts: Buffer[]): number {
  const all = Buffer.concat(parts);
  let s = 0;
  for (let i = 0; i < all.length; i += 2) s += all[i]! * 256 + (i + 1 < all.length ? all[i + 1]! : 0);
  while (s > 0xffff) s = Math.floor(s / 0x10000) + (s % 0x10000);
  return s;
}

function pseudoHeader(pkt: Buffer, proto: number, l4len: number): Buffer {
  const ph = Buffer.alloc(12);
  pkt.copy(ph, 0, 12, 20);
  ph[9] = proto;
  ph.writeUInt16BE(l4len & 0xffff, 10);
  return ph;
}

// ---------------------------------------------------------------------------------------------
// Inputs

interface TcpOpts {
  ihl: number;
  thl: number;
  payload: number;
  flags: number;
}

/** An IPv4/TCP packet (checksums not filled in). */
function tcpPacket(r: Rand, o: TcpOpts): Buffer {
  const p = r.bytes(o.ihl + o.thl + o.payload);
  p[0] = 0x40 | (o.ihl / 4);
  p.writeUInt16BE(Math.min(p.length, 0xffff), 2);
  p.writeUInt16BE(r.chance(0.8) ? 0x4000 : r.int(0, 0xffff), 6);
  p[9] = TCP;
  p[o.ihl + 12] = (o.thl / 4) << 4;
  p[o.ihl + 13] = o.flags;
  return p;
}

function anyPacket(r: Rand, max: number): Buffer {
  switch (r.int(0, 4)) {
    case 0:
    case 1:
      return tcpPacket(r, { ihl: r.chance(0.8) ? 20 : 4 * r.int(5, 15), thl: r.chance(0.7) ? 20 : 4 * r.int(5, 15), payload: r.len(max), flags: r.byte() });
    case 2: { // UDP
      const p = r.bytes(20 + 8 + r.len(max));
      p[0] = 0x45;
      p[9] = UDP;
      return p;
    }
    case 3: { // IPv6
      const p = r.bytes(40 + r.len(max));
      p[0] = 0x60;
      return p;
    }
    default:
      return r.bytes(r.len(max + 60));
  }
}

/** A TUN read: virtio-net header then a packet, mostly plausible, sometimes mutated. */
function tunRead(r: Rand, maxPacket: number): Buffer {
  const h = Buffer.alloc(VNET_HDR_LEN);
  let p: Buffer;
  if (r.chance(0.5)) {
    // GSO_NONE: one packet, checksum complete, partial (offsets right or wrong), or anything.
    p = anyPacket(r, r.chance(0.8) ? maxPacket - 60 : maxPacket + 100);
    h[0] = r.pick([0, 0, VNET_F_NEEDS_CSUM, VNET_F_NEEDS_CSUM, VNET_F_DATA_VALID, r.byte()]);
    h[1] = r.chance(0.9) ? GSO_NONE : GSO_NONE | GSO_ECN;
    const ihl = p.length > 0 ? (p[0]! & 15) * 4 : 0;
    const proto = p.length > 9 ? p[9]! : 0;
    h.writeUInt16LE(r.pick([ihl, ihl, ihl, r.pick(INTERESTING_16), r.int(0, p.length + 4)]), 6);
    h.writeUInt16LE(r.pick([proto === TCP ? 16 : 6, proto === TCP ? 16 : 6, 16, 6, r.pick(INTERESTING_16), r.int(0, 64)]), 8);
    h.writeUInt16LE(r.u32() & 0xffff, 2);
    h.writeUInt16LE(r.u32() & 0xffff, 4);
  } else {
    // GSO_TCPV4: a super-packet to cut at gso_size.
    const ihl = r.chance(0.8) ? 20 : 4 * r.int(5, 15);
    const thl = r.chance(0.6) ? 20 : r.chance(0.5) ? 32 : 4 * r.int(5, 15);
    const payload = r.chance(0.7) ? r.len(64_000) : r.pick([0, 1, 1448, 8948, 65535 - ihl - thl]);
    p = tcpPacket(r, { ihl, thl, payload, flags: r.chance(0.7) ? 0x18 : r.byte() });
    h[0] = VNET_F_NEEDS_CSUM;
    h[1] = r.chance(0.9) ? GSO_TCPV4 : GSO_TCPV4 | GSO_ECN;
    h.writeUInt16LE(ihl + thl, 2);
    h.writeUInt16LE(r.pick([1448, 1380, maxPacket - ihl - thl, r.int(1, 9000), r.pick(INTERESTING_16), r.int(1, 64)]), 4);
    h.writeUInt16LE(ihl, 6);
    h.writeUInt16LE(16, 8);
  }
  let d: Buffer = Buffer.concat([h, p]);
  if (r.chance(0.35)) d = mutate(r, d, 3, 65_535 + VNET_HDR_LEN);
  if (r.chance(0.15)) { // targeted edits: GSO type, ihl nibble, protocol, TCP data offset
    const at = r.pick([1, VNET_HDR_LEN, VNET_HDR_LEN + 9, VNET_HDR_LEN + 32, 0, 4, 5]);
    if (at < d.length) d[at] = r.pick([...INTERESTING_8, r.byte()]);
  }
  return d;
}

// ---------------------------------------------------------------------------------------------
// splitFromTun

interface BatchCase {
  batch: PacketBatch;
  pristine: Buffer;
}

const MTUS = [576, 1280, 1420, 1500, 9000];

function makeBatches(r: Rand): BatchCase[] {
  const out: BatchCase[] = [];
  for (const mtu of MTUS) {
    for (const cap of mtu === 9000 ? [1, 4, 8] : [1, 2, 4, 16, 64]) {
      const slot = slotSizeFor(mtu);
      const pristine = r.bytes(slot * cap + GUARD);
      out.push({ batch: new PacketBatch(Buffer.from(pristine), slot, cap), pristine });
    }
  }
  return out;
}

function resetBatch(c: BatchCase): void {
  c.pristine.copy(c.batch.buf);
  c.batch.len.fill(-7);
  c.batch.flags.fill(0xaa);
}

/** Bytes of the batch outside `allowed` ranges that changed, or null. */
function strayWrite(c: BatchCase, allowed: [number, number][]): string | null {
  const buf = c.batch.buf;
  let from = 0;
  const sorted = [...allowed].sort((a, b) => a[0] - b[0]);
  for (const [a, b] of [...sorted, [buf.length, buf.length] as [number, number]]) {
    if (a > from && !buf.subarray(from, a).equals(c.pristine.subarray(from, a))) {
      for (let i = from; i < a; i++) if (buf[i] !== c.pristine[i]) return `byte ${i} changed (slot ${Math.floor(i / c.batch.slotSize)}, offset ${i % c.batch.slotSize})`;
    }
    from = Math.max(from, b);
  }
  return null;
}

function checkSegments(c: BatchCase, input: Buffer, first: number, count: number): void {
  const b = c.batch;
  const h = input.subarray(0, VNET_HDR_LEN);
  const p = input.subarray(VNET_HDR_LEN);
  const gso = h[1]! & ~GSO_ECN;
  const slotPacket = (s: number) => b.buf.subarray(b.offset(s) + HEADER_LEN, b.offset(s) + HEADER_LEN + b.len[s]!);
  if (gso === GSO_NONE) {
    check(count === 1, `GSO_NONE gave ${count} packets`);
    const out = slotPacket(first);
    check(out.length === p.length, `packet of ${p.length} bytes became ${out.length}`);
    const csumStart = h.readUInt16LE(6);
    const csumOffset = h.readUInt16LE(8);
    const at = csumStart + csumOffset;
    const flag = b.flags[first]!;
    check(flag === 0 || flag === FLAG_CSUM_PARTIAL, `flags ${flag}`);
    if ((h[0]! & VNET_F_NEEDS_CSUM) === 0 || flag === FLAG_CSUM_PARTIAL) {
      check(out.equals(p), 'packet changed on the way into the slot');
      if (flag === FLAG_CSUM_PARTIAL) {
        check((h[0]! & VNET_F_NEEDS_CSUM) !== 0 && p[0]! >> 4 === 4 && csumStart === (p[0]! & 15) * 4, 'partial without a matching NEEDS_CSUM header');
      }
      return;
    }
    // Completed checksum: only the 2 checksum bytes changed, to the complement of the sum of the L4
    // bytes with the field as the kernel left it (it holds the pseudo-header sum), RFC 1071.
    check(at + 2 <= p.length, 'completed a checksum outside the packet');
    const want = 0xffff - onesSum(Buffer.from(p.subarray(csumStart)));
    check(out.readUInt16BE(at) === want, () => `completed checksum ${out.readUInt16BE(at)}, reference ${want}`);
    const rest = Buffer.from(out);
    p.copy(rest, at, at, at + 2);
    check(rest.equals(p), 'bytes other than the checksum changed');
    return;
  }
  // GSO_TCPV4: segments of at most mss payload bytes.
  check(gso === GSO_TCPV4, `GSO type ${gso} was not refused`);
  const ihl = (p[0]! & 15) * 4;
  const thl = (p[ihl + 12]! >> 4) * 4;
  const hlen = ihl + thl;
  const payload = p.subarray(hlen);
  const mss = Math.min(h.readUInt16LE(4), b.maxPacket - hlen);
  check(mss > 0 && count === Math.max(1, Math.ceil(payload.length / mss)), () => `${count} segments for ${payload.length} bytes at mss ${mss}`);
  const id0 = p.readUInt16BE(4);
  const seq0 = p.readUInt32BE(ihl + 4);
  const parts: Buffer[] = [];
  for (let k = 0; k < count; k++) {
    const s = first + k;
    const seg = slotPacket(s);
    check(b.flags[s] === FLAG_CSUM_PARTIAL, 'segment not marked partial');
    check(seg.length >= hlen && seg.length <= b.maxPacket && seg.length - hlen <= mss, () => `segment ${k} of ${seg.length} bytes`);
    check(seg.readUInt16BE(2) === seg.length, 'total length field');
    check(seg.readUInt16BE(4) === ((id0 + k) & 0xffff), 'IP id');
    check(onesSum(seg.subarray(0, ihl)) === 0xffff, 'IPv4 header checksum');
    for (const [a, z] of [[0, 2], [6, 10], [12, ihl]] as const) check(seg.subarray(a, z).equals(p.subarray(a, z)), `IP header bytes ${a}..${z} changed`);
    const t = seg.subarray(ihl, hlen);
    const t0 = p.subarray(ihl, hlen);
    check(t.readUInt32BE(4) === ((seq0 + k * mss) >>> 0), 'sequence number');
    for (const [a, z] of [[0, 4], [8, 13], [14, 16], [18, thl]] as const) check(t.subarray(a, z).equals(t0.subarray(a, z)), `TCP header bytes ${a}..${z} changed`);
    let f = t0[13]!;
    if (k < count - 1) f &= ~0x09;
    if (k > 0) f &= ~0x80;
    check(t[13] === f, 'TCP flags');
    check(t.readUInt16BE(16) === onesSum(pseudoHeader(seg, TCP, seg.length - ihl)), 'pseudo-header sum in the TCP checksum');
    parts.push(seg.subarray(hlen));
  }
  check(Buffer.concat(parts).equals(payload), 'segments do not add up to the payload');
}

describe('fuzz: splitFromTun', () => {
  it('never throws; malformed, full, or exactly the segments, written only where reported', () => {
    let batches: BatchCase[] | undefined;
    const results = { malformed: 0, full: 0, one: 0, many: 0 };
    const src = Buffer.alloc(65_535 + VNET_HDR_LEN + 200);
    fuzz('splitFromTun', casesFor('splitFromTun'), (r, _i, note) => {
      batches ??= makeBatches(r);
      const c = r.pick(batches);
      const b = c.batch;
      const input = tunRead(r, b.maxPacket);
      const off = r.chance(0.5) ? 0 : r.int(0, 100);
      // A short read sometimes: the length passed is less than what the header describes.
      const len = r.chance(0.9) ? input.length : r.int(0, input.length);
      note.input = input.subarray(0, Math.min(len, 200));
      const first = r.chance(0.6) ? 0 : r.int(0, b.capacity);
      note.what = `mtu slot ${b.slotSize} x ${b.capacity}, off ${off}, len ${len} of ${input.length}, first ${first}`;
      input.copy(src, off, 0, len);
      r.fill(src, off + len, Math.min(src.length, off + len + 64)); // bytes after the read: never looked at
      resetBatch(c);
      const res: SplitResult = splitFromTun(src, off, len, b, first);
      const lens = Array.from(b.len);
      const flags = Array.from(b.flags);
      if (res === 'full' || res === 'malformed') {
        results[res]++;
        const stray = strayWrite(c, res === 'malformed' && first < b.capacity ? [[b.offset(first) + HEADER_LEN, b.offset(first) + HEADER_LEN + b.maxPacket]] : []);
        check(stray === null, () => `${res}: ${stray}`);
        check(lens.every((v, s) => v === -7 || (res === 'malformed' && s === first)), `${res}: slot lengths changed`);
        if (res === 'full') check(flags.every((v) => v === 0xaa), 'full: flags changed');
        if (res === 'malformed' && len >= VNET_HDR_LEN + 20 && ((src[off + 1]! & ~GSO_ECN) === GSO_TCPV4)) {
          check(strayWrite(c, []) === null, 'malformed super-packet: slot written');
        }
        if (res === 'full') check(first + 1 > b.capacity || (src[off + 1]! & ~GSO_ECN) === GSO_TCPV4, 'full for a single packet with room left');
      } else {
        check(Number.isInteger(res) && res >= 1 && first + res <= b.capacity, `count ${res} (first ${first}, capacity ${b.capacity})`);
        results[res === 1 ? 'one' : 'many']++;
        const allowed: [number, number][] = [];
        for (let s = first; s < first + res; s++) {
          check(lens[s]! >= 0 && lens[s]! <= b.maxPacket, `slot ${s} length ${lens[s]}`);
          allowed.push([b.offset(s) + HEADER_LEN, b.offset(s) + HEADER_LEN + lens[s]!]);
        }
        const stray = strayWrite(c, allowed);
        check(stray === null, () => `${res} packets: ${stray}`);
        check(lens.every((v, s) => (s >= first && s < first + res) || v === -7), 'lengths of other slots changed');
        check(flags.every((v, s) => (s >= first && s < first + res) || v === 0xaa), 'flags of other slots changed');
        checkSegments(c, Buffer.from(src.subarray(off, off + len)), first, res);
      }
      // The same read landed in a scratch area of the batch's own block (the worker's layout, where
      // the copies are copyWithin) gives the same slots.
      if (r.chance(0.3)) {
        const slots = b.slotSize * b.capacity;
        const twin = new PacketBatch(Buffer.alloc(slots + spareFor(off + len)), b.slotSize, b.capacity, 1n << 40n);
        c.pristine.copy(twin.buf, 0, 0, slots);
        twin.len.fill(-7);
        twin.flags.fill(0xaa);
        const area = twin.carve(off + len)!;
        src.copy(twin.buf, area.off, 0, off + len);
        const same = splitFromTun(twin.buf, area.off + off, len, twin, first);
        check(same === res, () => `from the batch's own block: ${String(same)}, from another buffer: ${String(res)}`);
        check(twin.buf.subarray(0, slots).equals(b.buf.subarray(0, slots)), 'slots differ when the read is in the batch\'s own block');
        check(Array.from(twin.len).every((v, i) => v === lens[i]) && Array.from(twin.flags).every((v, i) => v === flags[i]), 'lengths or flags differ');
      }
      // The same read with other bytes after it gives the same result (nothing past len is read).
      if (r.chance(0.2)) {
        const before = Buffer.from(b.buf);
        r.fill(src, off + len, Math.min(src.length, off + len + 64));
        resetBatch(c);
        const again = splitFromTun(src, off, len, b, first);
        check(again === res && b.buf.equals(before), 'result depends on bytes after len');
      }
    });
    for (const k of ['malformed', 'full', 'one', 'many'] as const) expect(results[k], k).toBeGreaterThan(casesFor('splitFromTun') / 50);
  });
});

// ---------------------------------------------------------------------------------------------
// TcpCoalescer

interface Flow {
  hdr: Buffer; // IP (20) + TCP header (thl), flags ACK
  thl: number;
  seq: number;
  seg: number;
}

function newFlow(r: Rand): Flow {
  const thl = r.chance(0.6) ? 20 : r.pick([32, 40, 60]);
  const hdr = tcpPacket(r, { ihl: 20, thl, payload: 0, flags: 0x10 });
  return { hdr, thl, seq: r.u32(), seg: r.pick([1448, 1368, 100, 1, r.int(1, 8900)]) };
}

/** The next segment of a flow (usually in order and full), or a variation that should end the run. */
function segment(r: Rand, f: Flow): Buffer {
  const size = r.chance(0.85) ? f.seg : r.pick([r.int(1, f.seg), f.seg + 1, 0, r.int(1, 9000)]);
  const p = Buffer.concat([f.hdr, r.bytes(size)]);
  p.writeUInt16BE(Math.min(p.length, 0xffff), 2);
  p.writeUInt32BE(r.chance(0.9) ? f.seq : (f.seq + r.pick([-1, 1, -size, size, 0x80000000])) >>> 0, 24);
  if (r.chance(0.1)) p[33] = r.pick([0x18, 0x18, 0x11, 0x12, 0x14, 0x30, 0x50, 0x90, 0x10 | 0x08]);
  if (r.chance(0.1)) p[r.pick([1, 6, 8, 12, 15, 19, 20, 23, 28, 31, 34, 35, 40])] ^= 1 << r.int(0, 7);
  f.seq = (f.seq + size) >>> 0;
  return p;
}

/** The coalescing rules from TcpCoalescer's doc comment, for a run started by `head`. */
function mayJoin(run: { head: Buffer; len: number; seg: number; nextSeq: number; closed: boolean }, p: Buffer): boolean {
  const h = run.head;
  const hlen = 20 + (h[32]! >> 4) * 4;
  const payload = p.length - hlen;
  if (run.closed || payload <= 0 || payload > run.seg || run.len + payload > GRO_MAX) return false;
  if (p[0] !== 0x45 || p[9] !== TCP || (p.readUInt16BE(6) & 0x3fff) !== 0) return false;
  if (20 + (p[32]! >> 4) * 4 !== hlen || p.readUInt32BE(24) !== run.nextSeq) return false;
  const flags = p[33]!;
  if ((flags & ~0x18) !== 0 || (flags & ~0x08) !== (h[33]! & ~0x08)) return false;
  const same = (a: number, z: number) => p.subarray(a, z).equals(h.subarray(a, z));
  return same(12, 24) && same(28, 32) && same(34, 36) && same(40, hlen) && p[1] === h[1] && p[8] === h[8];
}

describe('fuzz: TcpCoalescer', () => {
  it('never throws or writes outside its buffer; every super-packet is exactly the segments it took, by the rules', () => {
    const cases = casesFor('coalescer');
    const total = GRO_MAX + HEADER_LEN + GUARD;
    const buf = Buffer.alloc(total, 0x5a);
    const gro = new TcpCoalescer(buf, HEADER_LEN);
    const pbuf = Buffer.alloc(9100 + 64);
    const stats = { runs: 0, superPackets: 0, segments: 0, refusedByRule: 0 };
    let flows: Flow[] = [];
    // The model of the current run: its packets as given, and the rule state.
    let run: { packets: Buffer[]; partial: boolean; head: Buffer; len: number; seg: number; nextSeq: number; closed: boolean } | null = null;

    const finishAndCheck = (): void => {
      const n = gro.finish();
      check(gro.len === 0, 'finish left a run');
      if (!run) {
        check(n === 0, `finish with no run returned ${n}`);
        return;
      }
      const out = buf.subarray(HEADER_LEN - VNET_HDR_LEN, HEADER_LEN - VNET_HDR_LEN + n);
      const vh = out.subarray(0, VNET_HDR_LEN);
      const pkt = out.subarray(VNET_HDR_LEN);
      const head = run.packets[0]!;
      check(n === VNET_HDR_LEN + run.packets.reduce((s, p, k) => s + (k === 0 ? p.length : p.length - (20 + (head[32]! >> 4) * 4)), 0), `finish returned ${n}`);
      stats.runs++;
      if (run.packets.length === 1) {
        check(pkt.equals(head), 'a lone packet changed');
        const want = Buffer.alloc(VNET_HDR_LEN);
        if (run.partial) {
          want[0] = VNET_F_NEEDS_CSUM;
          want.writeUInt16LE(20, 6);
          want.writeUInt16LE(16, 8);
        } else want[0] = VNET_F_DATA_VALID;
        check(vh.equals(want), `virtio header ${vh.toString('hex')} for a lone packet, expected ${want.toString('hex')}`);
      } else {
        stats.superPackets++;
        stats.segments += run.packets.length;
        const hlen = 20 + (head[32]! >> 4) * 4;
        check(vh[0] === VNET_F_NEEDS_CSUM && vh[1] === GSO_TCPV4 && vh.readUInt16LE(2) === hlen && vh.readUInt16LE(4) === head.length - hlen, 'virtio GSO header');
        check(vh.readUInt16LE(6) === 20 && vh.readUInt16LE(8) === 16, 'virtio checksum offsets');
        check(pkt.readUInt16BE(2) === pkt.length && onesSum(pkt.subarray(0, 20)) === 0xffff, 'IP total length or checksum');
        check(pkt.subarray(4, 10).equals(head.subarray(4, 10)) && pkt.subarray(12, 20).equals(head.subarray(12, 20)), 'IP header changed');
        const psh = run.packets.some((p) => (p[33]! & 0x08) !== 0);
        check(pkt[33] === (psh ? head[33]! | 0x08 : head[33]), 'TCP flags');
        check(pkt.subarray(20, 33).equals(head.subarray(20, 33)) && pkt.subarray(34, 36).equals(head.subarray(34, 36)) && pkt.subarray(38, hlen).equals(head.subarray(38, hlen)), 'TCP header changed');
        check(pkt.readUInt16BE(36) === onesSum(pseudoHeader(pkt, TCP, pkt.length - 20)), 'pseudo-header sum');
        const payload = Buffer.concat(run.packets.map((p) => p.subarray(hlen)));
        check(pkt.subarray(hlen).equals(payload), 'payload is not the segments joined');
      }
      run = null;
    };

    fuzz('coalescer', cases, (r, _i, note) => {
      if (flows.length === 0 || r.chance(0.01)) flows = Array.from({ length: r.int(1, 3) }, () => newFlow(r));
      let p: Buffer;
      const k = r.weighted([80, 8, 7, 5]);
      if (k === 0) p = segment(r, r.pick(flows));
      else if (k === 1) p = mutate(r, segment(r, r.pick(flows)), 2, 9000);
      else if (k === 2) p = r.bytes(r.len(9000));
      else p = tcpPacket(r, { ihl: 4 * r.int(5, 15), thl: 4 * r.int(5, 15), payload: r.len(2000), flags: r.byte() });
      const off = r.int(0, 64);
      p.copy(pbuf, off);
      const len = p.length;
      note.input = p.subarray(0, 80);
      note.what = `packet of ${len} at ${off}; run of ${run?.packets.length ?? 0}`;
      const partial = r.chance(0.5);
      // As TunBatchIo.writeSlot: append, else finish the run and start a new one or write alone.
      const want = run !== null && mayJoin(run, p);
      const joined = gro.append(pbuf, off, len);
      check(joined === want, () => `append returned ${joined}, the rules say ${want}`);
      if (joined) {
        const payload = len - (20 + (run!.head[32]! >> 4) * 4);
        run!.packets.push(Buffer.from(p));
        run!.len += payload;
        run!.nextSeq = (run!.nextSeq + payload) >>> 0;
        if ((p[33]! & 0x08) !== 0 || payload < run!.seg) run!.closed = true;
      } else {
        if (run) stats.refusedByRule++;
        finishAndCheck();
        if (TcpCoalescer.eligible(pbuf, off, len)) {
          check(len >= 40 && p[0] === 0x45 && p[9] === TCP && 20 + (p[32]! >> 4) * 4 < len && (p[33]! & ~0x18) === 0, 'eligible packet breaks the rules');
          gro.start(pbuf, off, len, partial);
          const hlen = 20 + (p[32]! >> 4) * 4;
          run = { packets: [Buffer.from(p)], partial, head: Buffer.from(p), len, seg: len - hlen, nextSeq: (p.readUInt32BE(24) + len - hlen) >>> 0, closed: (p[33]! & 0x08) !== 0 };
        }
      }
      if (r.chance(0.08)) finishAndCheck(); // end of a receive batch
      // Outside [base - 10, base + GRO_MAX) nothing was touched.
      for (const [a, z] of [[0, HEADER_LEN - VNET_HDR_LEN], [HEADER_LEN + GRO_MAX, total]]) {
        for (let j = a; j < z; j++) check(buf[j] === 0x5a, `coalescer wrote byte ${j}, outside its buffer`);
      }
    });
    expect(stats.superPackets).toBeGreaterThan(cases / 100);
    expect(stats.refusedByRule).toBeGreaterThan(cases / 100);
  });
});

// ---------------------------------------------------------------------------------------------
// TunBatchIo.writeSlot over /dev/null

describe('fuzz: TunBatchIo.writeSlot', () => {
  it('the real write path (offloads on and off) never throws and never fails a write to /dev/null', async () => {
    let tunMod: typeof import('../../src/os/tun/tun');
    let memMod: typeof import('../../src/os/ffi/mem');
    try {
      tunMod = await import('../../src/os/tun/tun');
      memMod = await import('../../src/os/ffi/mem');
    } catch (e) {
      console.log(`fuzz tunWriteSlot: skipped, native bindings do not load here (${(e as Error).message})`);
      return;
    }
    const slot = slotSizeFor(1420);
    const cap = 16;
    // with room for the coalescer's run in the batch's own block, as the worker's (TunBatchIo carves it)
    const mem = memMod.allocNative(slot * cap + spareFor(tunMod.TUN_WRITE_SCRATCH));
    const fd = fs.openSync('/dev/null', 'w');
    try {
      const batch = new PacketBatch(mem.buf, slot, cap, mem.ptr);
      const tuns = [new tunMod.TunBatchIo(fd, batch, false), new tunMod.TunBatchIo(fd, batch, true)];
      let flows: Flow[] = [];
      let refused = 0;
      fuzz('tunWriteSlot', casesFor('tunWriteSlot'), (r, _i, note) => {
        if (flows.length === 0 || r.chance(0.02)) flows = Array.from({ length: r.int(1, 2) }, () => newFlow(r));
        const tun = r.pick(tuns);
        const i = r.int(0, cap - 1);
        const p = r.chance(0.7) ? segment(r, r.pick(flows)) : r.chance(0.5) ? mutate(r, segment(r, r.pick(flows)), 3, batch.maxPacket) : anyPacket(r, 1400);
        const len = Math.min(p.length, batch.maxPacket);
        p.copy(batch.buf, batch.offset(i) + HEADER_LEN, 0, len);
        note.input = p.subarray(0, 80);
        const ok = tun.writeSlot(batch, i, len, r.chance(0.5));
        check(typeof ok === 'boolean', 'writeSlot did not return a boolean');
        if (!ok) refused++;
        if (r.chance(0.1)) check(tun.flush() === 0, 'flush to /dev/null refused packets');
      });
      for (const t of tuns) {
        t.flush();
        expect(t.errors).toBe(0);
      }
      expect(refused).toBeGreaterThan(0); // partial packets whose checksum field is outside them
    } finally {
      fs.closeSync(fd);
      mem.free();
    }
  });
});
