/**
 * A non-blocking IPv4 UDP socket owned by raw file descriptor, with batched I/O through
 * recvmmsg/sendmmsg over native memory (x86_64 Linux struct layouts).
 */
import * as libc from '../ffi/libc';
import { allocNative, type NativeBlock } from '../ffi/mem';
import { osError } from '../errors';
import type { PacketBatch, SendList } from '../../dataplane/batch';
import type { UdpIo } from '../../dataplane/io';

export interface UdpSocketOptions {
  port: number; // 0 = any free port
  bindIp?: number; // default 0.0.0.0
  bufferBytes?: number; // SO_RCVBUF/SO_SNDBUF request (forced when root)
}

export interface UdpSocket {
  readonly fd: number;
  readonly port: number;
  close(): void;
}

const SOCKADDR_IN = 16;

export function writeSockaddrIn(b: Buffer, off: number, ip: number, port: number): void {
  b.fill(0, off, off + SOCKADDR_IN);
  b.writeUInt16LE(libc.AF_INET, off);
  b.writeUInt16BE(port, off + 2);
  b.writeUInt32BE(ip >>> 0, off + 4);
}

function setIntOpt(fd: number, name: number, value: number): boolean {
  const v = new Uint8Array(4);
  new DataView(v.buffer).setInt32(0, value, true);
  return libc.setsockopt(fd, libc.SOL_SOCKET, name, v, 4) === 0;
}

