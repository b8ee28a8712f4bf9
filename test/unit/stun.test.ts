import * as crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  ATTR_FINGERPRINT,
  ATTR_SOFTWARE,
  crc32,
  encodeBindingError,
  encodeBindingRequest,
  encodeBindingSuccess,
  encodeStun,
  FINGERPRINT_XOR,
  isStunPacket,
  mappedAddress,
  parseStun,
  STUN_MAGIC,
  STUN_METHOD_BINDING,
  stunType,
  xorMappedAddress,
  type StunMessage,
} from '../../src/control/stun';
import { parseIpv4 } from '../../src/util/ipv4';
import { FUZZ_SEED } from '../helpers/fuzz';
import { rng } from '../helpers/rng';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// RFC 5769 §2.1 sample request (software "STUN test client", username "evtj:h6vY", ICE attributes).
const SAMPLE_REQUEST = hex(`
  0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
  8022 0010 5354554e 20746573 7420636c 69656e74
  0024 0004 6e0001ff
  8029 0008 932ff9b1 51263b36
  0006 0009 6576746a 3a683676 59202020
  0008 0014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
  8028 0004 e57a3bcf`);

// RFC 5769 §2.2 sample IPv4 response (software "test vector", mapped 192.0.2.1:32853).
const SAMPLE_IPV4_RESPONSE = hex(`
  0101 003c 2112a442 b7e7a701 bc34d686 fa87dfae
  8022 000b 74657374 20766563 746f7220
  0020 0008 0001a147 e112a643
  0008 0014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
  8028 0004 c07d4c96`);

const RFC_TXID = hex('b7e7a701 bc34d686 fa87dfae');
const RFC_PASSWORD = 'VOkJxbRl1RmTxUk/WvJxBt';

function parsed(buf: Uint8Array, off?: number, len?: number): StunMessage {
  const r = parseStun(buf, off, len);
  if (!r.ok) expect.unreachable(`parse failed: ${r.error}`);
  return r.msg;
}

function errorOf(buf: Uint8Array): string {
  const r = parseStun(buf);
  expect(r.ok).toBe(false);
  return r.ok ? '' : r.error;
}

/** Recomputes the FINGERPRINT of a message that ends in one (after a test edited it). */
function refingerprint(buf: Buffer): Buffer {
  const at = buf.length - 8;
  expect(buf.readUInt16BE(at)).toBe(ATTR_FINGERPRINT);
  buf.writeUInt32BE((crc32(buf, 0, at) ^ FINGERPRINT_XOR) >>> 0, at + 4);
  return buf;
}

