/**
 * Linux TUN devices through /dev/net/tun: open + TUNSETIFF (IFF_TUN | IFF_NO_PI), non-blocking.
 * The device exists while a descriptor is open on it (not persistent), so closing the last
 * descriptor (or the process dying) removes the device and every address and route on it.
 * Addresses, MTU and link state are set by the route manager (src/os/routes), not here.
 */
import * as libc from '../ffi/libc';
import { osError } from '../errors';
import { CladnetError } from '../../errors';
import { HEADER_LEN } from '../../dataplane/wire';
import { allocNative, type NativeBlock } from '../ffi/mem';
import {
  completeChecksum,
  GRO_MAX,
  l4ChecksumOffset,
  l4Proto,
  l4Start,
  splitFromTun,
  TcpCoalescer,
  VNET_HDR_LEN,
  writeVnetHeader,
} from '../../dataplane/offload';
import type { PacketBatch } from '../../dataplane/batch';
import type { TunIo } from '../../dataplane/io';

export interface TunDevice {
  readonly name: string;
  /** One descriptor per queue (one unless multiQueue). */
  readonly fds: readonly number[];
  /** Reads and writes carry a virtio-net header; the kernel sends TSO super-packets. */
  readonly offload: boolean;
  close(): void;
}

const IFNAMSIZ = 16;
const IFREQ = 40;

export function validIfName(name: string): boolean {
  return /^[a-zA-Z0-9_.-]{1,15}$/.test(name) && name !== '.' && name !== '..';
}

export interface TunOptions {
  queues?: number;
  /** Ask for IFF_VNET_HDR with checksum and TCPv4/TCPv6 segmentation offload (falls back when refused). */
  offload?: boolean;
}

export function openTun(name: string, opts: TunOptions = {}): TunDevice {
  if (opts.offload) {
    try {
      return openTunWith(name, opts.queues ?? 1, true);
    } catch (e) {
      if ((e as { code?: string }).code === 'ECONFIG') throw e;
      // An old kernel without TUN offloads: plain packets work everywhere.
    }
  }
  return openTunWith(name, opts.queues ?? 1, false);
}

function openTunWith(name: string, queues: number, offload: boolean): TunDevice {
  if (!validIfName(name)) {
    throw new CladnetError('ECONFIG', `interface: "${name}" is not a valid interface name (1-15 of [A-Za-z0-9_.-])`, {
      field: 'interface',
    });
  }
  const fds: number[] = [];
  const close = () => {
    for (const fd of fds.splice(0)) libc.close(fd);
  };
  try {
    for (let q = 0; q < queues; q++) {
      const fd = libc.open('/dev/net/tun', libc.O_RDWR | libc.O_NONBLOCK | libc.O_CLOEXEC);
      if (fd < 0) throw osError('open(/dev/net/tun)');
      fds.push(fd);
      const ifr = new Uint8Array(IFREQ);
      const nameBytes = Buffer.from(name, 'ascii');
      ifr.set(nameBytes.subarray(0, IFNAMSIZ - 1), 0);
      const flags =
        libc.IFF_TUN | libc.IFF_NO_PI | (queues > 1 ? libc.IFF_MULTI_QUEUE : 0) | (offload ? libc.IFF_VNET_HDR : 0);
      ifr[IFNAMSIZ] = flags & 0xff;
      ifr[IFNAMSIZ + 1] = (flags >> 8) & 0xff;
      if (libc.ioctlPtr(fd, libc.TUNSETIFF, ifr) !== 0) throw osError(`ioctl(TUNSETIFF ${name})`);
      if (offload && libc.ioctlNum(fd, libc.TUNSETOFFLOAD, libc.TUN_F_CSUM | libc.TUN_F_TSO4 | libc.TUN_F_TSO6 | libc.TUN_F_TSO_ECN) !== 0) {
        throw osError(`ioctl(TUNSETOFFLOAD ${name})`);
      }
    }
  } catch (e) {
    close();
    throw e;
  }
  return { name, fds, offload, close };
}

/** Largest read from a TUN with offloads: a 64 KiB super-packet and its virtio-net header. */
const LANDING = 65536 + VNET_HDR_LEN;
/** A coalesced run to write: up to GRO_MAX bytes after the wire header's room. */
const COALESCER = GRO_MAX + HEADER_LEN;
/**
 * Scratch a TunBatchIo carves from its batch's block when there is room (PacketBatch.carve):
 * reading with offloads, the landing buffer; writing, the coalescer's run.
 */
export const TUN_READ_SCRATCH = LANDING;
export const TUN_WRITE_SCRATCH = COALESCER;