export function openUdpSocket(opts: UdpSocketOptions): UdpSocket {
  const fd = libc.socket(libc.AF_INET, libc.SOCK_DGRAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC, 0);
  if (fd < 0) throw osError('socket(AF_INET, SOCK_DGRAM)');
  try {
    const bytes = opts.bufferBytes ?? 4 << 20;
    // The *FORCE variants pass the sysctl caps when we are root; fall back to the plain ones.
    if (!setIntOpt(fd, libc.SO_RCVBUFFORCE, bytes)) setIntOpt(fd, libc.SO_RCVBUF, bytes);
    if (!setIntOpt(fd, libc.SO_SNDBUFFORCE, bytes)) setIntOpt(fd, libc.SO_SNDBUF, bytes);
    const addr = Buffer.alloc(SOCKADDR_IN);
    writeSockaddrIn(addr, 0, opts.bindIp ?? 0, opts.port);
    if (libc.bind(fd, addr, SOCKADDR_IN) !== 0) throw osError(`bind(udp port ${opts.port})`);
    const len = new Uint32Array([SOCKADDR_IN]);
    if (libc.getsockname(fd, addr, len) !== 0) throw osError('getsockname');
    const port = addr.readUInt16BE(2);
    let closed = false;
    return {
      fd,
      port,
      close() {
        if (!closed) libc.close(fd);
        closed = true;
      },
    };
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}

/**
 * Sends one datagram from the calling thread (the control thread's handshakes; rare, so a
 * plain sendto). Returns false when the kernel refused it.
 */
export function sendDatagram(fd: number, data: Uint8Array, ip: number, port: number): boolean {
  const addr = Buffer.alloc(SOCKADDR_IN);
  writeSockaddrIn(addr, 0, ip, port);
  return libc.sendto(fd, data, data.length, libc.MSG_DONTWAIT, addr, SOCKADDR_IN) === data.length;
}

// struct mmsghdr { struct msghdr { void *name; socklen_t namelen; struct iovec *iov; size_t iovlen;
//   void *control; size_t controllen; int flags; } hdr; unsigned int len; } = 64 bytes on x86_64.
const MMSG = 64;
const IOVEC = 16;

/**
 * Batched datagram I/O over one socket for one batch (one thread). The batch must live in native
 * memory (`basePtr` set): the message headers point straight into its slots, so nothing is
 * copied, and every address is precomputed, so nothing is allocated per packet.
 */
export class UdpBatchIo implements UdpIo {
  private readonly meta: NativeBlock;
  private readonly m: Buffer;
  private readonly vec: bigint;
  private readonly iovOff: number;
  private readonly namesOff: number;
  /** Slot addresses split in 32-bit halves, so writing them allocates no BigInt. */
  private readonly slotLo: Uint32Array;
  private readonly slotHi: Uint32Array;
  private recvReady = false;
  /** Datagrams the kernel refused with an error other than EAGAIN (e.g. ENETUNREACH). */
  sendErrors = 0;
  lastErrno = 0;

  constructor(
    private readonly fd: number,
    private readonly batch: PacketBatch,
  ) {
    if (batch.basePtr === 0n) throw new Error('UdpBatchIo needs a batch in native memory');
    const capacity = batch.capacity;
    this.iovOff = capacity * MMSG;
    this.namesOff = this.iovOff + capacity * IOVEC;
    this.meta = allocNative(this.namesOff + capacity * SOCKADDR_IN);
    this.m = this.meta.buf;
    this.vec = this.meta.ptr;
    this.slotLo = new Uint32Array(capacity);
    this.slotHi = new Uint32Array(capacity);
    for (let i = 0; i < capacity; i++) {
      const p = batch.basePtr + BigInt(batch.offset(i));
      this.slotLo[i] = Number(p & 0xffffffffn);
      this.slotHi[i] = Number(p >> 32n);
      const h = i * MMSG;
      this.m.writeBigUInt64LE(this.meta.ptr + BigInt(this.namesOff + i * SOCKADDR_IN), h); // msg_name
      this.m.writeUInt32LE(SOCKADDR_IN, h + 8); // msg_namelen
      this.m.writeBigUInt64LE(this.meta.ptr + BigInt(this.iovOff + i * IOVEC), h + 16); // msg_iov
      this.m.writeBigUInt64LE(1n, h + 24); // msg_iovlen
    }
  }

  private setIov(j: number, slot: number, len: number): void {
    const io = this.iovOff + j * IOVEC;
    this.m.writeUInt32LE(this.slotLo[slot]!, io);
    this.m.writeUInt32LE(this.slotHi[slot]!, io + 4);
    this.m.writeUInt32LE(len, io + 8);
    this.m.writeUInt32LE(0, io + 12);
  }

  recvBatch(batch: PacketBatch): number {
    if (batch !== this.batch) throw new Error('UdpBatchIo used with a foreign batch');
    const m = this.m;
    const n0 = batch.capacity;
    if (!this.recvReady) {
      // The receive vector (slot i <- message i, full slot size) stays valid until a send
      // reuses the headers; recvmmsg itself only rewrites msg_namelen and msg_len.
      for (let i = 0; i < n0; i++) {
        m.writeUInt32LE(SOCKADDR_IN, i * MMSG + 8);
        this.setIov(i, i, batch.slotSize);
      }
      this.recvReady = true;
    }
    const n = libc.recvmmsg(this.fd, this.vec, n0, libc.MSG_DONTWAIT, 0n);
    if (n < 0) {
      const e = libc.errno();
      if (e !== libc.EAGAIN && e !== libc.EINTR) this.lastErrno = e;
      return 0;
    }
    for (let i = 0; i < n; i++) {
      m.writeUInt32LE(SOCKADDR_IN, i * MMSG + 8);
      batch.len[i] = m.readUInt32LE(i * MMSG + 56);
      const a = this.namesOff + i * SOCKADDR_IN;
      batch.port[i] = m.readUInt16BE(a + 2);
      batch.ip[i] = m.readUInt32BE(a + 4);
    }
    return n;
  }

  sendBatch(batch: PacketBatch, list: SendList): number {
    if (batch !== this.batch) throw new Error('UdpBatchIo used with a foreign batch');
    const m = this.m;
    const count = list.count;
    this.recvReady = false;
    for (let j = 0; j < count; j++) {
      const i = list.idx[j]!;
      m.writeUInt32LE(SOCKADDR_IN, j * MMSG + 8);
      this.setIov(j, i, batch.len[i]!);
      writeSockaddrIn(m, this.namesOff + j * SOCKADDR_IN, batch.ip[i]!, batch.port[i]!);
    }
    let sent = 0;
    let refused = 0;
    while (sent < count) {
      const r = libc.sendmmsg(this.fd, sent === 0 ? this.vec : this.vec + BigInt(sent * MMSG), count - sent, 0);
      if (r >= 0) {
        sent += r;
        continue;
      }
      const e = libc.errno();
      if (e === libc.EINTR) continue;
      this.lastErrno = e;
      if (e === libc.EAGAIN) break; // socket buffer full: the rest is dropped, as a router would
      this.sendErrors++; // this datagram is undeliverable (no route, unreachable): skip it only
      refused++;
      sent++;
    }
    return sent - refused;
  }

  close(): void {
    this.meta.free();
  }
}
