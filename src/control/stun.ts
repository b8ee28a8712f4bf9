/**
 * STUN (RFC 5389) messages, as far as endpoint discovery needs them: binding requests and their
 * answers, IPv4 only. Pure functions, no I/O.
 *
 * Contract:
 *   - isStunPacket and parseStun read untrusted datagrams and never throw. isStunPacket allocates
 *     nothing, so the data plane can call it on every datagram whose first byte is 0 or 1.
 *   - The encoders are for our own messages; they throw RangeError on a programming error (a
 *     transaction id that is not 12 bytes, a port outside 0..65535), never on network input.
 *
 * Message layout (all integers big-endian):
 *
 *   0               2               4                               8                        20
 *   +-+-+-----------+---------------+-------------------------------+------------------------+
 *   |0 0| type (14) | length        | magic cookie 0x2112a442       | transaction id (96 bit)|
 *   +-+-+-----------+---------------+-------------------------------+------------------------+
 *   then attributes: type (16), length (16), value, padded with zeros to a multiple of 4.
 *
 * `length` counts the attribute bytes only (header excluded) and is a multiple of 4. The 14-bit
 * type interleaves a 12-bit method and a 2-bit class: M11..M7 C1 M6..M4 C0 M3..M0.
 *
 * What parseStun does with attributes:
 *   - XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS: the mapped address (IPv4; an IPv6 value is checked
 *     for size and then ignored). The first of each kind counts; later duplicates are skipped.
 *   - ERROR-CODE: errorCode = class * 100 + number (300..699; anything else is an error).
 *   - MESSAGE-INTEGRITY: size checked (20 bytes), not verified (we hold no credentials);
 *     attributes after it, except FINGERPRINT, are ignored as RFC 5389 §15.4 asks.
 *   - FINGERPRINT: must be last and must match (CRC-32 of everything before it, XOR 0x5354554e);
 *     a mismatch makes the message invalid.
 *   - Anything else is skipped, in the comprehension-optional range (>= 0x8000) and, unlike a full
 *     STUN agent, also in the comprehension-required range: a binding answer we read only for its
 *     mapped address, and the requests our server answers (ICE adds PRIORITY, USERNAME, ...) get
 *     a binding success rather than a 420 (Unknown Attribute) error.
 */

export const STUN_MAGIC = 0x2112a442;
export const STUN_HEADER_LEN = 20;
export const STUN_TXID_LEN = 12;

/** The only method we speak. */
export const STUN_METHOD_BINDING = 0x001;

export const ATTR_MAPPED_ADDRESS = 0x0001;
export const ATTR_MESSAGE_INTEGRITY = 0x0008;
export const ATTR_ERROR_CODE = 0x0009;
export const ATTR_XOR_MAPPED_ADDRESS = 0x0020;
export const ATTR_SOFTWARE = 0x8022;
export const ATTR_FINGERPRINT = 0x8028;

/** XORed into the CRC-32 of a FINGERPRINT attribute (RFC 5389 §15.5): "STUN" in ASCII. */
export const FINGERPRINT_XOR = 0x5354554e;

const FAMILY_IPV4 = 0x01;
const FAMILY_IPV6 = 0x02;
const MESSAGE_INTEGRITY_LEN = 20;
const FINGERPRINT_ATTR_LEN = 8; // header 4 + CRC 4

export type StunClass = 'request' | 'indication' | 'success' | 'error';
const CLASSES: readonly StunClass[] = ['request', 'indication', 'success', 'error'];

export interface StunAddress {
  /** IPv4 address as an unsigned 32-bit number (host order). */
  readonly ip: number;
  readonly port: number;
}

export interface StunMessage {
  readonly method: number;
  readonly cls: StunClass;
  /** A copy of the 12-byte transaction id. */
  readonly txId: Buffer;
  /** From XOR-MAPPED-ADDRESS when present, else from MAPPED-ADDRESS; IPv4 only. */
  readonly mapped?: StunAddress;
  /** From ERROR-CODE: class * 100 + number, e.g. 400, 420, 500. */
  readonly errorCode?: number;
  /** A FINGERPRINT attribute was present (and matched: a mismatch is an error). */
  readonly fingerprint: boolean;
}