describe('RFC 5769 test vectors', () => {
  it('has the documented sizes', () => {
    expect(SAMPLE_REQUEST.length).toBe(20 + 0x58);
    expect(SAMPLE_IPV4_RESPONSE.length).toBe(20 + 0x3c);
  });

  it('the vectors are the RFC bytes: their MESSAGE-INTEGRITY verifies with the RFC password', () => {
    // A check on the test data itself (HMAC-SHA1 over the message up to MESSAGE-INTEGRITY, with
    // the length field covering it); the codec does not verify integrity.
    for (const [msg, at] of [
      [SAMPLE_REQUEST, 20 + 20 + 8 + 12 + 16],
      [SAMPLE_IPV4_RESPONSE, 20 + 16 + 12],
    ] as const) {
      const input = Buffer.from(msg.subarray(0, at));
      input.writeUInt16BE(at - 20 + 24, 2);
      const mac = crypto.createHmac('sha1', RFC_PASSWORD).update(input).digest();
      expect(mac.equals(msg.subarray(at + 4, at + 24))).toBe(true);
    }
  });

  it('parses the sample request (unknown ICE attributes skipped) and verifies its FINGERPRINT', () => {
    expect(isStunPacket(SAMPLE_REQUEST, 0, SAMPLE_REQUEST.length)).toBe(true);
    const m = parsed(SAMPLE_REQUEST);
    expect(m.method).toBe(STUN_METHOD_BINDING);
    expect(m.cls).toBe('request');
    expect(m.txId.equals(RFC_TXID)).toBe(true);
    expect(m.fingerprint).toBe(true);
    expect(m.mapped).toBeUndefined();
    expect(m.errorCode).toBeUndefined();
  });

  it('parses the sample IPv4 response: 192.0.2.1:32853, FINGERPRINT verified', () => {
    expect(isStunPacket(SAMPLE_IPV4_RESPONSE, 0, SAMPLE_IPV4_RESPONSE.length)).toBe(true);
    const m = parsed(SAMPLE_IPV4_RESPONSE);
    expect(m.method).toBe(STUN_METHOD_BINDING);
    expect(m.cls).toBe('success');
    expect(m.txId.equals(RFC_TXID)).toBe(true);
    expect(m.mapped).toEqual({ ip: parseIpv4('192.0.2.1'), port: 32853 });
    expect(m.fingerprint).toBe(true);
  });

  it('our CRC-32 gives the vectors\' FINGERPRINTs and the standard check value', () => {
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
    expect((crc32(SAMPLE_REQUEST, 0, 100) ^ FINGERPRINT_XOR) >>> 0).toBe(0xe57a3bcf);
    expect((crc32(SAMPLE_IPV4_RESPONSE, 0, 72) ^ FINGERPRINT_XOR) >>> 0).toBe(0xc07d4c96);
  });

  it('rejects the vectors with one flipped bit in any byte the FINGERPRINT covers, or in the CRC', () => {
    for (const v of [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE]) {
      for (let i = 0; i < v.length; i++) {
        if (i === v.length - 8 || i === v.length - 7) continue; // the FINGERPRINT's own type: below
        const b = Buffer.from(v);
        b[i]! ^= 0x10;
        expect(parseStun(b).ok, `byte ${i}`).toBe(false);
      }
      // A changed FINGERPRINT type is just another unknown attribute: the message then has none.
      const b = Buffer.from(v);
      b[v.length - 8]! ^= 0x10;
      expect(parsed(b).fingerprint).toBe(false);
    }
  });

  it('reads the vector at an offset inside a larger buffer', () => {
    const slab = Buffer.alloc(300, 0xee);
    SAMPLE_IPV4_RESPONSE.copy(slab, 64);
    expect(isStunPacket(slab, 64, SAMPLE_IPV4_RESPONSE.length)).toBe(true);
    expect(parsed(slab, 64, SAMPLE_IPV4_RESPONSE.length).mapped?.port).toBe(32853);
  });
});

describe('message type', () => {
  it('interleaves method and class bits as RFC 5389 §6 shows', () => {
    expect(stunType(1, 'request')).toBe(0x0001);
    expect(stunType(1, 'indication')).toBe(0x0011);
    expect(stunType(1, 'success')).toBe(0x0101);
    expect(stunType(1, 'error')).toBe(0x0111);
    expect(stunType(0xfff, 'request')).toBe(0x3eef);
  });

  it('round-trips every method and class through parseStun', () => {
    const txId = Buffer.alloc(12, 7);
    for (const cls of ['request', 'indication', 'success', 'error'] as const) {
      for (const method of [0, 1, 0x0f, 0x10, 0x7f, 0x80, 0xabc, 0xfff]) {
        const m = parsed(encodeStun({ method, cls, txId }));
        expect([m.method, m.cls]).toEqual([method, cls]);
      }
    }
  });
});

