import { describe, expect, it } from 'vitest';
import { REPLAY_WINDOW, ReplayWindow } from '../../src/dataplane/replay';
import { COUNTER_LIMIT } from '../../src/dataplane/wire';
import { rng } from '../helpers/rng';

/** Deterministic PRNG (mulberry32) so a failure reproduces. */

/** The specification, written the obvious way: every accepted counter in a Set. */
class ReferenceWindow {
  private readonly seen = new Set<number>();
  private greatest = 0;
  constructor(private readonly limit: number) {}

  mayAccept(c: number): boolean {
    if (c >= this.limit) return false;
    if (c > this.greatest) return true;
    if (this.greatest - c >= REPLAY_WINDOW) return false;
    return !this.seen.has(c);
  }

  accept(c: number): boolean {
    if (!this.mayAccept(c)) return false;
    this.seen.add(c);
    if (c > this.greatest) {
      this.greatest = c;
      // Forget what the window can no longer reach (keeps the Set small; does not change answers).
      if (this.seen.size > 4 * REPLAY_WINDOW) {
        for (const x of this.seen) if (this.greatest - x >= REPLAY_WINDOW) this.seen.delete(x);
      }
    }
    return true;
  }

  get highest(): number {
    return this.greatest;
  }
}

describe('ReplayWindow', () => {
  it('window is 127 words of 32 bits', () => {
    expect(REPLAY_WINDOW).toBe(4064);
  });

  it('accepts in-order counters once each, starting at 0', () => {
    const w = new ReplayWindow(COUNTER_LIMIT);
    for (let c = 0; c < 10_000; c++) expect(w.accept(c)).toBe(true);
    expect(w.highest).toBe(9_999);
    for (let c = 9_990; c < 10_000; c++) expect(w.accept(c)).toBe(false);
  });

  it('refuses duplicates, including counter 0 and the highest', () => {
    const w = new ReplayWindow(COUNTER_LIMIT);
    expect(w.accept(0)).toBe(true);
    expect(w.accept(0)).toBe(false);
    expect(w.accept(5)).toBe(true);
    expect(w.accept(5)).toBe(false);
    expect(w.mayAccept(5)).toBe(false);
    expect(w.accept(3)).toBe(true);
    expect(w.accept(3)).toBe(false);
  });

  it('accepts out-of-order counters within the window exactly once', () => {
    const w = new ReplayWindow(COUNTER_LIMIT);
    expect(w.accept(1000)).toBe(true);
    const order = [999, 3, 500, 0, 998, 1];
    for (const c of order) expect(w.accept(c)).toBe(true);
    for (const c of order) expect(w.accept(c)).toBe(false);
    expect(w.highest).toBe(1000);
    expect(w.accept(2)).toBe(true);
  });

  // Every alignment of the highest counter within its 32-bit word.
  it.each(Array.from({ length: 32 }, (_, i) => 20_000 + i))('window edge with highest %d', (g) => {
    const w = new ReplayWindow(COUNTER_LIMIT);
    expect(w.accept(g)).toBe(true);
    expect(w.mayAccept(g - REPLAY_WINDOW)).toBe(false);
    expect(w.accept(g - REPLAY_WINDOW)).toBe(false);
    expect(w.mayAccept(g - (REPLAY_WINDOW - 1))).toBe(true);
    expect(w.accept(g - (REPLAY_WINDOW - 1))).toBe(true);
    expect(w.accept(g - (REPLAY_WINDOW - 1))).toBe(false);
    expect(w.accept(g - 1)).toBe(true);
  });

  it('a big jump clears the whole ring (bits of aliased old counters do not leak)', () => {
    const w = new ReplayWindow(COUNTER_LIMIT);
    for (let c = 0; c < 4096; c++) w.accept(c); // every bit of the ring set
    const g = 3 * 4096 + 100;
    expect(w.accept(g)).toBe(true);
    for (let c = g - (REPLAY_WINDOW - 1); c < g; c++) expect(w.mayAccept(c)).toBe(true);
    for (let c = g - (REPLAY_WINDOW - 1); c < g; c++) expect(w.accept(c)).toBe(true);
    for (let c = g - (REPLAY_WINDOW - 1); c <= g; c++) expect(w.accept(c)).toBe(false);
  });

  it('a small jump clears only the words it moves over', () => {
    const w = new ReplayWindow(COUNTER_LIMIT);
    for (let c = 0; c < 4096; c++) w.accept(c);
    const g = 4096 + 50;
    expect(w.accept(g)).toBe(true);
    // Newly reachable counters alias old set bits but were cleared.
    for (let c = 4096; c < g; c++) expect(w.accept(c)).toBe(true);
    // Counters still in the window that were accepted before stay refused.
    for (let c = g - (REPLAY_WINDOW - 1); c < 4096; c++) expect(w.accept(c)).toBe(false);
  });

  it('refuses counters at or above the limit without moving', () => {
    const w = new ReplayWindow(1000);
    expect(w.accept(999)).toBe(true);
    expect(w.mayAccept(1000)).toBe(false);
    expect(w.accept(1000)).toBe(false);
    expect(w.accept(5000)).toBe(false);
    expect(w.highest).toBe(999);
    expect(w.accept(998)).toBe(true);
  });

  it('handles counters beyond 2^32', () => {
    const w = new ReplayWindow(COUNTER_LIMIT);
    const base = 2 ** 32 - 3;
    for (let c = base; c < base + 10; c++) expect(w.accept(c)).toBe(true);
    for (let c = base; c < base + 10; c++) expect(w.accept(c)).toBe(false);
    expect(w.highest).toBe(base + 9);
    expect(w.accept(COUNTER_LIMIT - 1)).toBe(true);
    expect(w.accept(COUNTER_LIMIT - 2)).toBe(true);
    expect(w.accept(COUNTER_LIMIT - 2)).toBe(false);
  });

  it('mayAccept has no side effects', () => {
    const a = new ReplayWindow(COUNTER_LIMIT);
    const b = new ReplayWindow(COUNTER_LIMIT);
    for (const c of [10, 4, 7]) {
      a.accept(c);
      b.accept(c);
    }
    for (const c of [0, 4, 5, 11, 100_000, 10]) a.mayAccept(c);
    expect(a.highest).toBe(10);
    for (const c of [0, 4, 5, 6, 7, 11, 100_000, 10, 100_000]) expect(a.accept(c)).toBe(b.accept(c));
    expect(a.highest).toBe(b.highest);
  });

  it('reset forgets everything', () => {
    const w = new ReplayWindow(COUNTER_LIMIT);
    for (let c = 0; c < 50; c++) w.accept(c);
    w.reset();
    expect(w.highest).toBe(0);
    for (let c = 0; c < 50; c++) expect(w.accept(c)).toBe(true);
  });

  it('agrees with a Set-based reference over 100k random operations', () => {
    const r = rng(0xc1ad);
    const limit = COUNTER_LIMIT;
    const w = new ReplayWindow(limit);
    const ref = new ReferenceWindow(limit);
    const OPS = 100_000;
    let accepted = 0;
    let refused = 0;
    let mismatch: string | null = null;
    const recent: number[] = [];
    for (let op = 0; op < OPS && mismatch === null; op++) {
      const g = ref.highest;
      const x = r();
      let c: number;
      if (op >= OPS - 500 && x < 0.3) c = limit - 1 - Math.floor(r() * 8); // near the limit, at the end
      else if (op >= OPS - 500 && x < 0.4) c = limit + Math.floor(r() * 4); // at or past the limit
      else if (x < 0.35) c = g + 1 + Math.floor(r() * 4); // mostly in order
      else if (x < 0.5) c = g - Math.floor(r() * 64); // slightly late or duplicate
      else if (x < 0.65) c = g - Math.floor(r() * (REPLAY_WINDOW + 64)); // anywhere near the edge
      else if (x < 0.72) c = g - REPLAY_WINDOW + Math.floor(r() * 3) - 1; // exactly at the edge
      else if (x < 0.8 && recent.length > 0) c = recent[Math.floor(r() * recent.length)]!; // replay
      else if (x < 0.85) c = g + 1 + Math.floor(r() * 3 * 4096); // jump up to a few rings
      else if (x < 0.86) c = g + 1 + Math.floor(r() * 2 ** 33); // huge jump, crossing 2^32
      else c = g + Math.floor(r() * 200) - 100;
      c = Math.max(0, c);
      const pre = w.mayAccept(c);
      const refPre = ref.mayAccept(c);
      const got = w.accept(c);
      const want = ref.accept(c);
      if (pre !== refPre || got !== want || got !== pre || w.highest !== ref.highest) {
        mismatch = `op ${op}: counter ${c}, highest before ${g}: mayAccept ${pre} (want ${refPre}), accept ${got} (want ${want}), highest ${w.highest} (want ${ref.highest})`;
      }
      if (got) {
        accepted++;
        recent.push(c);
        if (recent.length > 256) recent.shift();
      } else refused++;
    }
    expect(mismatch).toBeNull();
    expect(accepted + refused).toBe(OPS);
    // The generator exercised both outcomes substantially, and crossed 2^32.
    expect(accepted).toBeGreaterThan(10_000);
    expect(refused).toBeGreaterThan(10_000);
    expect(w.highest).toBeGreaterThan(2 ** 32);
  });
});
