/**
 * Fuzz: the wire-header readers in src/dataplane/wire.ts (checkHeader, readReceiverIndex,
 * readCounter) on random buffers, offsets and lengths, against a reference written from the
 * format comment in wire.ts: 'short' below header + tag; 'type' unless type 4, only known flag
 * bits, zero reserved bytes; otherwise the index and the 64-bit counter read little-endian.
 *
 * checkHeader indexes bytes and must never throw, even when told a length the buffer does not
 * have. The readers' contract is that the caller checked the header first; under that contract
 * they never throw and return exact values (the counter compared as a BigInt, rounded as a
 * number exactly once; COUNTER_LIMIT comparisons agree with BigInt ones).
 */
import { describe, expect, it } from 'vitest';
import {
  checkHeader,
  COUNTER_LIMIT,
  FLAG_CSUM_PARTIAL,
  HEADER_LEN,
  OVERHEAD,
  readCounter,
  readReceiverIndex,
  TYPE_DATA,
  writeHeader,
  type HeaderVerdict,
} from '../../src/dataplane/wire';
import { casesFor, check, fuzz, FUZZ_PLAN, FUZZ_TOTAL, INTERESTING_32, INTERESTING_8, mutate, type FuzzTarget, type Rand } from '../helpers/fuzz';

function refVerdict(buf: Buffer, off: number, len: number): HeaderVerdict {
  if (len < OVERHEAD) return 'short';
  const at = (i: number): number => (off + i < buf.length ? buf[off + i]! : -1);
  if (at(0) !== TYPE_DATA || at(1) < 0 || (at(1) & ~FLAG_CSUM_PARTIAL) !== 0 || at(2) !== 0 || at(3) !== 0) return 'type';
  return null;
}

/** A buffer with a header at `off`: random, plausible, or a valid one with some edits. */
function input(r: Rand): { buf: Buffer; off: number; len: number } {
  const size = r.chance(0.3) ? r.int(0, 48) : r.int(0, 2100);
  const buf = r.bytes(size);
  const off = size === 0 ? 0 : r.chance(0.5) ? 0 : r.int(0, size);
  if (off + HEADER_LEN <= size && r.chance(0.7)) {
    const counter = r.pick([0, 1, 2 ** 32 - 1, 2 ** 32, COUNTER_LIMIT - 1, COUNTER_LIMIT, 2 ** 53 - 1, r.u32() * 2 ** 21 + r.u32(), r.u32()]);
    writeHeader(buf, off, r.pick([...INTERESTING_32, r.u32()]), counter, r.chance(0.7) ? r.int(0, 1) : r.pick(INTERESTING_8));
    if (r.chance(0.3)) buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(r.u32()) * 2n ** 32n + BigInt(r.u32())), off + 8);
    if (r.chance(0.4)) mutate(r, buf.subarray(off, off + HEADER_LEN), 2).copy(buf, off, 0, HEADER_LEN);
  }
  // Mostly the bytes that are there; sometimes a length beyond the buffer (caller bug) or anything.
  const room = size - off;
  const len = r.chance(0.8) ? r.int(0, room) : r.pick([room + 1, OVERHEAD, OVERHEAD - 1, 65535, 2 ** 31 - 1, r.int(0, 4000)]);
  return { buf, off, len };
}

describe('fuzz budget', () => {
  it('the parsers\' shares add up, and to at least 100,000 cases unless CLADNET_FUZZ_CASES says otherwise', () => {
    const targets = Object.keys(FUZZ_PLAN) as FuzzTarget[];
    expect(targets.reduce((s, t) => s + FUZZ_PLAN[t], 0)).toBeCloseTo(1, 9);
    const total = targets.reduce((s, t) => s + casesFor(t), 0);
    console.log(`fuzz budget: ${total} cases over ${targets.length} parsers (CLADNET_FUZZ_CASES=${FUZZ_TOTAL})`);
    if (process.env['CLADNET_FUZZ_CASES'] === undefined) expect(total).toBeGreaterThanOrEqual(100_000);
  });
});

describe('fuzz: wire header', () => {
  it('checkHeader never throws and agrees with the format; the readers are exact when it passes', () => {
    const verdicts = { short: 0, type: 0, ok: 0, overLimit: 0 };
    fuzz('wire', casesFor('wire'), (r, _i, note) => {
      const { buf, off, len } = input(r);
      note.input = buf.subarray(off, off + HEADER_LEN);
      note.what = `buffer of ${buf.length}, off ${off}, len ${len}`;
      const v = checkHeader(buf, off, len);
      const want = refVerdict(buf, off, len);
      check(v === want, () => `checkHeader = ${v}, reference ${want}`);
      if (v !== null) {
        verdicts[v]++;
        return;
      }
      if (off + HEADER_LEN > buf.length) return; // the caller's length was a lie: readers not called
      verdicts.ok++;
      const index = readReceiverIndex(buf, off);
      const want64 = buf.readBigUInt64LE(off + 8);
      check(index === buf.readUInt32LE(off + 4) && index >= 0 && index <= 0xffffffff, `receiver index ${index}`);
      const counter = readCounter(buf, off);
      check(Number.isInteger(counter) && counter >= 0, `counter ${counter}`);
      check(counter === Number(want64), () => `counter ${counter}, expected ${want64}`);
      check(counter >= COUNTER_LIMIT === want64 >= BigInt(COUNTER_LIMIT), 'COUNTER_LIMIT comparison differs from the exact one');
      if (want64 >= BigInt(COUNTER_LIMIT)) verdicts.overLimit++;
      // Round trip where the value is representable: writeHeader(read values) gives the same header.
      if (want64 < 2n ** 53n) {
        const again = Buffer.alloc(HEADER_LEN);
        writeHeader(again, 0, index, counter, buf[off + 1]);
        check(again.equals(buf.subarray(off, off + HEADER_LEN)), 'header does not round-trip');
      }
    });
    expect(Math.min(verdicts.short, verdicts.type, verdicts.ok, verdicts.overLimit)).toBeGreaterThan(casesFor('wire') / 100);
  });
});