describe('encoders', () => {
  const txId = Buffer.from('0123456789abcdef01234567', 'hex');

  it('a binding request is header + FINGERPRINT, 28 bytes, and parses back', () => {
    const req = encodeBindingRequest(txId);
    expect(req.length).toBe(28);
    expect(req.subarray(0, 8).toString('hex')).toBe('000100082112a442');
    expect(req.subarray(8, 20).equals(txId)).toBe(true);
    expect(isStunPacket(req, 0, req.length)).toBe(true);
    const m = parsed(req);
    expect([m.method, m.cls, m.fingerprint]).toEqual([1, 'request', true]);
    expect(m.txId.equals(txId)).toBe(true);
  });

  it('a binding success carries the address XORed and round-trips', () => {
    for (const [ip, port] of [
      [parseIpv4('192.0.2.1')!, 32853],
      [parseIpv4('203.0.113.250')!, 1],
      [0, 0],
      [0xffffffff, 65535],
      [parseIpv4('127.0.0.1')!, 51820],
    ]) {
      const res = encodeBindingSuccess(txId, ip!, port!);
      expect(res.length).toBe(40);
      const m = parsed(res);
      expect([m.cls, m.mapped]).toEqual(['success', { ip, port }]);
    }
  });

  it('encodes the RFC sample response\'s XOR-MAPPED-ADDRESS byte for byte', () => {
    const a = xorMappedAddress(parseIpv4('192.0.2.1')!, 32853);
    expect(Buffer.from(a.value).toString('hex')).toBe('0001a147e112a643');
  });

  it('a binding error carries the code', () => {
    const m = parsed(encodeBindingError(txId, 420, 'Unknown Attribute'));
    expect([m.cls, m.errorCode]).toEqual(['error', 420]);
  });

  it('pads odd-sized attributes with zeros and keeps the length a multiple of 4', () => {
    const msg = encodeStun({
      method: 1,
      cls: 'success',
      txId,
      attributes: [{ type: ATTR_SOFTWARE, value: Buffer.from('abcde') }, xorMappedAddress(1, 2)],
    });
    expect(msg.readUInt16BE(2) % 4).toBe(0);
    expect(msg.subarray(24, 32).toString('hex')).toBe('6162636465000000');
    expect(parsed(msg).mapped).toEqual({ ip: 1, port: 2 });
  });

  it('can leave out the FINGERPRINT', () => {
    const msg = encodeStun({ method: 1, cls: 'request', txId, fingerprint: false });
    expect(msg.length).toBe(20);
    expect(parsed(msg).fingerprint).toBe(false);
  });

  it('throws RangeError on programming errors only', () => {
    expect(() => encodeBindingRequest(Buffer.alloc(11))).toThrow(RangeError);
    expect(() => encodeBindingSuccess(txId, 1, 65536)).toThrow(RangeError);
    expect(() => encodeBindingSuccess(txId, -1, 1)).toThrow(RangeError);
    expect(() => encodeBindingError(txId, 200, 'no')).toThrow(RangeError);
  });
});

