/**
 * One UDP socket per data-plane worker, all bound to the listen port (SO_REUSEPORT), and a classic
 * BPF program (SO_ATTACH_REUSEPORT_CBPF) that gives each datagram to the socket of the worker that
 * owns its receiver index: socket (index mod N). docs/design.md, "Many cores".
 *
 * The kernel runs a reuseport program on the datagram with the UDP header pulled, so offset 0 is
 * the first byte of the UDP payload, our header (src/dataplane/wire.ts):
 *
 *   byte 0      type (4 data, 1-3 handshake)
 *   bytes 1-3   flags, 0, 0
 *   bytes 4-7   receiver index, little-endian
 *   bytes 8-15  counter
 *
 * Classic BPF loads words big-endian, so the program assembles the little-endian index from its four
 * bytes (X holds the part built so far), takes it mod N and returns the result: the index of the
 * socket in the group, in the order the sockets were bound. A datagram shorter than 8 bytes makes
 * the load fail, and the program returns 0 (socket 0). Handshake messages land on whichever socket
 * their bytes 4-7 name (the sender's index, or STUN's magic cookie); every worker hands them to the
 * control thread. With one socket there is no program and nothing changes.
 */
import * as libc from '../ffi/libc';
import { allocNative } from '../ffi/mem';
import { osError } from '../errors';
import { openUdpSocket, type UdpSocket, type UdpSocketOptions } from './udp';

// classic BPF (linux/filter.h, linux/bpf_common.h)
const BPF_LD = 0x00;
const BPF_ALU = 0x04;
const BPF_RET = 0x06;
const BPF_MISC = 0x07;
const BPF_B = 0x10;
const BPF_ABS = 0x20;
const BPF_K = 0x00;
const BPF_X = 0x08;
const BPF_A = 0x10;
const BPF_OR = 0x40;
const BPF_LSH = 0x60;
const BPF_MOD = 0x90;
const BPF_TAX = 0x00;

/** Where the receiver index starts in the UDP payload (wire.ts). */
const INDEX_OFFSET = 4;

/** One instruction: code, jt, jf, k (struct sock_filter, 8 bytes). */
export type BpfInsn = readonly [code: number, jt: number, jf: number, k: number];

/** The steering program for a group of n sockets: A = le32(payload[4..7]) mod n; return A. */
export function steeringProgram(n: number): BpfInsn[] {
  if (!Number.isInteger(n) || n < 2 || n > 0xffff) throw new RangeError(`steeringProgram: ${n} sockets`);
  const ldb = (k: number): BpfInsn => [BPF_LD | BPF_B | BPF_ABS, 0, 0, k];
  const lsh = (k: number): BpfInsn => [BPF_ALU | BPF_LSH | BPF_K, 0, 0, k];
  const orX: BpfInsn = [BPF_ALU | BPF_OR | BPF_X, 0, 0, 0];
  const tax: BpfInsn = [BPF_MISC | BPF_TAX, 0, 0, 0];
  const i = INDEX_OFFSET;
  return [
    ldb(i + 3), lsh(24), tax, // X = b7 << 24
    ldb(i + 2), lsh(16), orX, tax, // X |= b6 << 16
    ldb(i + 1), lsh(8), orX, tax, // X |= b5 << 8
    ldb(i), orX, // A = X | b4: the index
    [BPF_ALU | BPF_MOD | BPF_K, 0, 0, n], // A = index mod n
    [BPF_RET | BPF_A, 0, 0, 0],
  ];
}

/** What steeringProgram computes, for tests: the socket a payload goes to (0 for a short one). */
export function steeredSocket(payload: Uint8Array, n: number): number {
  if (payload.length < INDEX_OFFSET + 4) return 0;
  const v = payload[INDEX_OFFSET]! | (payload[INDEX_OFFSET + 1]! << 8) | (payload[INDEX_OFFSET + 2]! << 16) | (payload[INDEX_OFFSET + 3]! << 24);
  return (v >>> 0) % n;
}

/** Attaches `prog` to the reuseport group of `fd` (any member: it applies to the whole group). */
function attach(fd: number, prog: readonly BpfInsn[]): void {
  const mem = allocNative(8 * prog.length);
  try {
    prog.forEach(([code, jt, jf, k], j) => {
      mem.buf.writeUInt16LE(code, 8 * j);
      mem.buf[8 * j + 2] = jt;
      mem.buf[8 * j + 3] = jf;
      mem.buf.writeUInt32LE(k >>> 0, 8 * j + 4);
    });
    // struct sock_fprog { unsigned short len; (6 bytes padding) struct sock_filter *filter; }
    const fprog = Buffer.alloc(16);
    fprog.writeUInt16LE(prog.length, 0);
    fprog.writeBigUInt64LE(mem.ptr, 8);
    if (libc.setsockopt(fd, libc.SOL_SOCKET, libc.SO_ATTACH_REUSEPORT_CBPF, fprog, fprog.length) !== 0) {
      throw osError('setsockopt(SO_ATTACH_REUSEPORT_CBPF)');
    }
  } finally {
    mem.free(); // the kernel keeps its own copy
  }
}

/**
 * `n` sockets on one port: socket k receives the datagrams whose receiver index is k mod n. One
 * socket is exactly openUdpSocket(opts). All are closed again when any step fails.
 */
export function openUdpGroup(opts: UdpSocketOptions, n: number): UdpSocket[] {
  if (n <= 1) return [openUdpSocket(opts)];
  const socks: UdpSocket[] = [];
  try {
    const first = openUdpSocket({ ...opts, reusePort: true });
    socks.push(first);
    for (let k = 1; k < n; k++) socks.push(openUdpSocket({ ...opts, port: first.port, family: first.family, reusePort: true }));
    attach(first.fd, steeringProgram(n));
    return socks;
  } catch (e) {
    for (const s of socks) s.close();
    throw e;
  }
}