export type StunParseResult = { ok: true; msg: StunMessage } | { ok: false; error: string };

// --- CRC-32 (IEEE 802.3, reflected, polynomial 0xedb88320), as FINGERPRINT uses -------------------

const CRC_TABLE: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 of buf[start, end). */
export function crc32(buf: Uint8Array, start = 0, end = buf.length): number {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// --- message type ----------------------------------------------------------------------------------

export function stunType(method: number, cls: StunClass): number {
  const c = CLASSES.indexOf(cls);
  return (method & 0x000f) | ((method & 0x0070) << 1) | ((method & 0x0f80) << 2) | ((c & 1) << 4) | ((c & 2) << 7);
}

function methodOf(type: number): number {
  return (type & 0x000f) | ((type & 0x00e0) >> 1) | ((type & 0x3e00) >> 2);
}

function classOf(type: number): StunClass {
  return CLASSES[((type >> 4) & 1) | ((type >> 7) & 2)]!;
}

// --- classification (hot path) ---------------------------------------------------------------------

/**
 * Whether buf[off, off+len) looks like a STUN message: at least a header, the two top bits zero,
 * the magic cookie, and a length field that covers exactly the rest and is a multiple of 4. Cheap
 * and allocation-free. Our own datagrams never pass: handshakes (types 1-3, 148/92/64 bytes) and
 * data (type 4) carry zeros in bytes 2..3, which would claim a 20-byte datagram.
 */
export function isStunPacket(buf: Uint8Array, off: number, len: number): boolean {
  if (len < STUN_HEADER_LEN || off < 0 || off + len > buf.length) return false;
  if ((buf[off]! & 0xc0) !== 0) return false;
  if (buf[off + 4] !== 0x21 || buf[off + 5] !== 0x12 || buf[off + 6] !== 0xa4 || buf[off + 7] !== 0x42) return false;
  const msgLen = (buf[off + 2]! << 8) | buf[off + 3]!;
  return msgLen === len - STUN_HEADER_LEN && (msgLen & 3) === 0;
}

// --- parsing ---------------------------------------------------------------------------------------

function readU16(b: Uint8Array, i: number): number {
  return (b[i]! << 8) | b[i + 1]!;
}

function readU32(b: Uint8Array, i: number): number {
  return ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
}

/**
 * Reads a (XOR-)MAPPED-ADDRESS value at b[v, v+alen). Returns the IPv4 address, null for a
 * well-formed IPv6 one, or an error string.
 */
function readAddress(b: Uint8Array, v: number, alen: number, xor: boolean): StunAddress | null | string {
  if (alen < 4) return 'too short';
  const family = b[v + 1];
  if (family === FAMILY_IPV6) return alen === 20 ? null : `IPv6 value of ${alen} bytes`;
  if (family !== FAMILY_IPV4) return `unknown address family ${family}`;
  if (alen !== 8) return `IPv4 value of ${alen} bytes`;
  let port = readU16(b, v + 2);
  let ip = readU32(b, v + 4);
  if (xor) {
    port ^= STUN_MAGIC >>> 16;
    ip = (ip ^ STUN_MAGIC) >>> 0;
  }
  return { ip, port };
}

/** Parses the STUN message in buf[off, off+len) (default: all of buf). Never throws. */
export function parseStun(buf: Uint8Array, off = 0, len = buf.length - off): StunParseResult {
  const fail = (error: string): StunParseResult => ({ ok: false, error });
  if (!Number.isInteger(off) || !Number.isInteger(len) || off < 0 || len < 0 || off + len > buf.length) {
    return fail('range outside the buffer');
  }
  if (len < STUN_HEADER_LEN) return fail(`short: ${len} bytes, a header is ${STUN_HEADER_LEN}`);
  if ((buf[off]! & 0xc0) !== 0) return fail('top two bits of the type are not zero');
  if (readU32(buf, off + 4) !== STUN_MAGIC) return fail('no magic cookie');
  const msgLen = readU16(buf, off + 2);
  if (msgLen !== len - STUN_HEADER_LEN) return fail(`length field ${msgLen} but ${len - STUN_HEADER_LEN} bytes follow the header`);
  if ((msgLen & 3) !== 0) return fail(`length field ${msgLen} is not a multiple of 4`);

  const type = readU16(buf, off);
  const end = off + len;
  let xorMapped: StunAddress | null | undefined; // undefined: not seen; null: seen, IPv6
  let plainMapped: StunAddress | null | undefined;
  let errorCode: number | undefined;
  let afterIntegrity = false;
  let fingerprint = false;

  for (let p = off + STUN_HEADER_LEN; p < end; ) {
    if (p + 4 > end) return fail('truncated attribute header');
    const atype = readU16(buf, p);
    const alen = readU16(buf, p + 2);
    const v = p + 4;
    const next = v + ((alen + 3) & ~3);
    if (next > end) return fail(`attribute 0x${atype.toString(16)} of ${alen} bytes runs past the end`);

    if (atype === ATTR_FINGERPRINT) {
      if (alen !== 4) return fail(`FINGERPRINT of ${alen} bytes`);
      if (next !== end) return fail('FINGERPRINT is not the last attribute');
      const want = (crc32(buf, off, p) ^ FINGERPRINT_XOR) >>> 0;
      if (readU32(buf, v) !== want) return fail('FINGERPRINT mismatch');
      fingerprint = true;
    } else if (!afterIntegrity) {
      switch (atype) {
        case ATTR_XOR_MAPPED_ADDRESS:
        case ATTR_MAPPED_ADDRESS: {
          const xor = atype === ATTR_XOR_MAPPED_ADDRESS;
          if ((xor ? xorMapped : plainMapped) !== undefined) break; // the first one counts
          const a = readAddress(buf, v, alen, xor);
          if (typeof a === 'string') return fail(`${xor ? 'XOR-MAPPED-ADDRESS' : 'MAPPED-ADDRESS'}: ${a}`);
          if (xor) xorMapped = a;
          else plainMapped = a;
          break;
        }
        case ATTR_ERROR_CODE: {
          if (errorCode !== undefined) break;
          if (alen < 4) return fail(`ERROR-CODE of ${alen} bytes`);
          const cls = buf[v + 2]! & 0x07;
          const num = buf[v + 3]!;
          if (cls < 3 || cls > 6 || num > 99) return fail(`ERROR-CODE class ${cls} number ${num} out of range`);
          errorCode = cls * 100 + num;
          break;
        }
        case ATTR_MESSAGE_INTEGRITY:
          if (alen !== MESSAGE_INTEGRITY_LEN) return fail(`MESSAGE-INTEGRITY of ${alen} bytes`);
          afterIntegrity = true;
          break;
        default:
          break; // unknown or uninteresting: skipped (see the header comment)
      }
    }
    p = next;
  }

  const mapped = xorMapped ?? plainMapped ?? undefined;
  const msg: StunMessage = {
    method: methodOf(type),
    cls: classOf(type),
    txId: Buffer.from(buf.subarray(off + 8, off + STUN_HEADER_LEN)),
    fingerprint,
    ...(mapped ? { mapped } : {}),
    ...(errorCode !== undefined ? { errorCode } : {}),
  };
  return { ok: true, msg };
}

// --- encoding --------------------------------------------------------------------------------------

export interface StunAttribute {
  readonly type: number;
  readonly value: Uint8Array;
}

function checkTxId(txId: Uint8Array): void {
  if (txId.length !== STUN_TXID_LEN) throw new RangeError(`stun: a transaction id is ${STUN_TXID_LEN} bytes, got ${txId.length}`);
}

function checkAddress(ip: number, port: number): void {
  if (!Number.isInteger(ip) || ip < 0 || ip > 0xffffffff) throw new RangeError(`stun: ${ip} is not an IPv4 address`);
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new RangeError(`stun: ${port} is not a port`);
}

/**
 * Encodes a message: header, the attributes in order (each padded with zeros), then a FINGERPRINT
 * unless `fingerprint` is false.
 */
export function encodeStun(msg: {
  method: number;
  cls: StunClass;
  txId: Uint8Array;
  attributes?: readonly StunAttribute[];
  fingerprint?: boolean;
}): Buffer {
  checkTxId(msg.txId);
  const attrs = msg.attributes ?? [];
  const withFp = msg.fingerprint !== false;
  let bodyLen = 0;
  for (const a of attrs) {
    if (a.value.length > 0xffff) throw new RangeError(`stun: attribute 0x${a.type.toString(16)} is too long`);
    bodyLen += 4 + ((a.value.length + 3) & ~3);
  }
  if (withFp) bodyLen += FINGERPRINT_ATTR_LEN;
  if (bodyLen > 0xffff) throw new RangeError('stun: message is too long');
  const out = Buffer.alloc(STUN_HEADER_LEN + bodyLen); // zeroed: padding is zeros
  out.writeUInt16BE(stunType(msg.method, msg.cls), 0);
  out.writeUInt16BE(bodyLen, 2);
  out.writeUInt32BE(STUN_MAGIC, 4);
  out.set(msg.txId, 8);
  let p = STUN_HEADER_LEN;
  for (const a of attrs) {
    out.writeUInt16BE(a.type, p);
    out.writeUInt16BE(a.value.length, p + 2);
    out.set(a.value, p + 4);
    p += 4 + ((a.value.length + 3) & ~3);
  }
  if (withFp) {
    const crc = (crc32(out, 0, p) ^ FINGERPRINT_XOR) >>> 0;
    out.writeUInt16BE(ATTR_FINGERPRINT, p);
    out.writeUInt16BE(4, p + 2);
    out.writeUInt32BE(crc, p + 4);
  }
  return out;
}

/** An XOR-MAPPED-ADDRESS attribute for an IPv4 address. */
export function xorMappedAddress(ip: number, port: number): StunAttribute {
  checkAddress(ip, port);
  const v = Buffer.alloc(8);
  v[1] = FAMILY_IPV4;
  v.writeUInt16BE(port ^ (STUN_MAGIC >>> 16), 2);
  v.writeUInt32BE((ip ^ STUN_MAGIC) >>> 0, 4);
  return { type: ATTR_XOR_MAPPED_ADDRESS, value: v };
}

/** A MAPPED-ADDRESS attribute (the RFC 3489 form, without XOR) for an IPv4 address. */
export function mappedAddress(ip: number, port: number): StunAttribute {
  checkAddress(ip, port);
  const v = Buffer.alloc(8);
  v[1] = FAMILY_IPV4;
  v.writeUInt16BE(port, 2);
  v.writeUInt32BE(ip >>> 0, 4);
  return { type: ATTR_MAPPED_ADDRESS, value: v };
}

/** An ERROR-CODE attribute: code 300..699 and a short UTF-8 reason. */
export function errorCodeAttribute(code: number, reason: string): StunAttribute {
  if (!Number.isInteger(code) || code < 300 || code > 699) throw new RangeError(`stun: error code ${code} is not 300..699`);
  const text = Buffer.from(reason, 'utf8');
  const v = Buffer.alloc(4 + text.length);
  v[2] = Math.floor(code / 100);
  v[3] = code % 100;
  text.copy(v, 4);
  return { type: ATTR_ERROR_CODE, value: v };
}

/** A binding request: header and FINGERPRINT, 28 bytes. */
export function encodeBindingRequest(txId: Uint8Array): Buffer {
  return encodeStun({ method: STUN_METHOD_BINDING, cls: 'request', txId });
}

/** A binding success telling the requester its address as seen by us: 40 bytes. */
export function encodeBindingSuccess(txId: Uint8Array, ip: number, port: number): Buffer {
  return encodeStun({ method: STUN_METHOD_BINDING, cls: 'success', txId, attributes: [xorMappedAddress(ip, port)] });
}

/** A binding error response, e.g. 400 Bad Request. */
export function encodeBindingError(txId: Uint8Array, code: number, reason: string): Buffer {
  return encodeStun({ method: STUN_METHOD_BINDING, cls: 'error', txId, attributes: [errorCodeAttribute(code, reason)] });
}
