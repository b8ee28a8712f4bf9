/**
 * Kernel notifications of link, IPv4 address and IPv4 route changes, read from a NETLINK_ROUTE
 * socket subscribed to the RTMGRP_LINK, RTMGRP_IPV4_IFADDR and RTMGRP_IPV4_ROUTE groups.
 *
 * Detection only: `drain()` counts what arrived since the last call and says whether anything was
 * lost; the change monitor (src/agent/changes.ts) decides what that means. Only each message's
 * nlmsghdr (length, type) is read. Struct layouts are those of little-endian Linux (x86_64,
 * arm64), where netlink's host byte order is little-endian.
 *
 * A netlink socket belongs to the network namespace of the thread that opened it.
 */
import { RTPROT_CLADNET } from './routes/routes';
import * as libc from './ffi/libc';
import { NLMSGHDR, SOCKADDR_NL as SA_NL } from './ffi/abi';
import { allocNative, type NativeBlock } from './ffi/mem';
import { osError } from './errors';

export const NETLINK_ROUTE = 0;

// Multicast groups (bit masks for sockaddr_nl.nl_groups).
export const RTMGRP_LINK = 0x1;
export const RTMGRP_IPV4_IFADDR = 0x10;
export const RTMGRP_IPV4_ROUTE = 0x40;
/** IPv6 address changes: our IPv6 underlay candidates (src/agent/candidates.ts). */
export const RTMGRP_IPV6_IFADDR = 0x100;

// Message types (struct nlmsghdr.nlmsg_type).
export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;

/** sizeof(struct nlmsghdr) (16; src/os/ffi/abi.ts, checked against the C headers). */
export const NLMSG_HDRLEN = NLMSGHDR.size;
/** sizeof(struct sockaddr_nl) (12), and where its nl_pid and nl_groups sit. */
const SOCKADDR_NL = SA_NL.size;
const NL_PID = SA_NL.off.nl_pid;
const NL_GROUPS = SA_NL.off.nl_groups;

/** Receive buffer (bytes): far above one notification (< 1 KiB); the kernel's own batches fit. */
const RECV_BYTES = 32 * 1024;
/** Datagrams read per drain at most, so a flood cannot hold the caller; the rest waits. */
const MAX_DATAGRAMS_PER_DRAIN = 1024;

/** What arrived since the previous drain. */
export interface RouteEvents {
  /** RTM_NEWADDR / RTM_DELADDR messages. */
  addr: number;
  /** RTM_NEWROUTE / RTM_DELROUTE messages. */
  route: number;
  /** RTM_NEWLINK / RTM_DELLINK messages. */
  link: number;
  /**
   * Notifications were lost (the socket overflowed: ENOBUFS), or a datagram was truncated or
   * malformed. Something changed that the counts do not show: re-read everything.
   */
  overflow: boolean;
}

/**
 * A source of route/address/link notifications.
 *
 * - `drain()` reads everything queued without blocking and returns the counts; it never throws.
 *   After `close()` it returns zeros.
 * - `fd` can be polled for readability (POLLIN) by a caller that wants to wait; -1 for fakes.
 * - `close()` releases the socket and its buffer; safe to call twice.
 */
export interface RouteEventSource {
  drain(): RouteEvents;
  close(): void;
  readonly fd: number;
}

export function noRouteEvents(): RouteEvents {
  return { addr: 0, route: 0, link: 0, overflow: false };
}

/**
 * Counts the messages in `buf[0, len)` into `into`. Returns false when the buffer is malformed
 * (a header that is short or runs past the end); parsing stops there and the counts so far stay.
 */
export function countRouteMessages(buf: Uint8Array, len: number, into: RouteEvents): boolean {
  const end = Math.min(len, buf.length);
  let off = 0;
  while (off < end) {
    if (end - off < NLMSG_HDRLEN) return false;
    // Read byte by byte: works on any Uint8Array view and allocates nothing.
    const msgLen = (buf[off]! | (buf[off + 1]! << 8) | (buf[off + 2]! << 16) | (buf[off + 3]! << 24)) >>> 0;
    if (msgLen < NLMSG_HDRLEN || msgLen > end - off) return false;
    switch (buf[off + 4]! | (buf[off + 5]! << 8)) {
      case RTM_NEWADDR:
      case RTM_DELADDR:
        into.addr++;
        break;
      case RTM_NEWROUTE:
      case RTM_DELROUTE:
        // Our own routes (rtmsg.rtm_protocol, the payload's sixth byte, is cladnet's) are no news
        // about the underlay: the overlay's subnet routes and endpoint pins would wake us for nothing.
        if (msgLen >= NLMSG_HDRLEN + 8 && buf[off + NLMSG_HDRLEN + 5] === RTPROT_CLADNET) break;
        into.route++;
        break;
      case RTM_NEWLINK:
      case RTM_DELLINK:
        into.link++;
        break;
      case NLMSG_OVERRUN:
        into.overflow = true;
        break;
      default:
        break; // NLMSG_NOOP/ERROR/DONE and anything else: we send no requests, nothing to count
    }
    off += (msgLen + 3) & ~3; // NLMSG_ALIGN
  }
  return true;
}

