/**
 * A non-blocking UDP socket owned by raw file descriptor, with batched I/O through
 * recvmmsg/sendmmsg over native memory (x86_64 Linux struct layouts).
 *
 * One socket serves both IP versions: AF_INET6 with IPV6_V6ONLY off, where an IPv4 peer is the
 * mapped address ::ffff:a.b.c.d (one descriptor to poll, one batch path, one port for peers to
 * reach). A host without IPv6 (no /proc/sys/net/ipv6, or socket(AF_INET6) refused) gets a plain
 * AF_INET socket; IPv6 destinations then fail like unreachable ones.
 *
 * Addresses cross this module as the data plane carries them: `ip` the low 32 bits, `hi` the
 * upper 96 (three words, all zero for IPv4; PacketBatch.hi). The control thread's sendDatagram*
 * take an endpoint number instead (an IPv4 address or an IPv6 handle, src/util/ipv6.ts).
 */
import * as fs from 'node:fs';
import * as libc from '../ffi/libc';
import { allocNative, type NativeBlock } from '../ffi/mem';
import { osError } from '../errors';
import { copyBytes, type PacketBatch, type SendList } from '../../dataplane/batch';
import type { UdpIo } from '../../dataplane/io';
import { splitAddress } from '../../util/ipv6';

export interface UdpSocketOptions {
  port: number; // 0 = any free port
  bindIp?: number; // IPv4 address to bind (on the dual-stack socket: its mapped form); default any
  bufferBytes?: number; // SO_RCVBUF/SO_SNDBUF request (forced when root)
  /** 6: dual-stack AF_INET6 (default when the host has IPv6), 4: AF_INET only. */
  family?: 4 | 6;
  /** SO_REUSEPORT before bind: more sockets may bind the same port (./reuseport.ts). */
  reusePort?: boolean;
}

export interface UdpSocket {
  readonly fd: number;
  readonly port: number;
  /** 6: dual-stack (IPv4 and IPv6 peers), 4: IPv4 only. */
  readonly family: 4 | 6;
  close(): void;
}

const SOCKADDR_IN = 16;
const SOCKADDR_IN6 = 28;
/** Room for either address in a message's name. */
const NAME = SOCKADDR_IN6;

/** The kernel has IPv6 at all (a host booted with ipv6.disable=1 has no /proc/sys/net/ipv6). */
export function ipv6Available(): boolean {
  return fs.existsSync('/proc/sys/net/ipv6');
}

export function writeSockaddrIn(b: Buffer, off: number, ip: number, port: number): void {
  b.fill(0, off, off + SOCKADDR_IN);
  b.writeUInt16LE(libc.AF_INET, off);
  b.writeUInt16BE(port, off + 2);
  b.writeUInt32BE(ip >>> 0, off + 4);
}

/** sockaddr_in6 for lo + hi (hi all zero: the IPv4 address lo, written as ::ffff:lo). */
export function writeSockaddrIn6(b: Buffer, off: number, lo: number, h0: number, h1: number, h2: number, port: number): void {
  b.writeUInt32LE(libc.AF_INET6, off); // family, and port 0 until the next line
  b.writeUInt16BE(port, off + 2);
  b.writeUInt32LE(0, off + 4); // flowinfo
  if (h0 === 0 && h1 === 0 && h2 === 0) {
    b.writeUInt32LE(0, off + 8);
    b.writeUInt32LE(0, off + 12);
    b.writeUInt32BE(0xffff, off + 16);
  } else {
    b.writeUInt32BE(h0 >>> 0, off + 8);
    b.writeUInt32BE(h1 >>> 0, off + 12);
    b.writeUInt32BE(h2 >>> 0, off + 16);
  }
  b.writeUInt32BE(lo >>> 0, off + 20);
  b.writeUInt32LE(0, off + 24); // scope id
}

/**
 * Writes the socket address for a destination into b at off; returns its length. On an IPv4-only
 * socket an IPv6 destination gets an AF_INET6 name of IPv4 length, which the kernel refuses
 * (counted as an undeliverable datagram) instead of sending it to the wrong IPv4 address.
 */
function writeName(b: Buffer, off: number, family: 4 | 6, lo: number, h0: number, h1: number, h2: number, port: number): number {
  if (family === 6) {
    writeSockaddrIn6(b, off, lo, h0, h1, h2, port);
    return SOCKADDR_IN6;
  }
  writeSockaddrIn(b, off, lo, port);
  if (h0 !== 0 || h1 !== 0 || h2 !== 0) b.writeUInt16LE(libc.AF_INET6, off);
  return SOCKADDR_IN;
}

