/**
 * The one place that binds libc through koffi. Everything here is a synchronous call: the data
 * plane runs these on worker threads, in loops, in batches (a koffi async call costs ~30 us, a sync
 * one ~0.2 us). Pointers are BigInt (koffi 3). Functions return the raw C result; read `errno()`
 * right after a negative result.
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');

export const open = lib.func('int open(const char *path, int flags)') as (path: string, flags: number) => number;
export const close = lib.func('int close(int fd)') as (fd: number) => number;
export const ioctlPtr = lib.func('int ioctl(int fd, unsigned long req, void *arg)') as (
  fd: number,
  req: number,
  arg: Uint8Array | bigint,
) => number;
export const ioctlNum = lib.func('int ioctl(int fd, unsigned long req, unsigned long arg)') as (
  fd: number,
  req: number,
  arg: number,
) => number;
export const fcntl = lib.func('int fcntl(int fd, int cmd, int arg)') as (fd: number, cmd: number, arg: number) => number;
export const F_SETFD = 2;
/** Replaces the process image (same pid); returns only on failure. Arrays end with null. */
export const execve = lib.func('int execve(const char *path, const char **argv, const char **envp)') as (
  path: string,
  argv: (string | null)[],
  envp: (string | null)[],
) => number;
export const readPtr = lib.func('intptr_t read(int fd, uintptr_t buf, size_t len)') as (
  fd: number,
  buf: bigint,
  len: number,
) => number;
export const writePtr = lib.func('intptr_t write(int fd, uintptr_t buf, size_t len)') as (
  fd: number,
  buf: bigint,
  len: number,
) => number;
export const readBuf = lib.func('intptr_t read(int fd, _Out_ uint8_t *buf, size_t len)') as (
  fd: number,
  buf: Uint8Array,
  len: number,
) => number;
export const writeBuf = lib.func('intptr_t write(int fd, const uint8_t *buf, size_t len)') as (
  fd: number,
  buf: Uint8Array,
  len: number,
) => number;
export const socket = lib.func('int socket(int domain, int type, int protocol)') as (
  d: number,
  t: number,
  p: number,
) => number;
export const bind = lib.func('int bind(int fd, const uint8_t *addr, uint32_t len)') as (
  fd: number,
  addr: Uint8Array,
  len: number,
) => number;
export const getsockname = lib.func('int getsockname(int fd, _Out_ uint8_t *addr, _Inout_ uint32_t *len)') as (
  fd: number,
  addr: Uint8Array,
  len: Uint32Array,
) => number;
export const setsockopt = lib.func('int setsockopt(int fd, int level, int name, const uint8_t *val, uint32_t len)') as (
  fd: number,
  level: number,
  name: number,
  val: Uint8Array,
  len: number,
) => number;
export const sendto = lib.func(
  'intptr_t sendto(int fd, const uint8_t *buf, size_t len, int flags, const uint8_t *addr, uint32_t alen)',
) as (fd: number, buf: Uint8Array, len: number, flags: number, addr: Uint8Array, alen: number) => number;
export const recvfromPtr = lib.func(
  'intptr_t recvfrom(int fd, uintptr_t buf, size_t len, int flags, uintptr_t addr, uintptr_t alen)',
) as (fd: number, buf: bigint, len: number, flags: number, addr: bigint, alen: bigint) => number;
export const recvmmsg = lib.func('int recvmmsg(int fd, uintptr_t vec, unsigned int vlen, int flags, uintptr_t timeout)') as (
  fd: number,
  vec: bigint,
  vlen: number,
  flags: number,
  timeout: bigint,
) => number;
export const sendmmsg = lib.func('int sendmmsg(int fd, uintptr_t vec, unsigned int vlen, int flags)') as (
  fd: number,
  vec: bigint,
  vlen: number,
  flags: number,
) => number;
export const poll = lib.func('int poll(uintptr_t fds, unsigned long nfds, int timeout)') as (
  fds: bigint,
  nfds: number,
  timeout: number,
) => number;
export const eventfd = lib.func('int eventfd(unsigned int initval, int flags)') as (init: number, flags: number) => number;
/** Gives the free memory of every malloc arena back to the kernel (glibc; returns 1 if any was). */
export const mallocTrim = lib.func('int malloc_trim(size_t pad)') as (pad: number) => number;
const mallocRaw = lib.func('uintptr_t malloc(size_t size)') as (size: number) => bigint | number;
export const malloc = (size: number): bigint => BigInt(mallocRaw(size));
const callocRaw = lib.func('uintptr_t calloc(size_t nmemb, size_t size)') as (n: number, size: number) => bigint | number;
/** Zeroed memory; a large block comes straight from mmap, so its pages stay untouched (no RSS) until used. */
export const calloc = (size: number): bigint => BigInt(callocRaw(1, size));
export const free = lib.func('void free(uintptr_t ptr)') as (ptr: bigint) => void;
/**
 * syscall(2), for the calls glibc 2.36 does not wrap (sched_getattr, sched_setattr). Variadic: each
 * argument after the number is passed as a koffi type name and a value.
 */
