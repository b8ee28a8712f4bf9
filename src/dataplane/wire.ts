/**
 * Wire format of a cladnet datagram (all integers little-endian):
 *
 *   0       1       2       4               8                               16
 *   +-------+-------+-------+---------------+-------------------------------+----------------+-----+
 *   | type  | flags |  0 0  | receiver index|            counter            | ciphertext ... | tag |
 *   +-------+-------+-------+---------------+-------------------------------+----------------+-----+
 *
 * type 4 = transport data (as in WireGuard). flags bit 0 (FLAG_CSUM_PARTIAL): the inner TCP/UDP
 * checksum holds only the pseudo-header sum (the sender's kernel left it to "hardware"); the
 * receiver hands the packet to its kernel marked the same way. Other flag bits must be zero. The 16-byte header is the AEAD's associated data;
 * the 64-bit counter is the nonce (4 zero bytes, then the counter) and the replay-window input.
 * The plaintext is an IP packet, or a control message whose first byte is 0 (IP packets start
 * with version 4 or 6 in the high nibble, so the two never collide):
 *
 *   0x00 0x01 <f64 t0>                 ping: answer with a pong echoing t0 (to the ping's source)
 *   0x00 0x02 <f64 t0> <ip u32> <port u16>
 *                                      pong: round-trip time is now - t0 on the pinger's own clock;
 *                                      ip:port is where the ping came from as the answering peer saw
 *                                      it (our reflexive address on that path; 0:0 when relayed)
 *   0x00 0x03 <f64 t0>                 probe: a ping sent to a candidate address to test a path;
 *                                      answered like a ping, but it never moves an endpoint
 *   0x00 0x04 <ip u32> <datagram>      forward: ask a relay to pass <datagram> to the peer whose
 *                                      overlay address is ip (only relay-enabled hosts accept)
 *   0x00 0x05 <ip u32> <datagram>      relayed: <datagram> comes from the peer with overlay address
 *                                      ip, through the sender of this message (the relay)
 *   0x00 0x06 <f64 t0>                 bye: the sender is leaving the network on purpose (its agent
 *                                      stops); sealed like any packet, so only the peer itself can
 *                                      send it (src/control/roster.ts)
 *
 * A relayed datagram is sealed end to end by its two peers; each hop wraps it in a message sealed
 * for that hop, so a relay sees only ciphertext and only peers of the network can use it. Network
 * byte order inside control messages (ip, port), little-endian in the header.
 */
export const TYPE_DATA = 4;
export const HEADER_LEN = 16;
export const TAG_LEN = 16;
export const OVERHEAD = HEADER_LEN + TAG_LEN;
/** Underlay IPv4 (20) + UDP (8) headers around every datagram. */
export const UNDERLAY_OVERHEAD = 28;

export const CTRL_PING = 1;
export const CTRL_PONG = 2;
export const CTRL_PROBE = 3;
export const CTRL_FORWARD = 4;
export const CTRL_RELAYED = 5;
export const CTRL_BYE = 6;
/** Length of a ping, probe or bye. */
export const CTRL_LEN = 10;
export const PONG_LEN = 16;
/** forward/relayed prefix before the carried datagram. */
export const RELAY_PREFIX = 6;
/** Bytes a relay hop adds around a datagram: its own header, prefix and tag. */
export const RELAY_OVERHEAD = HEADER_LEN + RELAY_PREFIX + TAG_LEN;

/** Counters stop well below 2^53 so they stay exact as JS numbers; rekeying (later) resets them. */
export const COUNTER_LIMIT = 2 ** 52;

export const FLAG_CSUM_PARTIAL = 0x01;
const FLAGS_KNOWN = FLAG_CSUM_PARTIAL;

export function writeHeader(buf: Buffer, off: number, receiverIndex: number, counter: number, flags = 0): void {
  buf[off] = TYPE_DATA;
  buf[off + 1] = flags;
  buf[off + 2] = 0;
  buf[off + 3] = 0;
  buf.writeUInt32LE(receiverIndex >>> 0, off + 4);
  buf.writeUInt32LE(counter % 0x1_0000_0000, off + 8);
  buf.writeUInt32LE(Math.floor(counter / 0x1_0000_0000), off + 12);
}

/** Why a datagram was refused before decryption; `null` means the header parsed. */
export type HeaderVerdict = 'short' | 'type' | null;

export function checkHeader(buf: Buffer, off: number, len: number): HeaderVerdict {
  if (len < OVERHEAD) return 'short';
  if (buf[off] !== TYPE_DATA || (buf[off + 1]! & ~FLAGS_KNOWN) !== 0 || buf[off + 2] !== 0 || buf[off + 3] !== 0) {
    return 'type';
  }
  return null;
}

export function readReceiverIndex(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4);
}

export function readCounter(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 8) + buf.readUInt32LE(off + 12) * 0x1_0000_0000;
}

/** IPv4 destination / source of a plaintext packet at `off` (caller checked the length). */
export function ipv4Dst(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off + 16);
}
export function ipv4Src(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off + 12);
}