describe('parseStun attribute rules', () => {
  const txId = Buffer.alloc(12, 0x5a);
  const ipA = parseIpv4('198.51.100.7')!;
  const ipB = parseIpv4('203.0.113.9')!;

  it('prefers XOR-MAPPED-ADDRESS over MAPPED-ADDRESS, in either order', () => {
    for (const attributes of [
      [mappedAddress(ipB, 2), xorMappedAddress(ipA, 1)],
      [xorMappedAddress(ipA, 1), mappedAddress(ipB, 2)],
    ]) {
      expect(parsed(encodeStun({ method: 1, cls: 'success', txId, attributes })).mapped).toEqual({ ip: ipA, port: 1 });
    }
  });

  it('falls back to MAPPED-ADDRESS (RFC 3489 servers)', () => {
    expect(parsed(encodeStun({ method: 1, cls: 'success', txId, attributes: [mappedAddress(ipB, 3478)] })).mapped).toEqual({
      ip: ipB,
      port: 3478,
    });
  });

  it('takes the first of duplicate address attributes', () => {
    const attributes = [xorMappedAddress(ipA, 1), xorMappedAddress(ipB, 2)];
    expect(parsed(encodeStun({ method: 1, cls: 'success', txId, attributes })).mapped).toEqual({ ip: ipA, port: 1 });
  });

  it('parses and ignores an IPv6 XOR-MAPPED-ADDRESS, still using an IPv4 MAPPED-ADDRESS', () => {
    const v6 = Buffer.alloc(20);
    v6[1] = 2;
    const m = parsed(encodeStun({ method: 1, cls: 'success', txId, attributes: [{ type: 0x0020, value: v6 }] }));
    expect(m.mapped).toBeUndefined();
    const both = parsed(encodeStun({ method: 1, cls: 'success', txId, attributes: [{ type: 0x0020, value: v6 }, mappedAddress(ipB, 9)] }));
    expect(both.mapped).toEqual({ ip: ipB, port: 9 });
  });

  it.each([
    ['IPv4 value of the wrong size', { type: 0x0020, value: hex('0001 a147 e112a643 00000000') }, /IPv4 value of 12 bytes/],
    ['IPv6 value of the wrong size', { type: 0x0020, value: hex('0002 a147 e112a643') }, /IPv6 value of 8 bytes/],
    ['unknown family', { type: 0x0001, value: hex('0003 0001 01020304') }, /unknown address family 3/],
    ['address too short', { type: 0x0001, value: hex('0001') }, /too short/],
    ['ERROR-CODE too short', { type: 0x0009, value: hex('000004') }, /ERROR-CODE of 3 bytes/],
    ['ERROR-CODE class 2', { type: 0x0009, value: hex('00000200') }, /out of range/],
    ['ERROR-CODE number 100', { type: 0x0009, value: hex('00000464') }, /out of range/],
    ['MESSAGE-INTEGRITY of 16 bytes', { type: 0x0008, value: Buffer.alloc(16) }, /MESSAGE-INTEGRITY of 16 bytes/],
  ])('rejects %s', (_name, attr, why) => {
    expect(errorOf(encodeStun({ method: 1, cls: 'success', txId, attributes: [attr] }))).toMatch(why);
  });

  it('skips unknown attributes of both ranges', () => {
    const attributes = [
      { type: 0x7fff, value: Buffer.from('required?') },
      { type: 0xc001, value: Buffer.from('optional') },
      xorMappedAddress(ipA, 7),
    ];
    expect(parsed(encodeStun({ method: 1, cls: 'success', txId, attributes })).mapped).toEqual({ ip: ipA, port: 7 });
  });

  it('ignores attributes after MESSAGE-INTEGRITY (except FINGERPRINT)', () => {
    const attributes = [{ type: 0x0008, value: Buffer.alloc(20) }, xorMappedAddress(ipA, 7)];
    const m = parsed(encodeStun({ method: 1, cls: 'success', txId, attributes }));
    expect(m.mapped).toBeUndefined();
    expect(m.fingerprint).toBe(true);
  });

  it('refuses a FINGERPRINT that is not last, of the wrong size, or wrong', () => {
    const fp = encodeBindingRequest(txId).subarray(20); // the 8-byte attribute
    const notLast = encodeStun({ method: 1, cls: 'request', txId, fingerprint: false, attributes: [{ type: ATTR_FINGERPRINT, value: fp.subarray(4) }, xorMappedAddress(1, 1)] });
    expect(errorOf(notLast)).toMatch(/not the last/);
    const wrongSize = encodeStun({ method: 1, cls: 'request', txId, fingerprint: false, attributes: [{ type: ATTR_FINGERPRINT, value: Buffer.alloc(8) }] });
    expect(errorOf(wrongSize)).toMatch(/FINGERPRINT of 8 bytes/);
    const wrong = encodeBindingRequest(txId);
    wrong[27]! ^= 1;
    expect(errorOf(wrong)).toBe('FINGERPRINT mismatch');
    expect(parseStun(refingerprint(wrong)).ok).toBe(true);
  });

  it.each([
    ['empty', Buffer.alloc(0), /short/],
    ['19 bytes', Buffer.alloc(19), /short/],
    ['top bits set', hex('c001 0000 2112a442 000000000000000000000000'), /top two bits/],
    ['no magic cookie', hex('0001 0000 2112a443 000000000000000000000000'), /magic/],
    ['length field too large', hex('0001 0004 2112a442 000000000000000000000000'), /length field 4 but 0/],
    ['length not a multiple of 4', hex('0001 0002 2112a442 000000000000000000000000 0000'), /multiple of 4/],
    ['attribute running past the end', hex('0001 0008 2112a442 000000000000000000000000 8022 0005 41424344'), /runs past the end/],
  ])('rejects %s', (_name, buf, why) => {
    expect(errorOf(buf)).toMatch(why);
  });

  it('rejects a range outside the buffer without throwing', () => {
    const req = encodeBindingRequest(txId);
    expect(parseStun(req, 10, 28).ok).toBe(false);
    expect(parseStun(req, -1, 28).ok).toBe(false);
    expect(parseStun(req, 0.5, 20).ok).toBe(false);
    expect(isStunPacket(req, 10, 28)).toBe(false);
    expect(isStunPacket(req, -1, 28)).toBe(false);
  });
});