export const syscall = lib.func('long syscall(long nr, ...)') as (nr: number, ...typedArgs: unknown[]) => number;
const strerrorFn = lib.func('const char *strerror(int errnum)') as (e: number) => string;

export function errno(): number {
  return koffi.errno();
}

export function strerror(e: number): string {
  return strerrorFn(e);
}

/** A view of native memory as an ArrayBuffer (no copy). */
export function view(ptr: bigint, len: number): ArrayBuffer {
  return koffi.view(ptr, len);
}

export const O_RDWR = 0x2;
export const O_NONBLOCK = 0x800;
export const O_CLOEXEC = 0x80000;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const SOCK_NONBLOCK = 0x800;
export const SOCK_CLOEXEC = 0x80000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_SNDBUFFORCE = 32;
export const SO_RCVBUFFORCE = 33;
/** Several sockets bind one port; the kernel picks one per datagram (Linux 3.9+). */
export const SO_REUSEPORT = 15;
/** A classic BPF program (struct sock_fprog) that picks the socket of a reuseport group (Linux 4.5+). */
export const SO_ATTACH_REUSEPORT_CBPF = 51;
export const IPPROTO_IP = 0;
/** sockopt and cmsg (IPPROTO_IP): the TTL of outgoing datagrams. */
export const IP_TTL = 2;
export const SOL_UDP = 17;
export const IPPROTO_IPV6 = 41;
/** sockopt (IPPROTO_IPV6): 0 makes an AF_INET6 socket dual-stack (IPv4 peers as ::ffff:a.b.c.d). */
export const IPV6_V6ONLY = 26;
/** cmsg (IPPROTO_IPV6) on send: the hop limit of this datagram (IPv6's TTL). */
export const IPV6_HOPLIMIT = 52;
/** cmsg (SOL_UDP): the segment size of a UDP GSO send (Linux 4.18+). */
export const UDP_SEGMENT = 103;
/** sockopt and cmsg (SOL_UDP): receive runs of datagrams as one coalesced buffer (Linux 5.0+). */
export const UDP_GRO = 104;
export const EIO = 5;
export const EINVAL = 22;
export const EOPNOTSUPP = 95;
export const EMSGSIZE = 90;
export const MSG_DONTWAIT = 0x40;
export const MSG_TRUNC = 0x20;
export const MSG_NOSIGNAL = 0x4000;
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const EFD_NONBLOCK = 0x800;
export const EFD_CLOEXEC = 0x80000;
export const EAGAIN = 11;
export const EPERM = 1;
export const ESRCH = 3;
export const SYS_sched_setattr = 314;
export const SYS_sched_getattr = 315;
export const SCHED_NORMAL = 0;
export const SCHED_IDLE = 5;
export const EINTR = 4;
export const ENOBUFS = 105;
export const TUNSETIFF = 0x400454ca;
export const IFF_TUN = 0x0001;
export const IFF_NO_PI = 0x1000;
export const IFF_MULTI_QUEUE = 0x0100;
export const IFF_VNET_HDR = 0x4000;
export const TUNSETOFFLOAD = 0x400454d0;
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
