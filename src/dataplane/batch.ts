/**
 * A batch of packet slots in one contiguous buffer. Both packet directions move batches, never
 * single packets, and never allocate per packet: the slots, their lengths and their peer addresses
 * live in preallocated memory reused for the life of the worker.
 *
 * Slot layout (the same for both directions):
 *   [0, HEADER)                  wire header, written in place in front of the IP packet
 *   [HEADER, HEADER + n)         IP packet (plaintext) or ciphertext
 *   [HEADER + n, HEADER + n + TAG) Poly1305 tag
 *   then RELAY_OVERHEAD spare bytes: a datagram for a relayed peer is moved up and wrapped in place
 *
 * TUN reads land at HEADER so sealing needs no copy; a received datagram starts at 0.
 */
import { HEADER_LEN, RELAY_OVERHEAD, TAG_LEN } from './wire';

export class PacketBatch {
  /** Bytes used in each slot: datagram length from offset 0, or packet length from HEADER. */
  readonly len: Int32Array;
  /**
   * Peer underlay address of each slot (source on receive, destination on send): `ip` holds its
   * low 32 bits (the IPv4 address), `hi` three words per slot with the upper 96 bits of an IPv6
   * address (all zero: IPv4). See src/util/ipv6.ts.
   */
  readonly ip: Uint32Array;
  readonly hi: Uint32Array;
  readonly port: Uint16Array;
  /** Wire flags of each slot's packet (FLAG_CSUM_PARTIAL). */
  readonly flags: Uint8Array;
  /** `basePtr` as a number (0: not native memory), what the AEAD takes. */
  readonly addr: number;

  constructor(
    /** All slots, back to back. May be a view of native memory (then `basePtr` is its address). */
    readonly buf: Buffer,
    readonly slotSize: number,
    readonly capacity: number,
    readonly basePtr: bigint = 0n,
  ) {
    if (buf.length < slotSize * capacity) throw new RangeError('batch buffer too small');
    this.spare = slotSize * capacity;
    this.len = new Int32Array(capacity);
    this.ip = new Uint32Array(capacity);
    this.hi = new Uint32Array(capacity * 3);
    this.port = new Uint16Array(capacity);
    this.flags = new Uint8Array(capacity);
    this.addr = Number(basePtr);
  }

  /** The first byte after the slots not yet carved (see carve). */
  private spare: number;

  /**
   * A scratch area of `bytes` in the batch's own block after the slots (64-byte aligned), for a
   * buffer the batch's packets are copied from or to: copies within one Buffer are a plain
   * `copyWithin` (copyBytes), where a copy between two Buffers costs a view and a `set` on top
   * of the memmove. null when the block has no such room left or is not native memory (the
   * caller then allocates its own).
   */
  carve(bytes: number): { off: number; ptr: bigint } | null {
    const off = Math.ceil(this.spare / 64) * 64;
    if (this.basePtr === 0n || off + bytes > this.buf.length) return null;
    this.spare = off + bytes;
    return { off, ptr: this.basePtr + BigInt(off) };
  }

  offset(i: number): number {
    return i * this.slotSize;
  }

  /** Largest IP packet a slot can hold (leaving room to wrap it for a relay hop). */
  get maxPacket(): number {
    return this.slotSize - HEADER_LEN - TAG_LEN - RELAY_OVERHEAD;
  }
}

/**
 * Slot size for an MTU: header + packet + tag, plus room for one relay hop's wrapping (a packet
 * sent through a relay, or a relayed datagram received), rounded up to a cache line.
 */
export function slotSizeFor(mtu: number): number {
  return Math.ceil((HEADER_LEN + mtu + TAG_LEN + RELAY_OVERHEAD) / 64) * 64;
}

/** Bytes to add to a batch's block for scratch areas of these sizes (each carved 64-byte aligned). */
export function spareFor(...sizes: number[]): number {
  return sizes.reduce((sum, n) => sum + Math.ceil(n / 64) * 64 + 64, 0);
}

/**
 * src[srcStart, srcEnd) to dst at dstStart (as Buffer.copy). Within one Buffer (a batch and a
 * scratch area carved from it) this is one copyWithin; Buffer.copy between two Buffers makes a
 * Uint8Array view of the source and calls set, about 40 ns more per packet here.
 */
export function copyBytes(src: Buffer, dst: Buffer, dstStart: number, srcStart: number, srcEnd: number): void {
  if (src === dst) dst.copyWithin(dstStart, srcStart, srcEnd);
  else src.copy(dst, dstStart, srcStart, srcEnd);
}

/** A list of slot indices chosen for sending, with their count. Preallocated. */
export class SendList {
  readonly idx: Int32Array;
  count = 0;
  constructor(capacity: number) {
    this.idx = new Int32Array(capacity);
  }
}