/**
 * Reads and writes IP packets on one TUN queue, into and out of native batch slots. Without
 * offloads each read lands in a slot at HEADER, no copy. With offloads each read lands in one
 * 64 KiB buffer and is cut into slots (src/dataplane/offload.ts); a super-packet that does not fit
 * in the slots left waits there for the next batch.
 */
export class TunBatchIo implements TunIo {
  private readonly slotPtr: bigint[] = [];
  private readonly vnetPtr: bigint[] = [];
  // Offload buffers, allocated on first use: a TunBatchIo that only reads never needs the
  // coalescer, one that only writes never needs the landing buffer (the worker has one of each).
  private landing?: { buf: Buffer; off: number; ptr: bigint };
  private pending = 0;
  /** Blocks this TunBatchIo allocated itself (no room in its batch's block), freed by close. */
  private readonly own: NativeBlock[] = [];
  private gro?: TcpCoalescer;
  private groPtr = 0n;
  /** Segments written as part of coalesced super-packets, and super-packets written. */
  coalesced = 0;
  superPackets = 0;
  /** Errors other than EAGAIN from read/write. */
  errors = 0;
  lastErrno = 0;
  /** Reads that could not be turned into packets. */
  malformed = 0;

  /** The queue a pending coalesced run goes to (its flow's, see queueOf). */
  private groFd = -1;

  /**
   * `queues`: with a multi-queue TUN, every queue's descriptor in order. Each packet is then
   * written on the queue its flow hashes to (queueOf), whichever worker writes it: the kernel
   * sends a flow's packets back out on the queue it last wrote them on (tun's automatic flow
   * steering), so each flow's outbound side is read, sealed and sent by one worker, and the
   * flows spread over the workers even when one worker receives all of a peer's traffic.
   * Absent: every write goes to `fd`.
   */
  constructor(
    private readonly fd: number,
    private readonly batch: PacketBatch,
    private readonly vnet = false,
    private readonly queues: readonly number[] | null = null,
  ) {
    if (batch.basePtr === 0n) throw new Error('TunBatchIo needs a batch in native memory');
    for (let i = 0; i < batch.capacity; i++) {
      const p = batch.basePtr + BigInt(batch.offset(i) + HEADER_LEN);
      this.slotPtr.push(p);
      this.vnetPtr.push(p - BigInt(VNET_HDR_LEN));
    }
  }

  /** A super-packet read earlier waits for the next batch. */
  get pendingRead(): boolean {
    return this.pending > 0;
  }

  readBatch(batch: PacketBatch, maxReads = batch.capacity): number {
    if (batch !== this.batch) throw new Error('TunBatchIo used with a foreign batch');
    return this.vnet ? this.readOffload(batch, maxReads) : this.readPlain(batch, maxReads);
  }

  private readPlain(batch: PacketBatch, maxReads: number): number {
    const max = batch.maxPacket;
    let n = 0;
    while (n < batch.capacity && n < maxReads) {
      const r = libc.readPtr(this.fd, this.slotPtr[n]!, max);
      if (r < 0) {
        if (this.readFailed()) continue;
        break;
      }
      batch.len[n] = r;
      batch.flags[n] = 0;
      n++;
    }
    return n;
  }

  private readOffload(batch: PacketBatch, maxReads: number): number {
    const land = (this.landing ??= this.scratch(LANDING));
    let n = 0;
    let reads = 0;
    while (n < batch.capacity && reads++ < maxReads) {
      let len = this.pending;
      this.pending = 0;
      if (len === 0) {
        len = libc.readPtr(this.fd, land.ptr, LANDING);
        if (len < 0) {
          if (this.readFailed()) continue;
          break;
        }
      }
      const r = splitFromTun(land.buf, land.off, len, batch, n);
      if (r === 'full') {
        if (n === 0) this.malformed++; // cannot fit even an empty batch: drop it
        else this.pending = len;
        break;
      }
      if (r === 'malformed') {
        this.malformed++;
        continue;
      }
      n += r;
    }
    return n;
  }

  /** True to retry (EINTR); otherwise records the error and returns false. */
  private readFailed(): boolean {
    const e = libc.errno();
    if (e === libc.EINTR) return true;
    if (e !== libc.EAGAIN) {
      this.errors++;
      this.lastErrno = e;
    }
    return false;
  }