export interface RouteMonitorOptions {
  /** nl_groups to subscribe to (default link + IPv4 addresses + IPv4 routes). */
  groups?: number;
  /** SO_RCVBUF request in bytes (forced when root; default 1 MiB). */
  socketBytes?: number;
}

/** The NETLINK_ROUTE socket behind `openRouteMonitor`. */
export class RouteMonitor implements RouteEventSource {
  /** Datagrams not sent by the kernel (nl_pid != 0): another process unicasting to us; ignored. */
  foreign = 0;
  /** ENOBUFS reports (the socket buffer overflowed and notifications were lost). */
  overflows = 0;
  /** The last errno other than EAGAIN/EINTR/ENOBUFS; 0 when none. */
  lastErrno = 0;

  private readonly mem: NativeBlock;
  private readonly addrOff = RECV_BYTES;
  private readonly alenOff = RECV_BYTES + 16;
  private readonly addrPtr: bigint;
  private readonly alenPtr: bigint;
  private closed = false;

  constructor(readonly fd: number) {
    this.mem = allocNative(RECV_BYTES + 16 + 8);
    this.addrPtr = this.mem.ptr + BigInt(this.addrOff);
    this.alenPtr = this.mem.ptr + BigInt(this.alenOff);
  }

  drain(): RouteEvents {
    const ev = noRouteEvents();
    if (this.closed) return ev;
    const m = this.mem.buf;
    for (let i = 0; i < MAX_DATAGRAMS_PER_DRAIN; i++) {
      m.writeUInt32LE(SOCKADDR_NL, this.alenOff);
      m.writeUInt32LE(0xffffffff, this.addrOff + NL_PID); // a sender we did not learn is not the kernel
      // MSG_TRUNC: the result is the datagram's real length, so truncation is visible.
      const n = libc.recvfromPtr(this.fd, this.mem.ptr, RECV_BYTES, libc.MSG_DONTWAIT | libc.MSG_TRUNC, this.addrPtr, this.alenPtr);
      if (n < 0) {
        const e = libc.errno();
        if (e === libc.EINTR) continue;
        if (e === libc.ENOBUFS) {
          // Reported once per overflow; the socket keeps working and later messages are intact.
          ev.overflow = true;
          this.overflows++;
          continue;
        }
        if (e !== libc.EAGAIN) this.lastErrno = e;
        break;
      }
      if (m.readUInt32LE(this.addrOff + NL_PID) !== 0) {
        this.foreign++;
        continue;
      }
      if (n > RECV_BYTES) ev.overflow = true;
      if (!countRouteMessages(m, Math.min(n, RECV_BYTES), ev)) ev.overflow = true;
    }
    return ev;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
    this.mem.free();
  }
}

function setIntOpt(fd: number, name: number, value: number): boolean {
  const v = new Uint8Array(4);
  new DataView(v.buffer).setInt32(0, value, true);
  return libc.setsockopt(fd, libc.SOL_SOCKET, name, v, 4) === 0;
}

/**
 * Opens a non-blocking NETLINK_ROUTE socket in the calling thread's network namespace, subscribed
 * to link, IPv4 address and IPv4 route notifications. Throws an EOS CladnetError when the kernel
 * refuses.
 */
export function openRouteMonitor(opts: RouteMonitorOptions = {}): RouteMonitor {
  const fd = libc.socket(libc.AF_NETLINK, libc.SOCK_RAW | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) throw osError('socket(AF_NETLINK, NETLINK_ROUTE)');
  try {
    const bytes = opts.socketBytes ?? 1 << 20;
    if (!setIntOpt(fd, libc.SO_RCVBUFFORCE, bytes)) setIntOpt(fd, libc.SO_RCVBUF, bytes);
    const sa = Buffer.alloc(SOCKADDR_NL);
    sa.writeUInt16LE(libc.AF_NETLINK, SA_NL.off.nl_family);
    sa.writeUInt32LE(0, NL_PID); // nl_pid 0: the kernel assigns our port id
    sa.writeUInt32LE((opts.groups ?? RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE) >>> 0, NL_GROUPS);
    if (libc.bind(fd, sa, SOCKADDR_NL) !== 0) throw osError('bind(AF_NETLINK)');
    return new RouteMonitor(fd);
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}

/** An in-memory source for tests: `push` adds events, `drain` returns and clears them. */
export class FakeRouteEvents implements RouteEventSource {
  readonly fd = -1;
  closed = false;
  drains = 0;
  private pending = noRouteEvents();

  push(e: Partial<RouteEvents>): void {
    this.pending.addr += e.addr ?? 0;
    this.pending.route += e.route ?? 0;
    this.pending.link += e.link ?? 0;
    this.pending.overflow ||= e.overflow ?? false;
  }

  drain(): RouteEvents {
    this.drains++;
    const out = this.pending;
    this.pending = noRouteEvents();
    return out;
  }

  close(): void {
    this.closed = true;
    this.pending = noRouteEvents();
  }
}
