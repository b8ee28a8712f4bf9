/**
 * Scratch areas carved from a batch's own block (PacketBatch.carve) and copyBytes: the worker keeps
 * its TUN landing buffer, UDP GRO landing and TUN coalescer there, so a packet is copied within one
 * Buffer (copyWithin) instead of between two (Buffer.copy makes a view and calls set).
 */
import { describe, expect, it } from 'vitest';
import { copyBytes, PacketBatch, slotSizeFor, spareFor } from '../../src/dataplane/batch';

const FAKE_PTR = 1n << 40n; // carve needs native memory; these tests only use the offsets

describe('PacketBatch.carve', () => {
  it('hands out 64-byte aligned areas after the slots, never overlapping, until the block is used up', () => {
    const slot = slotSizeFor(1420);
    const cap = 4;
    const batch = new PacketBatch(Buffer.alloc(slot * cap + spareFor(100, 1000)), slot, cap, FAKE_PTR);
    const a = batch.carve(100)!;
    const b = batch.carve(1000)!;
    expect(a.off).toBeGreaterThanOrEqual(slot * cap);
    expect(a.off % 64).toBe(0);
    expect(b.off % 64).toBe(0);
    expect(b.off).toBeGreaterThanOrEqual(a.off + 100);
    expect(b.off + 1000).toBeLessThanOrEqual(batch.buf.length);
    expect([a.ptr, b.ptr]).toEqual([FAKE_PTR + BigInt(a.off), FAKE_PTR + BigInt(b.off)]);
    expect(batch.carve(200)).toBeNull(); // what is left (alignment slack) is smaller
  });

  it('gives nothing from a block without room, or from memory that is not native', () => {
    const slot = slotSizeFor(1420);
    expect(new PacketBatch(Buffer.alloc(slot * 2), slot, 2, FAKE_PTR).carve(1)).toBeNull();
    expect(new PacketBatch(Buffer.alloc(slot * 2 + spareFor(4096)), slot, 2).carve(4096)).toBeNull();
  });
});

describe('copyBytes', () => {
  it('copies like Buffer.copy, within one Buffer (overlapping too) and between two', () => {
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    for (let t = 0; t < 2000; t++) {
      const size = 1 + rnd(3000);
      const base = Buffer.from(Array.from({ length: size }, () => rnd(256)));
      const s = rnd(size);
      const e = s + rnd(size - s + 1);
      const d = rnd(size);
      // within one Buffer: against a copy of the source taken first (memmove semantics)
      const one = Buffer.from(base);
      copyBytes(one, one, d, s, e);
      const want = Buffer.from(base);
      Buffer.from(base).copy(want, d, s, e);
      expect(one.equals(want), `size ${size} [${s}, ${e}) -> ${d}`).toBe(true);
      // between two
      const dst = Buffer.alloc(size);
      copyBytes(base, dst, d, s, e);
      const want2 = Buffer.alloc(size);
      base.copy(want2, d, s, e);
      expect(dst.equals(want2)).toBe(true);
    }
  });
});