/**
 * Reads a received name at off into out[0..3] (lo, h0, h1, h2) and returns the port. A mapped
 * IPv4 source (::ffff:a.b.c.d) or an AF_INET one gives hi all zero.
 */
function readName(b: Buffer, off: number, out: Uint32Array): number {
  const port = b.readUInt16BE(off + 2);
  if (b.readUInt16LE(off) !== libc.AF_INET6) {
    out[0] = b.readUInt32BE(off + 4);
    out[1] = out[2] = out[3] = 0;
    return port;
  }
  const h0 = b.readUInt32BE(off + 8);
  const h1 = b.readUInt32BE(off + 12);
  const h2 = b.readUInt32BE(off + 16);
  out[0] = b.readUInt32BE(off + 20);
  if (h0 === 0 && h1 === 0 && h2 === 0xffff) out[1] = out[2] = out[3] = 0;
  else {
    out[1] = h0;
    out[2] = h1;
    out[3] = h2;
  }
  return port;
}

/** Known sockets' families (sendDatagram* on the control thread); others are asked with getsockname. */
const families = new Map<number, 4 | 6>();

/** The address family of a UDP socket descriptor. */
export function socketFamily(fd: number): 4 | 6 {
  const known = families.get(fd);
  if (known !== undefined) return known;
  const addr = Buffer.alloc(SOCKADDR_IN6);
  const len = new Uint32Array([SOCKADDR_IN6]);
  if (libc.getsockname(fd, addr, len) !== 0) return 4;
  return addr.readUInt16LE(0) === libc.AF_INET6 ? 6 : 4;
}

function setOpt(fd: number, level: number, name: number, value: number): boolean {
  const v = new Uint8Array(4);
  new DataView(v.buffer).setInt32(0, value, true);
  return libc.setsockopt(fd, level, name, v, 4) === 0;
}

function setIntOpt(fd: number, name: number, value: number): boolean {
  return setOpt(fd, libc.SOL_SOCKET, name, value);
}

