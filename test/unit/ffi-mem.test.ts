import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { allocNative } from '../../src/os/ffi/mem';

function rssAnonKiB(): number {
  return Number(/^RssAnon:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]);
}

describe('allocNative', () => {
  it('gives zeroed memory, also after a block was written and freed', () => {
    for (let round = 0; round < 2; round++) {
      const blocks = [64, 4096, 200_000, 1 << 20].map((n) => allocNative(n));
      for (const b of blocks) {
        expect(b.buf.every((x) => x === 0)).toBe(true);
        b.buf.fill(0xa5);
      }
      for (const b of blocks) b.free();
    }
  });

  it('leaves a large block untouched until used: 8 MiB cost no RSS until written', () => {
    const before = rssAnonKiB();
    const b = allocNative(8 << 20);
    const untouched = rssAnonKiB() - before;
    b.buf.fill(1);
    const touched = rssAnonKiB() - before;
    b.free();
    expect(untouched).toBeLessThan(1024);
    expect(touched).toBeGreaterThan(7 * 1024);
  });
});
