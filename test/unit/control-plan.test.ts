import { describe, expect, it } from 'vitest';
import { planOverlayPrefixes, PLAN_POOLS, SOFT_AVOID } from '../../src/control/plan';
import { formatPrefix, overlaps, parsePrefix, Prefix, prefixSize } from '../../src/util/ipv4';
import { rng } from '../helpers/rng';

const P = (s: string): Prefix => parsePrefix(s, true)!;
const fmt = (l: Prefix[]) => l.map(formatPrefix);

/** mulberry32: a small seeded PRNG, so failures reproduce. */
function randomUsed(r: () => number): Prefix[] {
  const n = Math.floor(r() * 40);
  const out: Prefix[] = [];
  for (let i = 0; i < n; i++) {
    // Mostly inside the pools (that is where it matters), sometimes anywhere.
    const pool = PLAN_POOLS[Math.floor(r() * PLAN_POOLS.length)]!;
    const len = 8 + Math.floor(r() * 25); // 8..32
    const base = r() < 0.8 ? pool.base + Math.floor(r() * prefixSize(pool)) : Math.floor(r() * 2 ** 32);
    out.push(parsePrefix(`${(base >>> 24) & 255}.${(base >>> 16) & 255}.${(base >>> 8) & 255}.${base & 255}/${len}`, false)!);
  }
  return out;
}

/** Every aligned block of `len` in the pools that overlaps nothing used (brute force). */
function allFree(used: Prefix[], len: number): Set<string> {
  const out = new Set<string>();
  for (const pool of PLAN_POOLS) {
    if (len < pool.len) continue;
    const size = 2 ** (32 - len);
    for (let b = pool.base; b < pool.base + prefixSize(pool); b += size) {
      const blk = { base: b, len };
      if (!used.some((u) => overlaps(u, blk))) out.add(formatPrefix(blk));
    }
  }
  return out;
}

describe('planOverlayPrefixes: exact cases', () => {
  it('with nothing used, prefers 100.64/10 from its start', () => {
    expect(fmt(planOverlayPrefixes({ used: [] }))).toEqual([
      '100.64.0.0/16',
      '100.65.0.0/16',
      '100.66.0.0/16',
      '100.67.0.0/16',
      '100.68.0.0/16',
    ]);
  });

  it('steps around used ranges of any size, including ones that contain a whole block', () => {
    const used = [P('100.64.0.0/15'), P('100.66.7.0/24'), P('100.68.0.0/14'), P('100.72.1.1/32')];
    expect(fmt(planOverlayPrefixes({ used, limit: 3 }))).toEqual(['100.67.0.0/16', '100.73.0.0/16', '100.74.0.0/16']);
  });

  it('a used range larger than the requested block removes every block inside it', () => {
    const used = [P('100.64.0.0/10')];
    expect(fmt(planOverlayPrefixes({ used, limit: 2 }))).toEqual(['10.1.0.0/16', '10.2.0.0/16']); // 10.0/16 soft-avoided
  });

  it('commonly-used ranges come last, not never', () => {
    const used = [P('100.64.0.0/10'), P('10.0.0.0/8'), P('172.16.0.0/12'), P('192.168.2.0/23'), P('192.168.4.0/22'), P('192.168.8.0/21'), P('192.168.16.0/20'), P('192.168.32.0/19'), P('192.168.64.0/18'), P('192.168.128.0/17')];
    expect(fmt(planOverlayPrefixes({ used, prefixLen: 24 }))).toEqual(['192.168.0.0/24', '192.168.1.0/24']);
    expect(fmt(planOverlayPrefixes({ used, prefixLen: 24, softAvoid: [] }))).toEqual(['192.168.0.0/24', '192.168.1.0/24']);
  });

  it('returns nothing when everything is used, and /8 only fits 10/8', () => {
    expect(planOverlayPrefixes({ used: [P('0.0.0.0/0')] })).toEqual([]);
    expect(fmt(planOverlayPrefixes({ used: [], prefixLen: 8 }))).toEqual(['10.0.0.0/8']);
    expect(planOverlayPrefixes({ used: [P('10.200.0.0/16')], prefixLen: 8 })).toEqual([]);
  });

  it('the CB-Larva bug: a /16 host network does not make a "shorter prefix" range safe', () => {
    // The reference compared prefix lengths only and proposed 10.0.0.0/8-style ranges that contained the hosts.
    const used = [P('10.0.0.0/16'), P('172.31.0.0/16'), P('192.168.0.0/16')];
    const got = planOverlayPrefixes({ used, prefixLen: 12, limit: 10 });
    for (const g of got) for (const u of used) expect(overlaps(g, u)).toBe(false);
    // 100.96.0.0/12 holds 100.100/16 (soft-avoided); 10.0.0.0/12 holds the used 10.0/16.
    expect(fmt(got).slice(0, 4)).toEqual(['100.64.0.0/12', '100.80.0.0/12', '100.112.0.0/12', '10.16.0.0/12']);
  });

  it('validates prefixLen and limit', () => {
    expect(() => planOverlayPrefixes({ used: [], prefixLen: 7 })).toThrow(/^prefixLen: 7 must be an integer in 8\.\.30$/);
    expect(() => planOverlayPrefixes({ used: [], prefixLen: 31 })).toThrow(/prefixLen/);
    expect(() => planOverlayPrefixes({ used: [], limit: 0 })).toThrow(/limit/);
  });
});

