/**
 * The C struct layouts the binding builds by hand in native memory, declared once as koffi types
 * (native/cladnet_abi.h is the C side; test/unit/native-abi.test.ts compiles native/abi-check.c and
 * checks every size and offset here, and the constants in libc.ts, against this machine's headers).
 *
 * The hot path writes these structs with Buffer.write*LE at fixed offsets (no marshalling per
 * packet): take the numbers from here, e.g. `MSGHDR.off.msg_iov`, `MMSGHDR.size`, once at module
 * load into a const where it matters. Target: Linux, little-endian, LP64.
 */
import koffi, { type TypeObject } from 'koffi';

/** A struct's members: koffi type names or types. */
type Def = Record<string, string | TypeObject>;

/** A struct layout: its koffi type, size, alignment and each field's offset. */
export interface Layout<F extends string> {
  readonly type: TypeObject;
  readonly size: number;
  readonly align: number;
  readonly off: Readonly<Record<F, number>>;
}

function layout<F extends string>(type: TypeObject, fields: readonly F[]): Layout<F> {
  const off = Object.fromEntries(fields.map((f) => [f, koffi.offsetof(type, f)])) as Record<F, number>;
  return Object.freeze({ type, size: koffi.sizeof(type), align: koffi.alignof(type), off: Object.freeze(off) });
}

function struct<const D extends Def>(def: D): Layout<keyof D & string> {
  return layout(koffi.struct(def), Object.keys(def) as (keyof D & string)[]);
}

/** struct iovec { void *iov_base; size_t iov_len; } */
export const IOVEC = struct({ iov_base: 'void *', iov_len: 'size_t' });

/** struct msghdr: msg_namelen is a 4-byte socklen_t, msg_iovlen and msg_controllen are size_t. */
export const MSGHDR = struct({
  msg_name: 'void *',
  msg_namelen: 'uint32_t',
  msg_iov: 'void *',
  msg_iovlen: 'size_t',
  msg_control: 'void *',
  msg_controllen: 'size_t',
  msg_flags: 'int',
});

/** struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; }: one entry of recvmmsg/sendmmsg. */
export const MMSGHDR = struct({ msg_hdr: MSGHDR.type, msg_len: 'unsigned int' });

/** struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } followed by the data. */
export const CMSGHDR = struct({ cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' });

/** CMSG_ALIGN: control messages are padded to size_t. */
const cmsgAlign = (n: number): number => (n + 7) & ~7;
/** CMSG_LEN(n): header plus n data bytes (cmsg_len); CMSG_SPACE(n): the same padded (msg_controllen). */
export const cmsgLen = (n: number): number => cmsgAlign(CMSGHDR.size) + n;
export const cmsgSpace = (n: number): number => cmsgAlign(CMSGHDR.size) + cmsgAlign(n);
/** One cmsg carrying a u16 (UDP_SEGMENT on send) or an int (UDP_GRO on receive). */
export const CMSG_LEN_U16 = cmsgLen(2);
export const CMSG_SPACE_U16 = cmsgSpace(2);
export const CMSG_LEN_INT = cmsgLen(4);
export const CMSG_SPACE_INT = cmsgSpace(4);

/** struct sockaddr_in: port and address in network byte order. */
export const SOCKADDR_IN = struct({
  sin_family: 'uint16_t',
  sin_port: 'uint16_t',
  sin_addr: 'uint32_t',
  sin_zero: koffi.array('uint8_t', 8),
});

/**
 * struct sockaddr_in6: port and address in network byte order. The UDP socket is dual-stack
 * (IPV6_V6ONLY off): an IPv4 peer's address is the mapped ::ffff:a.b.c.d.
 */
export const SOCKADDR_IN6 = struct({
  sin6_family: 'uint16_t',
  sin6_port: 'uint16_t',
  sin6_flowinfo: 'uint32_t',
  sin6_addr: koffi.array('uint8_t', 16),
  sin6_scope_id: 'uint32_t',
});

/** struct sockaddr_un { sa_family_t sun_family; char sun_path[108]; } */
export const SOCKADDR_UN = struct({ sun_family: 'uint16_t', sun_path: koffi.array('char', 108) });

/** struct sockaddr_nl { u16 nl_family; u16 nl_pad; u32 nl_pid; u32 nl_groups; } */
export const SOCKADDR_NL = struct({ nl_family: 'uint16_t', nl_pad: 'uint16_t', nl_pid: 'uint32_t', nl_groups: 'uint32_t' });

/** struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; } */
export const NLMSGHDR = struct({
  nlmsg_len: 'uint32_t',
  nlmsg_type: 'uint16_t',
  nlmsg_flags: 'uint16_t',
  nlmsg_seq: 'uint32_t',
  nlmsg_pid: 'uint32_t',
});

/** struct pollfd { int fd; short events; short revents; } */
export const POLLFD = struct({ fd: 'int', events: 'short', revents: 'short' });

export const IFNAMSIZ = 16;

/**
 * struct ifreq: the name, then a 24-byte union (its largest member, struct ifmap, holds unsigned
 * longs, hence 8-byte alignment); TUNSETIFF reads ifr_flags from the union. C's `ifr_flags` is a
 * macro for `ifr_ifru.ifru_flags`: C_FIELD_PATHS maps it.
 */
export const IFREQ = struct({
  ifr_name: koffi.array('char', IFNAMSIZ),
  ifr_ifru: koffi.union({ ifru_flags: 'short', ifru_ivalue: 'int', ifru_map: koffi.array('unsigned long', 3) }),
});
export const IFREQ_FLAGS = IFREQ.off.ifr_ifru;

/**
 * struct virtio_net_hdr: what a TUN with IFF_VNET_HDR puts before every packet (little-endian
 * fields on a little-endian host).
 */
export const VIRTIO_NET_HDR = struct({
  flags: 'uint8_t',
  gso_type: 'uint8_t',
  hdr_len: 'uint16_t',
  gso_size: 'uint16_t',
  csum_start: 'uint16_t',
  csum_offset: 'uint16_t',
});

/**
 * struct sched_attr (SCHED_ATTR_SIZE_VER1) for sched_getattr/sched_setattr (src/os/sched.ts). For
 * SCHED_NORMAL, sched_runtime is the thread's EEVDF slice (kernel 6.12 and later; 0: the default).
 */
export const SCHED_ATTR = struct({
  size: 'uint32_t',
  sched_policy: 'uint32_t',
  sched_flags: 'uint64_t',
  sched_nice: 'int32_t',
  sched_priority: 'uint32_t',
  sched_runtime: 'uint64_t',
  sched_deadline: 'uint64_t',
  sched_period: 'uint64_t',
  sched_util_min: 'uint32_t',
  sched_util_max: 'uint32_t',
});

/** Every layout by its C name (struct tag), for the ABI check. */
export const LAYOUTS: Readonly<Record<string, Layout<string>>> = Object.freeze({
  iovec: IOVEC,
  msghdr: MSGHDR,
  mmsghdr: MMSGHDR,
  cmsghdr: CMSGHDR,
  sockaddr_in: SOCKADDR_IN,
  sockaddr_in6: SOCKADDR_IN6,
  sockaddr_un: SOCKADDR_UN,
  sockaddr_nl: SOCKADDR_NL,
  nlmsghdr: NLMSGHDR,
  pollfd: POLLFD,
  ifreq: IFREQ,
  sched_attr: SCHED_ATTR,
  virtio_net_hdr: VIRTIO_NET_HDR,
});

/** C field names that are macros for a path into a union: `struct.field` -> koffi member path. */
export const C_FIELD_PATHS: Readonly<Record<string, string>> = Object.freeze({ 'ifreq.ifr_flags': 'ifr_ifru.ifru_flags' });

/** Offset and size of a (possibly nested, dot-separated) member of `layout`, or null when it has none. */
export function memberOf(layout: Layout<string>, path: string): { offset: number; size: number } | null {
  let type = koffi.type(layout.type);
  let offset = 0;
  let size = type.size;
  for (const name of path.split('.')) {
    const m = type.members?.[name];
    if (!m) return null;
    offset += m.offset;
    size = m.type.size;
    type = m.type;
  }
  return { offset, size };
}
