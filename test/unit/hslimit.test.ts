import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../src/dataplane/fakes';
import {
  HandshakeLimiter,
  HS_ALLOW,
  HS_BURST,
  HS_GLOBAL_BURST,
  HS_GLOBAL_RATE,
  HS_GLOBAL_RESERVE,
  HS_OVER_BUDGET,
  HS_RATE,
  HS_SOURCE_LIMITED,
  HS_TABLE_SETS,
  HS_TABLE_WAYS,
} from '../../src/dataplane/hslimit';

/** The handshake flood limiter (src/dataplane/hslimit.ts) on a hand-driven clock. */
const SEED = new Uint32Array([0x1234_5678, 0x9abc_def0]);
const base = (0xc6_13_00_00 >>> 0) as number; // 198.19.0.0: a block of spoofed sources

function count(n: number, f: (i: number) => number): Record<number, number> {
  const out: Record<number, number> = { [HS_ALLOW]: 0, [HS_SOURCE_LIMITED]: 0, [HS_OVER_BUDGET]: 0 };
  for (let i = 0; i < n; i++) out[f(i)]! += 1;
  return out;
}

describe('HandshakeLimiter', () => {
  it('one source: HS_BURST at once, then HS_RATE per second', () => {
    const clock = new FakeClock();
    const l = new HandshakeLimiter(clock, { seed: SEED });
    expect(count(HS_BURST + 5, () => l.allowDirect(base, false))).toEqual({ 0: HS_BURST, 1: 5, 2: 0 });
    clock.advance(500);
    expect(count(HS_BURST, () => l.allowDirect(base, false))[HS_ALLOW]).toBe(HS_RATE / 2);
    // Refused messages took no global token (it refilled in the half second, and this source's
    // second round took HS_RATE / 2): the rest is there for others, down to the reserve.
    expect(count(HS_GLOBAL_BURST, (i) => l.allowDirect(base + 1 + i, false))[HS_ALLOW]).toBe(
      HS_GLOBAL_BURST - HS_GLOBAL_RESERVE - HS_RATE / 2,
    );
  });

  it('many sources at once: the global budget holds, and the reserve is left to known peers', () => {
    const clock = new FakeClock();
    const l = new HandshakeLimiter(clock, { seed: SEED });
    // 5,000 sources, 40 messages each, the clock standing still (the 200,000-datagram flood of
    // issue 10: the old table let every one through, and its per-source cap alone was 50,000).
    const r = count(200_000, (i) => l.allowDirect(base + (i % 5000), false));
    expect(r[HS_ALLOW]).toBe(HS_GLOBAL_BURST - HS_GLOBAL_RESERVE);
    expect(r[HS_OVER_BUDGET]! + r[HS_SOURCE_LIMITED]!).toBe(200_000 - r[HS_ALLOW]!);
    // A known peer's endpoint and a relay still get through, from the reserve.
    expect(l.allowDirect(0xc6_12_00_02, true)).toBe(HS_ALLOW);
    expect(l.allowRelayed(3)).toBe(HS_ALLOW);
    expect(count(HS_GLOBAL_RESERVE + 5, (i) => l.allowRelayed(100 + i))[HS_ALLOW]).toBe(HS_GLOBAL_RESERVE - 2);
    // Over time: at most HS_GLOBAL_RATE a second crosses, and the budget is used (all of it but
    // the emptied reserve, which refills first).
    let allowed = 0;
    for (let ms = 0; ms < 3000; ms++) {
      clock.advance(1);
      for (let k = 0; k < 100; k++) if (l.allowDirect(base + ((ms * 100 + k) % 5000), false) === HS_ALLOW) allowed++;
    }
    expect(allowed).toBeLessThanOrEqual(HS_GLOBAL_RATE * 3);
    expect(allowed).toBeGreaterThanOrEqual(HS_GLOBAL_RATE * 3 - HS_GLOBAL_RESERVE - 2);
  });

  it('two workers\' limiters with share 1/2 let through together what one lets through alone', () => {
    const clock = new FakeClock();
    const two = [new HandshakeLimiter(clock, { seed: SEED, share: 0.5 }), new HandshakeLimiter(clock, { seed: SEED, share: 0.5 })];
    // the flood spread over both (as the reuseport steering spreads random sender indices)
    const r = count(200_000, (i) => two[i % 2]!.allowDirect(base + (i % 5000), false));
    expect(r[HS_ALLOW]).toBe(HS_GLOBAL_BURST - HS_GLOBAL_RESERVE);
    let allowed = 0;
    for (let ms = 0; ms < 3000; ms++) {
      clock.advance(1);
      for (let k = 0; k < 100; k++) if (two[k % 2]!.allowDirect(base + ((ms * 100 + k) % 5000), false) === HS_ALLOW) allowed++;
    }
    expect(allowed).toBeLessThanOrEqual(HS_GLOBAL_RATE * 3);
    expect(allowed).toBeGreaterThanOrEqual(HS_GLOBAL_RATE * 3 - HS_GLOBAL_RESERVE - 2);
    // one source spread over both: HS_BURST at once, as with one limiter
    expect(count(HS_BURST + 4, (i) => two[i % 2]!.allowDirect(base + 9999, true))[HS_ALLOW]).toBe(HS_BURST);
    expect(() => new HandshakeLimiter(clock, { share: 0 })).toThrow(RangeError);
  });

  it('a relay is limited per slot like a source, and counted against the global budget', () => {
    const clock = new FakeClock();
    const l = new HandshakeLimiter(clock, { seed: SEED });
    expect(count(HS_BURST + 3, () => l.allowRelayed(7))).toEqual({ 0: HS_BURST, 1: 3, 2: 0 });
    expect(l.allowRelayed(8)).toBe(HS_ALLOW); // another relay has its own bucket
    expect(l.allowRelayed(-1)).toBe(HS_SOURCE_LIMITED); // no such slot
    const r = count(HS_GLOBAL_BURST, (i) => l.allowRelayed(200 + i));
    expect(r[HS_ALLOW]).toBe(HS_GLOBAL_BURST - HS_BURST - 1);
    expect(r[HS_OVER_BUDGET]).toBe(HS_BURST + 1);
  });

  it('memory is fixed: a table of HS_TABLE_SETS x HS_TABLE_WAYS that is never cleared', () => {
    const clock = new FakeClock();
    const l = new HandshakeLimiter(clock, { seed: SEED });
    expect(l.capacity).toBe(HS_TABLE_SETS * HS_TABLE_WAYS);
    // A busy source drains its bucket; then 100,000 other sources pass by while it keeps trying
    // (the clock stands still). The old table was cleared at 4,096 sources, and each clearing
    // gave the busy source a full bucket again.
    const busy = 0xc6_12_07_07;
    for (let i = 0; i < HS_BURST; i++) expect(l.allowDirect(busy, false)).toBe(HS_ALLOW);
    let busyAllowed = 0;
    let last = l.sources;
    let shrank = 0;
    for (let i = 0; i < 100_000; i++) {
      l.allowDirect(base + i, false);
      if (i % 50 === 0 && l.allowDirect(busy, false) === HS_ALLOW) busyAllowed++;
      if (l.sources < last) shrank++; // never reset
      last = l.sources;
    }
    expect(shrank).toBe(0);
    expect(busyAllowed).toBe(0);
    expect(l.sources).toBe(l.capacity);
  });

  it('which set a source falls in depends on the per-process seed', () => {
    const clock = new FakeClock();
    // Find sources that share one set under seed A: with another seed they scatter. An attacker
    // who cannot read the seed cannot pick addresses that crowd one set.
    const a = new HandshakeLimiter(clock, { seed: SEED });
    const b = new HandshakeLimiter(clock, { seed: new Uint32Array([7, 11]) });
    const setOf = (l: HandshakeLimiter, ip: number) => (l as unknown as { hash(ip: number): number }).hash(ip) & (HS_TABLE_SETS - 1);
    const target = setOf(a, base);
    const same: number[] = [];
    for (let i = 1; same.length < 8; i++) if (setOf(a, base + i) === target) same.push(base + i);
    expect(new Set(same.map((ip) => setOf(a, ip)))).toEqual(new Set([target]));
    expect(new Set(same.map((ip) => setOf(b, ip))).size).toBeGreaterThan(4);
    // Two limiters made without a seed draw different ones.
    const c = new HandshakeLimiter(clock);
    const d = new HandshakeLimiter(clock);
    const spread = Array.from({ length: 64 }, (_, i) => setOf(c, base + i) === setOf(d, base + i)).filter(Boolean).length;
    expect(spread).toBeLessThan(8);
  });
});