describe('planOverlayPrefixes: properties (seeded random inputs)', () => {
  it('never overlaps the inputs; results are aligned, in a pool, distinct, sorted by preference', () => {
    for (let seed = 1; seed <= 400; seed++) {
      const r = rng(seed);
      const used = randomUsed(r);
      const prefixLen = 8 + Math.floor(r() * 23);
      const limit = 1 + Math.floor(r() * 20);
      const got = planOverlayPrefixes({ used, prefixLen, limit });
      expect(got.length).toBeLessThanOrEqual(limit);
      const seen = new Set<string>();
      for (const g of got) {
        const ctx = `seed ${seed}: ${formatPrefix(g)}`;
        expect(g.len, ctx).toBe(prefixLen);
        expect(parsePrefix(formatPrefix(g), true), ctx).not.toBeNull(); // aligned
        expect(PLAN_POOLS.some((pool) => pool.len <= g.len && overlaps(pool, g)), ctx).toBe(true);
        for (const u of used) expect(overlaps(g, u), `${ctx} overlaps ${formatPrefix(u)}`).toBe(false);
        expect(seen.has(formatPrefix(g)), ctx).toBe(false);
        seen.add(formatPrefix(g));
      }
    }
  });

  it('is complete: fewer results than asked means there are no other free blocks', () => {
    for (let seed = 1; seed <= 150; seed++) {
      const r = rng(seed * 7919);
      const used = randomUsed(r);
      // Coarse sizes keep the brute force small; cover the pools heavily so results run out.
      for (let i = 0; i < 30; i++) {
        const pool = PLAN_POOLS[i % PLAN_POOLS.length]!;
        const offset = Math.floor(r() * (prefixSize(pool) / 65536)) * 65536;
        used.push({ base: pool.base + offset, len: 16 });
      }
      const prefixLen = 12 + Math.floor(r() * 7); // 12..18
      const free = allFree(used, prefixLen);
      const got = fmt(planOverlayPrefixes({ used, prefixLen, limit: 100_000 }));
      expect(new Set(got), `seed ${seed}`).toEqual(free);
    }
  });

  it('prefers blocks clear of SOFT_AVOID', () => {
    const soft = SOFT_AVOID.map((s) => s.prefix);
    for (let seed = 1; seed <= 100; seed++) {
      const r = rng(seed * 31);
      const got = planOverlayPrefixes({ used: randomUsed(r), prefixLen: 16, limit: 1000 });
      const isSoft = got.map((g) => soft.some((s) => overlaps(s, g)));
      const firstSoft = isSoft.indexOf(true);
      if (firstSoft >= 0) expect(isSoft.slice(firstSoft).every(Boolean), `seed ${seed}`).toBe(true);
    }
  });
});