  writeSlot(batch: PacketBatch, i: number, len: number, partial: boolean): boolean {
    const pkt = batch.offset(i) + HEADER_LEN;
    let ptr = this.slotPtr[i]!;
    let n = len;
    if (this.vnet) {
      const gro = this.gro ?? this.startCoalescer();
      if (gro.append(batch.buf, pkt, len)) return true;
      const ok = this.flush() === 0;
      if (TcpCoalescer.eligible(batch.buf, pkt, len)) {
        gro.start(batch.buf, pkt, len, partial);
        this.groFd = this.fdFor(batch.buf, pkt, len);
        return ok;
      }
      if (!writeVnetHeader(batch.buf, pkt, partial)) return false;
      ptr = this.vnetPtr[i]!;
      n = len + VNET_HDR_LEN;
    } else if (partial) {
      const ihl = l4Start(batch.buf, pkt);
      const off = l4ChecksumOffset(l4Proto(batch.buf, pkt));
      if (off < 0 || ihl + off + 2 > len) return false;
      completeChecksum(batch.buf, pkt, len, ihl, off);
    }
    return this.write(this.fdFor(batch.buf, pkt, len), ptr, n);
  }

  /** The queue to write the packet at buf[pkt] on: its flow's (queueOf), else our own. */
  private fdFor(buf: Buffer, pkt: number, len: number): number {
    if (this.queues === null) return this.fd;
    const q = queueOf(buf, pkt, len, this.queues.length);
    return q < 0 ? this.fd : this.queues[q]!;
  }

  private startCoalescer(): TcpCoalescer {
    const mem = this.scratch(COALESCER);
    this.groPtr = mem.ptr + BigInt(HEADER_LEN - VNET_HDR_LEN);
    return (this.gro = new TcpCoalescer(mem.buf, mem.off + HEADER_LEN));
  }

  /** `bytes` of native memory: carved from the batch's block when it has room, else our own. */
  private scratch(bytes: number): { buf: Buffer; off: number; ptr: bigint } {
    const c = this.batch.carve(bytes);
    if (c !== null) return { buf: this.batch.buf, off: c.off, ptr: c.ptr };
    const m = allocNative(bytes);
    this.own.push(m);
    return { buf: m.buf, off: 0, ptr: m.ptr };
  }

  private write(fd: number, ptr: bigint, n: number): boolean {
    for (;;) {
      const r = libc.writePtr(fd, ptr, n);
      if (r >= 0) return true;
      const e = libc.errno();
      if (e === libc.EINTR) continue;
      this.errors++;
      this.lastErrno = e;
      return false;
    }
  }

  /** Writes a pending coalesced run. Returns how many packets the kernel refused. */
  flush(): number {
    const gro = this.gro;
    if (!gro || gro.len === 0) return 0;
    const segs = gro.segments;
    const n = gro.finish();
    if (segs > 1) {
      this.superPackets++;
      this.coalesced += segs;
    }
    return this.write(this.groFd, this.groPtr, n) ? 0 : segs;
  }

  close(): void {
    for (const m of this.own.splice(0)) m.free();
  }
}

/**
 * The queue (of n) for the flow of the IP packet at buf[pkt, pkt + len): a hash of its addresses
 * and ports, the same both ways, for TCP and UDP; -1 for anything else (ICMP, a later fragment,
 * too short), which the writing worker puts on its own queue: the kernel's answer to a ping is
 * then read by the worker that wrote the request, without waking another (docs/performance.md,
 * Many cores: ping p50 0.62 ms with one worker, 0.81 ms with two before this).
 */
export function queueOf(buf: Buffer, pkt: number, len: number, n: number): number {
  if (len < 20) return -1;
  let h: number;
  let proto: number;
  let l4: number;
  if (buf[pkt]! >> 4 === 4) {
    proto = buf[pkt + 9]!;
    if ((buf.readUInt16BE(pkt + 6) & 0x1fff) !== 0) return -1; // a later fragment: no ports
    h = buf.readUInt32BE(pkt + 12) ^ buf.readUInt32BE(pkt + 16);
    l4 = (buf[pkt]! & 15) * 4;
  } else {
    if (len < 40) return -1;
    proto = buf[pkt + 6]!;
    h = buf.readUInt32BE(pkt + 20) ^ buf.readUInt32BE(pkt + 36) ^ buf.readUInt32BE(pkt + 16) ^ buf.readUInt32BE(pkt + 32);
    l4 = 40;
  }
  if ((proto !== 6 && proto !== 17) || l4 + 4 > len) return -1;
  h ^= proto ^ buf.readUInt16BE(pkt + l4) ^ buf.readUInt16BE(pkt + l4 + 2);
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
  return ((h ^ (h >>> 16)) >>> 0) % n;
}
