import { describe, expect, it } from 'vitest';
import {
  checkHeader,
  COUNTER_LIMIT,
  CTRL_LEN,
  HEADER_LEN,
  ipv4Dst,
  ipv4Src,
  OVERHEAD,
  readCounter,
  readReceiverIndex,
  TAG_LEN,
  TYPE_DATA,
  UNDERLAY_OVERHEAD,
  writeHeader, FLAG_CSUM_PARTIAL } from '../../src/dataplane/wire';

describe('wire constants', () => {
  it('have the documented sizes', () => {
    expect(TYPE_DATA).toBe(4);
    expect(HEADER_LEN).toBe(16);
    expect(TAG_LEN).toBe(16);
    expect(OVERHEAD).toBe(32);
    expect(UNDERLAY_OVERHEAD).toBe(28);
    expect(CTRL_LEN).toBe(10); // 0x00, kind, f64
    expect(COUNTER_LIMIT).toBe(2 ** 52);
    expect(Number.isSafeInteger(COUNTER_LIMIT)).toBe(true);
  });
});

describe('header', () => {
  it.each([
    [0, 0],
    [1, 1],
    [0xdeadbeef, 0xffffffff],
    [0xffffffff, 2 ** 32],
    [7, 2 ** 32 + 5],
    [123456, 0x1234_5678_9abc],
    [1, COUNTER_LIMIT - 1],
  ])('round-trips index %d counter %d', (index, counter) => {
    const buf = Buffer.alloc(40, 0xaa);
    writeHeader(buf, 3, index, counter);
    expect(readReceiverIndex(buf, 3)).toBe(index);
    expect(readCounter(buf, 3)).toBe(counter);
    expect(checkHeader(buf, 3, HEADER_LEN + TAG_LEN)).toBeNull();
    // Bytes around the header are untouched.
    expect(buf[2]).toBe(0xaa);
    expect(buf[3 + HEADER_LEN]).toBe(0xaa);
  });

  it('writes the documented little-endian layout', () => {
    const buf = Buffer.alloc(HEADER_LEN);
    writeHeader(buf, 0, 0x04030201, 0x000c0b0a_09080706);
    expect(buf.toString('hex')).toBe('04000000' + '01020304' + '060708090a0b0c00');
  });

  it('writes the counter split across 32-bit halves beyond 2^32', () => {
    const buf = Buffer.alloc(HEADER_LEN);
    const counter = 5 * 2 ** 32 + 9;
    writeHeader(buf, 0, 1, counter);
    expect(buf.readUInt32LE(8)).toBe(9);
    expect(buf.readUInt32LE(12)).toBe(5);
  });

  it('treats a negative-looking index as unsigned', () => {
    const buf = Buffer.alloc(HEADER_LEN);
    writeHeader(buf, 0, -1, 0);
    expect(readReceiverIndex(buf, 0)).toBe(0xffffffff);
  });
});

describe('checkHeader', () => {
  const valid = (): Buffer => {
    const b = Buffer.alloc(64);
    writeHeader(b, 0, 9, 9);
    return b;
  };

  it('accepts exactly header + tag and anything longer', () => {
    expect(checkHeader(valid(), 0, OVERHEAD)).toBeNull();
    expect(checkHeader(valid(), 0, 64)).toBeNull();
  });

  it.each([0, 1, 15, 16, 31])('length %d is short', (len) => {
    expect(checkHeader(valid(), 0, len)).toBe('short');
  });

  it.each([0, 1, 2, 3, 5, 255])('type byte %d is refused', (t) => {
    const b = valid();
    b[0] = t;
    expect(checkHeader(b, 0, 64)).toBe('type');
  });

  it.each([2, 3])('non-zero reserved byte %d is refused', (i) => {
    const b = valid();
    b[i] = 1;
    expect(checkHeader(b, 0, 64)).toBe('type');
  });

  it('accepts the checksum-partial flag and refuses unknown flag bits', () => {
    const b = valid();
    b[1] = FLAG_CSUM_PARTIAL;
    expect(checkHeader(b, 0, 64)).toBeNull();
    for (const bit of [0x02, 0x04, 0x80]) {
      b[1] = bit | FLAG_CSUM_PARTIAL;
      expect(checkHeader(b, 0, 64)).toBe('type');
    }
  });

  it('writes flags into byte 1', () => {
    const b = Buffer.alloc(16);
    writeHeader(b, 0, 7, 9, FLAG_CSUM_PARTIAL);
    expect(b[1]).toBe(FLAG_CSUM_PARTIAL);
    expect(checkHeader(b, 0, 64)).toBeNull();
  });

  it('checks at the given offset', () => {
    const b = Buffer.alloc(100, 0xff);
    writeHeader(b, 50, 1, 2);
    expect(checkHeader(b, 50, 50)).toBeNull();
    expect(checkHeader(b, 0, 50)).toBe('type');
  });

  it('reports short before type', () => {
    const b = Buffer.alloc(64, 0xff);
    expect(checkHeader(b, 0, OVERHEAD - 1)).toBe('short');
  });
});

describe('inner IPv4 addresses', () => {
  it('reads source and destination big-endian at 12 and 16', () => {
    const b = Buffer.alloc(30);
    b.set([10, 0, 0, 1], 2 + 12);
    b.set([192, 168, 1, 254], 2 + 16);
    expect(ipv4Src(b, 2)).toBe(0x0a000001);
    expect(ipv4Dst(b, 2)).toBe(0xc0a801fe);
  });
});