export function openUdpSocket(opts: UdpSocketOptions): UdpSocket {
  const type = libc.SOCK_DGRAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC;
  let family: 4 | 6 = opts.family ?? (ipv6Available() ? 6 : 4);
  let fd = family === 6 ? libc.socket(libc.AF_INET6, type, 0) : -1;
  if (fd >= 0 && !setOpt(fd, libc.IPPROTO_IPV6, libc.IPV6_V6ONLY, 0)) {
    libc.close(fd);
    fd = -1;
  }
  if (fd < 0) {
    if (opts.family === 6) throw osError('socket(AF_INET6, SOCK_DGRAM)');
    family = 4;
    fd = libc.socket(libc.AF_INET, type, 0);
    if (fd < 0) throw osError('socket(AF_INET, SOCK_DGRAM)');
  }
  try {
    const bytes = opts.bufferBytes ?? 4 << 20;
    // The *FORCE variants pass the sysctl caps when we are root; fall back to the plain ones.
    if (!setIntOpt(fd, libc.SO_RCVBUFFORCE, bytes)) setIntOpt(fd, libc.SO_RCVBUF, bytes);
    if (!setIntOpt(fd, libc.SO_SNDBUFFORCE, bytes)) setIntOpt(fd, libc.SO_SNDBUF, bytes);
    if (opts.reusePort && !setIntOpt(fd, libc.SO_REUSEPORT, 1)) throw osError('setsockopt(SO_REUSEPORT)');
    const addr = Buffer.alloc(SOCKADDR_IN6);
    let alen = SOCKADDR_IN;
    if (family === 6 && opts.bindIp === undefined) {
      addr.writeUInt16LE(libc.AF_INET6, 0); // in6addr_any: every IPv4 and IPv6 address
      addr.writeUInt16BE(opts.port, 2);
      alen = SOCKADDR_IN6;
    } else alen = writeName(addr, 0, family, opts.bindIp ?? 0, 0, 0, 0, opts.port);
    if (libc.bind(fd, addr, alen) !== 0) throw osError(`bind(udp port ${opts.port})`);
    const len = new Uint32Array([SOCKADDR_IN6]);
    if (libc.getsockname(fd, addr, len) !== 0) throw osError('getsockname');
    const port = addr.readUInt16BE(2);
    families.set(fd, family);
    let closed = false;
    return {
      fd,
      port,
      family,
      close() {
        if (!closed) {
          families.delete(fd);
          libc.close(fd);
        }
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
 * plain sendto) to `ip` (an IPv4 address or an IPv6 handle). Returns false when the kernel
 * refused it.
 */
export function sendDatagram(fd: number, data: Uint8Array, ip: number, port: number): boolean {
  const addr = Buffer.alloc(SOCKADDR_IN6);
  const a = splitAddress(ip);
  const alen = writeName(addr, 0, socketFamily(fd), a.lo, a.hi[0], a.hi[1], a.hi[2], port);
  return libc.sendto(fd, data, data.length, libc.MSG_DONTWAIT, addr, alen) === data.length;
}

/**
 * Sends one datagram whose IP TTL is `ttl` (an IP_TTL cmsg on this message only; the socket's
 * other sends keep theirs), from the control thread on the data plane's socket. A hole punch
 * with a small TTL creates the mapping in our own NAT and dies in the network before it reaches
 * the peer's NAT, where an early packet would leave an entry that changes the peer's mapping.
 * Returns false when the kernel refused it.
 */
export function sendDatagramTtl(fd: number, data: Uint8Array, ip: number, port: number, ttl: number): boolean {
  // mmsghdr (64) | sockaddr_in6 (28, room for either) | iovec (16) | cmsg with an int (24) | payload
  const size = MMSG + NAME + IOVEC + CMSG_SPACE_INT + data.length;
  const mem = allocNative(size);
  try {
    const m = mem.buf;
    const at = (off: number) => mem.ptr + BigInt(off);
    const nameOff = MMSG;
    const iovOff = nameOff + NAME;
    const ctrlOff = iovOff + IOVEC;
    const dataOff = ctrlOff + CMSG_SPACE_INT;
    const a = splitAddress(ip);
    const v6 = a.hi[0] !== 0 || a.hi[1] !== 0 || a.hi[2] !== 0;
    const alen = writeName(m, nameOff, socketFamily(fd), a.lo, a.hi[0], a.hi[1], a.hi[2], port);
    m.set(data, dataOff);
    m.writeBigUInt64LE(at(dataOff), iovOff); // iov_base
    m.writeBigUInt64LE(BigInt(data.length), iovOff + 8); // iov_len
    m.writeBigUInt64LE(BigInt(CMSG_SPACE_INT - 4), ctrlOff); // cmsg_len = CMSG_LEN(sizeof(int))
    // an IPv4 destination (also mapped, on the dual-stack socket) takes IP_TTL, an IPv6 one IPV6_HOPLIMIT
    m.writeInt32LE(v6 ? libc.IPPROTO_IPV6 : libc.IPPROTO_IP, ctrlOff + 8);
    m.writeInt32LE(v6 ? libc.IPV6_HOPLIMIT : libc.IP_TTL, ctrlOff + 12);
    m.writeInt32LE(ttl, ctrlOff + 16);
    m.writeBigUInt64LE(at(nameOff), 0); // msg_name
    m.writeUInt32LE(alen, 8); // msg_namelen
    m.writeBigUInt64LE(at(iovOff), 16); // msg_iov
    m.writeBigUInt64LE(1n, 24); // msg_iovlen
    m.writeBigUInt64LE(at(ctrlOff), 32); // msg_control
    m.writeBigUInt64LE(BigInt(CMSG_SPACE_INT), 40); // msg_controllen
    return libc.sendmmsg(fd, mem.ptr, 1, libc.MSG_DONTWAIT) === 1;
  } finally {
    mem.free();
  }
}

// struct mmsghdr { struct msghdr { void *name; socklen_t namelen; struct iovec *iov; size_t iovlen;
//   void *control; size_t controllen; int flags; } hdr; unsigned int len; } = 64 bytes on x86_64.
const MMSG = 64;
const IOVEC = 16;
// One cmsg carrying a u16: struct cmsghdr { size_t len; int level; int type; } + data, padded to 8.
const CMSG_SPACE_U16 = 24;
const CMSG_LEN_U16 = 18;
/**
 * UDP GSO limits: the kernel takes at most 64 segments per send (UDP_MAX_SEGMENTS on older
 * kernels; 128 on newer), and the whole payload must fit one IPv4 datagram's length field.
 */
export const GSO_MAX_SEGMENTS = 64;
const GSO_MAX_BYTES = 65535 - 20 - 8;
/** GSO sends refused, with none accepted yet, before a socket stops trying. */
export const GSO_GIVE_UP = 3;

export interface UdpBatchOptions {
  /**
   * Send runs of equal-size datagrams to one destination as one UDP GSO message (UDP_SEGMENT):
   * one trip through the IP stack per run instead of per datagram; the receiving kernel hands
   * them to the socket as the same separate datagrams. A run the kernel refuses is sent one by
   * one; after GSO_GIVE_UP refusals with no GSO send accepted, GSO is turned off. Default true.
   */
  gso?: boolean;
  /**
   * Receive with UDP GRO (UDP_GRO): the kernel hands over a run of datagrams from one sender as
   * one buffer (up to 64 KiB) with their size in a cmsg, and recvBatch cuts it into slots. Saves
   * the kernel's per-datagram socket work when the sender used GSO. Default false.
   */
  gro?: boolean;
}

/** Landing buffers for GRO receives: each holds one (possibly coalesced) message. */
const GRO_MSGS = 8;
const GRO_BUF = 65536;
/** Scratch a receiving UdpBatchIo with GRO carves from its batch's block when there is room (PacketBatch.carve). */
export const UDP_GRO_SCRATCH = GRO_MSGS * GRO_BUF;
// cmsg with an int: 16-byte header + 4 bytes, padded to 8
const CMSG_SPACE_INT = 24;

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
  private readonly ctrlOff: number;
  /** Native addresses split in 32-bit halves, so writing them allocates no BigInt. */
  private readonly slotLo: Uint32Array;
  private readonly slotHi: Uint32Array;
  private readonly iovLo: Uint32Array;
  private readonly iovHi: Uint32Array;
  private readonly ctrlLo: Uint32Array;
  private readonly ctrlHi: Uint32Array;
  /** Per message of the send being built: its first list entry and its datagram count. */
  private readonly msgFirst: Int32Array;
  private readonly msgSegs: Int32Array;
  private recvReady = false;
  /** UDP GSO in use (see UdpBatchOptions.gso). */
  gso: boolean;
  /** Datagrams the kernel refused with an error other than EAGAIN (e.g. ENETUNREACH). */
  sendErrors = 0;
  lastErrno = 0;
  /** GSO messages sent, and the datagrams they carried. */
  gsoMessages = 0;
  gsoSegments = 0;
  /** GSO messages the kernel refused (their datagrams were then sent one by one). */
  gsoRefused = 0;
  /** UDP GRO in use on receive (see UdpBatchOptions.gro). */
  readonly gro: boolean;
  private groLand?: GroLanding;
  /** The socket's family, and the name length its messages carry. */
  readonly family: 4 | 6;
  private readonly nameLen: number;
  /** A received source: lo, h0, h1, h2. */
  private readonly src = new Uint32Array(4);

  constructor(
    private readonly fd: number,
    private readonly batch: PacketBatch,
    opts: UdpBatchOptions = {},
  ) {
    if (batch.basePtr === 0n) throw new Error('UdpBatchIo needs a batch in native memory');
    this.gso = opts.gso ?? true;
    this.family = socketFamily(fd);
    this.nameLen = this.family === 6 ? SOCKADDR_IN6 : SOCKADDR_IN;
    const capacity = batch.capacity;
    this.iovOff = capacity * MMSG;
    this.namesOff = this.iovOff + capacity * IOVEC;
    this.ctrlOff = this.namesOff + capacity * NAME;
    this.meta = allocNative(this.ctrlOff + capacity * CMSG_SPACE_U16);
    this.m = this.meta.buf;
    this.vec = this.meta.ptr;
    const split = (n: number, addr: (i: number) => bigint): [Uint32Array, Uint32Array] => {
      const lo = new Uint32Array(n);
      const hi = new Uint32Array(n);
      for (let i = 0; i < n; i++) {
        const p = addr(i);
        lo[i] = Number(p & 0xffffffffn);
        hi[i] = Number(p >> 32n);
      }
      return [lo, hi];
    };
    [this.slotLo, this.slotHi] = split(capacity, (i) => batch.basePtr + BigInt(batch.offset(i)));
    [this.iovLo, this.iovHi] = split(capacity, (i) => this.vec + BigInt(this.iovOff + i * IOVEC));
    [this.ctrlLo, this.ctrlHi] = split(capacity, (i) => this.vec + BigInt(this.ctrlOff + i * CMSG_SPACE_U16));
    this.gro = opts.gro === true && setUdpGro(fd);
    if (this.gro) this.groLand = new GroLanding(this.nameLen, batch);
    this.msgFirst = new Int32Array(capacity);
    this.msgSegs = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) {
      this.m.writeBigUInt64LE(this.meta.ptr + BigInt(this.namesOff + i * NAME), i * MMSG); // msg_name
      // the cmsg of message i, used when it carries a GSO run
      const c = this.ctrlOff + i * CMSG_SPACE_U16;
      this.m.writeUInt32LE(CMSG_LEN_U16, c);
      this.m.writeUInt32LE(0, c + 4);
      this.m.writeInt32LE(libc.SOL_UDP, c + 8);
      this.m.writeInt32LE(libc.UDP_SEGMENT, c + 12);
    }
  }

  /** Message j: name (already set), `iovs` iovecs from iovec `first`, and a GSO cmsg when gsoSize > 0. */
  private setMessage(j: number, first: number, iovs: number, gsoSize: number): void {
    const m = this.m;
    const h = j * MMSG;
    m.writeUInt32LE(this.nameLen, h + 8); // msg_namelen
    m.writeUInt32LE(this.iovLo[first]!, h + 16); // msg_iov
    m.writeUInt32LE(this.iovHi[first]!, h + 20);
    m.writeUInt32LE(iovs, h + 24); // msg_iovlen
    m.writeUInt32LE(0, h + 28);
    if (gsoSize > 0) {
      m.writeUInt32LE(this.ctrlLo[j]!, h + 32); // msg_control
      m.writeUInt32LE(this.ctrlHi[j]!, h + 36);
      m.writeUInt32LE(CMSG_SPACE_U16, h + 40); // msg_controllen
      m.writeUInt16LE(gsoSize, this.ctrlOff + j * CMSG_SPACE_U16 + 16);
    } else {
      m.writeUInt32LE(0, h + 32);
      m.writeUInt32LE(0, h + 36);
      m.writeUInt32LE(0, h + 40);
    }
    m.writeUInt32LE(0, h + 44);
  }

  private setIov(j: number, slot: number, len: number): void {
    const io = this.iovOff + j * IOVEC;
    this.m.writeUInt32LE(this.slotLo[slot]!, io);
    this.m.writeUInt32LE(this.slotHi[slot]!, io + 4);
    this.m.writeUInt32LE(len, io + 8);
    this.m.writeUInt32LE(0, io + 12);
  }

  /** GRO: messages received that held more than one datagram, and the datagrams in them. */
  get groCoalesced(): number {
    return this.groLand?.coalesced ?? 0;
  }
  get groSegments(): number {
    return this.groLand?.segments ?? 0;
  }

  /** GRO: datagrams already received wait in the landing buffers (call recvBatch again). */
  get pendingRecv(): boolean {
    return this.groLand?.pending ?? false;
  }

  recvBatch(batch: PacketBatch): number {
    if (batch !== this.batch) throw new Error('UdpBatchIo used with a foreign batch');
    if (this.groLand) return this.groLand.recv(this.fd, batch, this);
    const m = this.m;
    const n0 = batch.capacity;
    if (!this.recvReady) {
      // The receive vector (slot i <- message i, full slot size) stays valid until a send
      // reuses the headers; recvmmsg itself only rewrites msg_namelen and msg_len.
      for (let i = 0; i < n0; i++) {
        this.setMessage(i, i, 1, 0);
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
    const src = this.src;
    const hi = batch.hi;
    for (let i = 0; i < n; i++) {
      m.writeUInt32LE(this.nameLen, i * MMSG + 8);
      batch.len[i] = m.readUInt32LE(i * MMSG + 56);
      batch.port[i] = readName(m, this.namesOff + i * NAME, src);
      batch.ip[i] = src[0]!;
      hi[3 * i] = src[1]!;
      hi[3 * i + 1] = src[2]!;
      hi[3 * i + 2] = src[3]!;
    }
    return n;
  }

  sendBatch(batch: PacketBatch, list: SendList): number {
    if (batch !== this.batch) throw new Error('UdpBatchIo used with a foreign batch');
    this.recvReady = false;
    return this.sendFrom(batch, list, 0, this.gso);
  }

  /**
   * Sends list entries from `start` on. With GSO, consecutive datagrams to one destination whose
   * sizes are equal (the last may be shorter) go as one message; otherwise one message each.
   */
  private sendFrom(batch: PacketBatch, list: SendList, start: number, gso: boolean): number {
    const count = list.count;
    const hi = batch.hi;
    let msgs = 0;
    for (let j = start; j < count; ) {
      const i0 = list.idx[j]!;
      const ip = batch.ip[i0]!;
      const port = batch.port[i0]!;
      const size = batch.len[i0]!;
      const h0 = hi[3 * i0]!;
      const h1 = hi[3 * i0 + 1]!;
      const h2 = hi[3 * i0 + 2]!;
      let run = 1;
      if (gso) {
        const limit = Math.min(GSO_MAX_SEGMENTS, Math.floor(GSO_MAX_BYTES / size));
        while (j + run < count && run < limit) {
          const i = list.idx[j + run]!;
          const len = batch.len[i]!;
          if (batch.ip[i] !== ip || batch.port[i] !== port || len > size) break;
          if (hi[3 * i] !== h0 || hi[3 * i + 1] !== h1 || hi[3 * i + 2] !== h2) break;
          run++;
          if (len < size) break; // a shorter datagram ends a run
        }
      }
      for (let k = j; k < j + run; k++) {
        const i = list.idx[k]!;
        this.setIov(k, i, batch.len[i]!);
      }
      writeName(this.m, this.namesOff + msgs * NAME, this.family, ip, h0, h1, h2, port);
      this.setMessage(msgs, j, run, run > 1 ? size : 0);
      this.msgFirst[msgs] = j;
      this.msgSegs[msgs] = run;
      msgs++;
      j += run;
    }
    let done = 0;
    let sent = 0;
    let refused = 0;
    while (done < msgs) {
      const r = libc.sendmmsg(this.fd, done === 0 ? this.vec : this.vec + BigInt(done * MMSG), msgs - done, 0);
      if (r >= 0) {
        for (let k = done; k < done + r; k++) {
          const segs = this.msgSegs[k]!;
          sent += segs;
          if (segs > 1) {
            this.gsoMessages++;
            this.gsoSegments += segs;
          }
        }
        done += r;
        continue;
      }
      const e = libc.errno();
      if (e === libc.EINTR) continue;
      this.lastErrno = e;
      if (e === libc.EAGAIN) break; // socket buffer full: the rest is dropped, as a router would
      const segs = this.msgSegs[done]!;
      if (segs > 1 && (e === libc.EIO || e === libc.EINVAL || e === libc.EOPNOTSUPP || e === libc.EMSGSIZE)) {
        // The kernel would not segment this run (no UDP GSO in this kernel, no checksum offload
        // on the route, or datagrams larger than the path MTU): send the rest one by one. If GSO
        // never worked on this socket after a few tries, stop trying.
        this.gsoRefused++;
        if (this.gsoMessages === 0 && this.gsoRefused >= GSO_GIVE_UP) this.gso = false;
        return sent - refused + this.sendFrom(batch, list, this.msgFirst[done]!, false);
      }
      this.sendErrors += segs; // undeliverable (no route, unreachable): skip this message only
      refused += segs;
      sent += segs;
      done++;
    }
    return sent - refused;
  }

  close(): void {
    this.meta.free();
    this.groLand?.free();
  }
}

function setUdpGro(fd: number): boolean {
  const v = new Uint8Array(4);
  new DataView(v.buffer).setInt32(0, 1, true);
  return libc.setsockopt(fd, libc.SOL_UDP, libc.UDP_GRO, v, 4) === 0;
}

/**
 * recvmmsg into GRO_MSGS landing buffers of 64 KiB, then each message cut at its segment size
 * (the UDP_GRO cmsg; a message without one is one datagram) and copied into the batch's slots.
 * What does not fit in this batch waits for the next one.
 */
class GroLanding {
  private readonly meta: NativeBlock;
  /** The landing buffers: carved from the batch's block when it has room (then `own` is null). */
  private readonly land: Buffer;
  private readonly landOff: number;
  private readonly own: NativeBlock | null;
  private readonly m: Buffer;
  private readonly iovOff = GRO_MSGS * MMSG;
  private readonly namesOff = this.iovOff + GRO_MSGS * IOVEC;
  private readonly ctrlOff = this.namesOff + GRO_MSGS * NAME;
  private readonly src = new Uint32Array(4);
  /** Messages received by the last recvmmsg, the one being cut, and the offset reached in it. */
  private count = 0;
  private cur = 0;
  private off = 0;
  /** Coalesced messages received, and the datagrams they held. */
  coalesced = 0;
  segments = 0;

  constructor(
    private readonly nameLen: number,
    batch: PacketBatch,
  ) {
    this.meta = allocNative(this.ctrlOff + GRO_MSGS * CMSG_SPACE_INT);
    const c = batch.carve(UDP_GRO_SCRATCH);
    this.own = c === null ? allocNative(UDP_GRO_SCRATCH) : null;
    this.land = this.own?.buf ?? batch.buf;
    this.landOff = c?.off ?? 0;
    const landPtr = this.own?.ptr ?? c!.ptr;
    this.m = this.meta.buf;
    for (let i = 0; i < GRO_MSGS; i++) {
      const h = i * MMSG;
      const io = this.iovOff + i * IOVEC;
      this.m.writeBigUInt64LE(this.meta.ptr + BigInt(this.namesOff + i * NAME), h);
      this.m.writeBigUInt64LE(this.meta.ptr + BigInt(io), h + 16);
      this.m.writeBigUInt64LE(1n, h + 24);
      this.m.writeBigUInt64LE(this.meta.ptr + BigInt(this.ctrlOff + i * CMSG_SPACE_INT), h + 32);
      this.m.writeBigUInt64LE(landPtr + BigInt(i * GRO_BUF), io);
      this.m.writeBigUInt64LE(BigInt(GRO_BUF), io + 8);
    }
  }

  get pending(): boolean {
    return this.cur < this.count;
  }

  recv(fd: number, batch: PacketBatch, errs: { lastErrno: number }): number {
    const m = this.m;
    let n = 0;
    for (;;) {
      if (this.cur >= this.count) {
        if (n > 0) return n; // one recvmmsg per call: a caller that got a full batch comes back
        for (let i = 0; i < GRO_MSGS; i++) {
          m.writeUInt32LE(this.nameLen, i * MMSG + 8); // msg_namelen
          m.writeUInt32LE(CMSG_SPACE_INT, i * MMSG + 40); // msg_controllen
          m.writeUInt32LE(0, i * MMSG + 44);
        }
        const r = libc.recvmmsg(fd, this.meta.ptr, GRO_MSGS, libc.MSG_DONTWAIT, 0n);
        if (r <= 0) {
          if (r < 0) {
            const e = libc.errno();
            if (e !== libc.EAGAIN && e !== libc.EINTR) errs.lastErrno = e;
          }
          return 0;
        }
        this.count = r;
        this.cur = 0;
        this.off = 0;
      }
      const i = this.cur;
      const h = i * MMSG;
      const len = m.readUInt32LE(h + 56);
      let seg = len;
      if (m.readUInt32LE(h + 40) >= CMSG_SPACE_INT - 4) {
        const c = this.ctrlOff + i * CMSG_SPACE_INT;
        if (m.readInt32LE(c + 8) === libc.SOL_UDP && m.readInt32LE(c + 12) === libc.UDP_GRO) seg = m.readInt32LE(c + 16);
      }
      if (seg <= 0) seg = len;
      if (this.off === 0 && seg < len) {
        this.coalesced++;
        this.segments += Math.ceil(len / seg);
      }
      const src = this.src;
      const port = readName(m, this.namesOff + i * NAME, src);
      const ip = src[0]!;
      const base = this.landOff + i * GRO_BUF;
      const room = batch.slotSize;
      while (this.off < len && n < batch.capacity) {
        const l = Math.min(seg, len - this.off);
        // a datagram larger than a slot is cut short, as recvmmsg into the slot would have
        copyBytes(this.land, batch.buf, batch.offset(n), base + this.off, base + this.off + Math.min(l, room));
        batch.len[n] = Math.min(l, room);
        batch.ip[n] = ip;
        batch.hi[3 * n] = src[1]!;
        batch.hi[3 * n + 1] = src[2]!;
        batch.hi[3 * n + 2] = src[3]!;
        batch.port[n] = port;
        n++;
        this.off += l;
      }
      if (this.off < len) return n; // the batch is full; the rest of this message waits
      this.cur++;
      this.off = 0;
    }
  }

  free(): void {
    this.meta.free();
    this.own?.free();
  }
}
