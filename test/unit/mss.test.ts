import { describe, expect, it } from 'vitest';
import { clampTcpMss, sum16 } from '../../src/dataplane/offload';
import { rng as seeded } from '../helpers/rng';

/** An IPv4 TCP segment with the given flags and options, with a correct TCP checksum. */
function tcpPacket(flags: number, options: number[], payload = 0): Buffer {
  const optLen = Math.ceil(options.length / 4) * 4;
  const thl = 20 + optLen;
  const len = 20 + thl + payload;
  const b = Buffer.alloc(len);
  b[0] = 0x45;
  b.writeUInt16BE(len, 2);
  b[8] = 64;
  b[9] = 6;
  b.writeUInt32BE(0x64400001, 12); // 100.64.0.1
  b.writeUInt32BE(0x64400002, 16); // 100.64.0.2
  const t = 20;
  b.writeUInt16BE(40000, t);
  b.writeUInt16BE(7777, t + 2);
  b[t + 12] = (thl / 4) << 4;
  b[t + 13] = flags;
  b.writeUInt16BE(64240, t + 14);
  Buffer.from(options).copy(b, t + 20);
  b.writeUInt16BE(tcpChecksum(b), t + 16);
  return b;
}

function tcpChecksum(b: Buffer): number {
  const l4 = b.length - 20;
  const pseudo = Buffer.alloc(12);
  b.copy(pseudo, 0, 12, 20);
  pseudo[9] = 6;
  pseudo.writeUInt16BE(l4, 10);
  const saved = b.readUInt16BE(36);
  b.writeUInt16BE(0, 36);
  let s = sum16(pseudo, 0, 12) + sum16(b, 20, l4);
  if (l4 & 1) s += b[b.length - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  b.writeUInt16BE(saved, 36);
  return ~s & 0xffff;
}

const SYN = 0x02;
const ACK = 0x10;
const MSS = (v: number) => [2, 4, v >> 8, v & 255];
const mssOf = (b: Buffer) => b.readUInt16BE(40 + b.indexOf(Buffer.from([2, 4]), 40) - 40 + 2);

describe('clampTcpMss (TCP SYNs toward relayed peers)', () => {
  it('lowers a larger MSS and keeps the checksum right', () => {
    const p = tcpPacket(SYN, [...MSS(1380), 1, 1, 4, 2, 1, 3, 3, 7]);
    expect(clampTcpMss(p, 0, p.length, 1342, false)).toBe(true);
    expect(mssOf(p)).toBe(1342);
    expect(p.readUInt16BE(36)).toBe(tcpChecksum(p));
  });

  it('clamps a SYN-ACK too, with the MSS after other options', () => {
    const p = tcpPacket(SYN | ACK, [1, 1, 4, 2, ...MSS(1460)]);
    expect(clampTcpMss(p, 0, p.length, 1342, false)).toBe(true);
    expect(mssOf(p)).toBe(1342);
    expect(p.readUInt16BE(36)).toBe(tcpChecksum(p));
  });

  it('leaves the checksum alone when the kernel completes it (partial)', () => {
    const p = tcpPacket(SYN, MSS(1380));
    const before = p.readUInt16BE(36);
    expect(clampTcpMss(p, 0, p.length, 1342, true)).toBe(true);
    expect(mssOf(p)).toBe(1342);
    expect(p.readUInt16BE(36)).toBe(before);
  });

  it('changes nothing for a smaller MSS, a non-SYN, no MSS option, UDP or a fragment', () => {
    const cases = [
      tcpPacket(SYN, MSS(1200)),
      tcpPacket(ACK, MSS(1380), 100),
      tcpPacket(SYN, [1, 1, 1, 1]),
      (() => {
        const p = tcpPacket(SYN, MSS(1380));
        p[9] = 17;
        return p;
      })(),
      (() => {
        const p = tcpPacket(SYN, MSS(1380));
        p.writeUInt16BE(0x2000, 6); // more fragments
        return p;
      })(),
    ];
    for (const p of cases) {
      const copy = Buffer.from(p);
      expect(clampTcpMss(p, 0, p.length, 1342, false)).toBe(false);
      expect(p.equals(copy)).toBe(true);
    }
  });

  it('never throws or writes outside the packet on malformed or random input', () => {
    const next = seeded(5);
    const rng = { int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)) };
    const arena = Buffer.alloc(256);
    for (let n = 0; n < 20_000; n++) {
      arena.fill(0xee);
      const len = rng.int(0, 100);
      const p = n % 2 === 0 ? tcpPacket(SYN, MSS(1460)) : Buffer.alloc(len);
      for (let k = 0; k < 4; k++) p[rng.int(0, Math.max(0, p.length - 1))] = rng.int(0, 255);
      p.copy(arena, 64);
      const cut = Math.min(p.length, rng.int(0, p.length));
      expect(() => clampTcpMss(arena, 64, cut, 1342, rng.int(0, 1) === 1)).not.toThrow();
      // nothing after the packet's (cut) end was touched
      expect(arena.subarray(64 + Math.max(cut, p.length)).every((x) => x === 0xee)).toBe(true);
    }
  });
});

describe('clampTcpMss over IPv6', () => {
  /** The IPv4 segment's TCP part behind an IPv6 fixed header (fd00::/8 overlay addresses), checksum recomputed. */
  function tcp6(flags: number, options: number[]): Buffer {
    const tcp = tcpPacket(flags, options).subarray(20);
    const b = Buffer.alloc(40 + tcp.length);
    b[0] = 0x60;
    b.writeUInt16BE(tcp.length, 4);
    b[6] = 6;
    b[7] = 64;
    Buffer.from('fd123456789000000000000064400001', 'hex').copy(b, 8);
    Buffer.from('fd123456789000000000000064400002', 'hex').copy(b, 24);
    tcp.copy(b, 40);
    b.writeUInt16BE(tcp6Checksum(b), 56);
    return b;
  }
  function tcp6Checksum(b: Buffer): number {
    const ph = Buffer.alloc(40);
    b.copy(ph, 0, 8, 40);
    ph.writeUInt32BE(b.length - 40, 32);
    ph[39] = 6;
    const saved = b.readUInt16BE(56);
    b.writeUInt16BE(0, 56);
    let s = sum16(ph, 0, 40) + sum16(b, 40, b.length - 40);
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    b.writeUInt16BE(saved, 56);
    return ~s & 0xffff;
  }

  it('an IPv6 SYN gets 20 bytes less than an IPv4 one (its header is 20 bytes longer), checksum kept right', () => {
    const p = tcp6(SYN, [...MSS(1440), 1, 1, 4, 2]);
    expect(clampTcpMss(p, 0, p.length, 1342, false)).toBe(true);
    expect(p.readUInt16BE(60 + 2)).toBe(1322);
    expect(p.readUInt16BE(56)).toBe(tcp6Checksum(p));
    const small = tcp6(SYN, MSS(1300));
    expect(clampTcpMss(small, 0, small.length, 1342, false)).toBe(false);
    const notSyn = tcp6(ACK, MSS(1440));
    expect(clampTcpMss(notSyn, 0, notSyn.length, 1342, false)).toBe(false);
    const ext = tcp6(SYN, MSS(1440));
    ext[6] = 0; // hop-by-hop header first: not parsed, left alone
    expect(clampTcpMss(ext, 0, ext.length, 1342, false)).toBe(false);
  });
});