describe('isStunPacket', () => {
  it('accepts what our encoders make and nothing shorter than a header', () => {
    const txId = Buffer.alloc(12, 1);
    for (const m of [encodeBindingRequest(txId), encodeBindingSuccess(txId, 1, 1), encodeBindingError(txId, 400, 'x')]) {
      expect(isStunPacket(m, 0, m.length)).toBe(true);
      expect(isStunPacket(m, 0, m.length - 4)).toBe(false);
    }
  });

  it('rejects cladnet handshakes at their exact sizes, even with the magic cookie in the sender index', () => {
    for (const [type, size] of [
      [1, 148],
      [2, 92],
      [3, 64],
    ]) {
      const b = Buffer.alloc(size!, 0xab);
      b.set([type!, 0, 0, 0], 0);
      expect(isStunPacket(b, 0, b.length)).toBe(false);
      b.writeUInt32BE(STUN_MAGIC, 4);
      expect(isStunPacket(b, 0, b.length)).toBe(false);
    }
  });

  it('rejects type-4 data datagrams of any valid size (header + tag = 32 bytes and up)', () => {
    for (let size = 32; size <= 1500; size++) {
      const b = Buffer.alloc(size, 0x42);
      b.set([4, 0, 0, 0], 0);
      b.writeUInt32BE(STUN_MAGIC, 4);
      expect(isStunPacket(b, 0, size)).toBe(false);
    }
  });
});

describe('fuzz: parseStun and isStunPacket never throw', () => {
  const CASES = 20_000;

  it(`${CASES} random and mutated inputs (seed ${FUZZ_SEED})`, () => {
    const r = rng(FUZZ_SEED ^ 0x57a11);
    const int = (n: number) => Math.floor(r() * n);
    const seeds = [
      SAMPLE_REQUEST,
      SAMPLE_IPV4_RESPONSE,
      encodeBindingRequest(Buffer.alloc(12, 3)),
      encodeBindingSuccess(Buffer.alloc(12, 4), 0x01020304, 5),
      encodeBindingError(Buffer.alloc(12, 5), 500, 'Server Error'),
    ];
    let ok = 0;
    let i = 0;
    try {
      for (i = 0; i < CASES; i++) {
        let b: Buffer;
        const mode = int(4);
        if (mode === 0) {
          b = Buffer.alloc(int(120));
          for (let k = 0; k < b.length; k++) b[k] = int(256);
        } else {
          b = Buffer.from(seeds[int(seeds.length)]!);
          if (mode === 1) {
            for (let k = 1 + int(4); k > 0; k--) b[int(b.length)] = int(256);
          } else if (mode === 2) {
            b = b.subarray(0, int(b.length + 1));
          } else {
            // keep the header consistent so the attribute walker is what gets exercised
            for (let k = 1 + int(3); k > 0; k--) b[20 + int(b.length - 20)] = int(256);
            if (r() < 0.5 && b.readUInt16BE(b.length - 8) === ATTR_FINGERPRINT) refingerprint(b);
          }
        }
        const off = mode === 0 ? int(4) : 0;
        const len = Math.max(0, b.length - off - int(3));
        const classified = isStunPacket(b, off, len);
        const res = parseStun(b, off, len);
        if (res.ok) {
          ok++;
          expect(classified).toBe(true);
          expect(res.msg.txId.length).toBe(12);
        }
      }
    } catch (e) {
      throw new Error(`stun fuzz failed at case ${i} (seed ${FUZZ_SEED}): ${(e as Error).message}`);
    }
    console.log(`stun fuzz: ${CASES} cases, ${ok} parsed, seed ${FUZZ_SEED}`);
    expect(ok).toBeGreaterThan(100);
  });
});
