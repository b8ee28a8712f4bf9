/*
 * cladnet_abi.h: the C side of cladnet's koffi binding, written down.
 *
 * cladnet calls libc straight from TypeScript through koffi (src/os/ffi/libc.ts) and builds the
 * structs those calls take in native memory by hand (src/os/udp, src/os/tun, src/os/poll.ts,
 * src/os/netlink.ts, src/os/notify.ts, src/dataplane/offload.ts). Nothing here is compiled into
 * cladnet: this header documents what the binding relies on, and native/abi-check.c expands the
 * lists below to print the real sizes, offsets and constants of this machine's headers, which
 * test/unit/native-abi.test.ts compares with the TypeScript side (src/os/ffi/abi.ts and the
 * constants the code uses).
 *
 * Target: Linux, little-endian, LP64 (x86_64; aarch64 has the same layouts for all of these).
 *
 * -------------------------------------------------------------------------------------------------
 * Functions (src/os/ffi/libc.ts declares them; pointers cross as uintptr_t or byte buffers)
 *
 *   int      open(const char *path, int flags);
 *   int      close(int fd);
 *   int      ioctl(int fd, unsigned long req, void *arg);          TUNSETIFF with struct ifreq
 *   int      ioctl(int fd, unsigned long req, unsigned long arg);  TUNSETOFFLOAD with TUN_F_* bits
 *   int      fcntl(int fd, int cmd, int arg);
 *   int      execve(const char *path, char *const argv[], char *const envp[]);
 *   ssize_t  read(int fd, void *buf, size_t len);                  TUN packets (+ virtio_net_hdr)
 *   ssize_t  write(int fd, const void *buf, size_t len);
 *   int      socket(int domain, int type, int protocol);
 *   int      bind(int fd, const struct sockaddr *addr, socklen_t len);
 *   int      getsockname(int fd, struct sockaddr *addr, socklen_t *len);
 *   int      setsockopt(int fd, int level, int name, const void *val, socklen_t len);
 *   ssize_t  sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *a, socklen_t alen);
 *   ssize_t  recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *a, socklen_t *alen);
 *   int      recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *timeout);
 *   int      sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags);
 *   int      poll(struct pollfd *fds, nfds_t nfds, int timeout);
 *   int      eventfd(unsigned int initval, int flags);
 *   void    *malloc(size_t size);  void free(void *ptr);
 *   long     syscall(long nr, ...);   SYS_sched_getattr / SYS_sched_setattr with struct sched_attr
 *                                     (glibc 2.36 has no wrappers; src/os/sched.ts)
 *   char    *strerror(int errnum);  errno through koffi.errno()
 *
 * -------------------------------------------------------------------------------------------------
 * Struct layouts on x86_64 (offset: field, size). The TypeScript code writes these with
 * Buffer.write*LE at the offsets below; abi-check.c prints them from the real headers.
 *
 *   struct iovec          16   0 iov_base 8 | 8 iov_len 8
 *   struct msghdr         56   0 msg_name 8 | 8 msg_namelen 4 | 16 msg_iov 8 | 24 msg_iovlen 8 |
 *                              32 msg_control 8 | 40 msg_controllen 8 | 48 msg_flags 4
 *   struct mmsghdr        64   0 msg_hdr 56 | 56 msg_len 4             (src/os/udp: batches)
 *   struct cmsghdr        16   0 cmsg_len 8 | 8 cmsg_level 4 | 12 cmsg_type 4; data at 16;
 *                              CMSG_SPACE(2) = CMSG_SPACE(4) = 24, CMSG_LEN(2) = 18, CMSG_LEN(4) = 20
 *                              (UDP_SEGMENT carries a u16 on send, UDP_GRO an int on receive)
 *   struct sockaddr_in    16   0 sin_family 2 | 2 sin_port 2 (big-endian) | 4 sin_addr 4 (big-endian)
 *   struct sockaddr_in6   28   0 sin6_family 2 | 2 sin6_port 2 (big-endian) | 4 sin6_flowinfo 4 |
 *                              8 sin6_addr 16 (big-endian) | 24 sin6_scope_id 4   (src/os/udp: the
 *                              dual-stack socket; an IPv4 peer is ::ffff:a.b.c.d)
 *   struct sockaddr_un   110   0 sun_family 2 | 2 sun_path 108          (src/os/notify.ts)
 *   struct sockaddr_nl    12   0 nl_family 2 | 4 nl_pid 4 | 8 nl_groups 4 (src/os/netlink.ts)
 *   struct nlmsghdr       16   0 nlmsg_len 4 | 4 nlmsg_type 2 | 6 nlmsg_flags 2 | 8 nlmsg_seq 4 | 12 nlmsg_pid 4
 *   struct pollfd          8   0 fd 4 | 4 events 2 | 6 revents 2       (src/os/poll.ts)
 *   struct ifreq          40   0 ifr_name 16 (IFNAMSIZ) | 16 ifr_flags 2 (a union of 24 bytes)
 *   struct sched_attr     56   0 size 4 | 4 sched_policy 4 | 8 sched_flags 8 | 16 sched_nice 4 |
 *                              20 sched_priority 4 | 24 sched_runtime 8 | 32 sched_deadline 8 |
 *                              40 sched_period 8 | 48 sched_util_min 4 | 52 sched_util_max 4
 *                              (SCHED_ATTR_SIZE_VER1; for SCHED_OTHER, sched_runtime is the EEVDF
 *                              slice, kernel 6.12 and later; src/os/sched.ts)
 *   struct virtio_net_hdr 10   0 flags 1 | 1 gso_type 1 | 2 hdr_len 2 | 4 gso_size 2 |
 *                              6 csum_start 2 | 8 csum_offset 2         (little-endian with IFF_VNET_HDR
 *                              on a little-endian host; src/dataplane/offload.ts)
 */
#ifndef CLADNET_ABI_H
#define CLADNET_ABI_H

/* struct mmsghdr, recvmmsg and sendmmsg need _GNU_SOURCE before the first system header. */
#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before including any header (struct mmsghdr)"
#endif

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sched.h>       /* SCHED_NORMAL, SCHED_IDLE (glibc's <sched.h> clashes with the next) */
#include <linux/sched/types.h> /* struct sched_attr */
#include <linux/virtio_net.h>

/* X(name, C type): every struct the binding lays out by hand. */
#define CLADNET_ABI_STRUCTS(X)          \
  X(iovec, struct iovec)                \
  X(msghdr, struct msghdr)              \
  X(mmsghdr, struct mmsghdr)            \
  X(cmsghdr, struct cmsghdr)            \
  X(sockaddr_in, struct sockaddr_in)    \
  X(sockaddr_in6, struct sockaddr_in6)  \
  X(sockaddr_un, struct sockaddr_un)    \
  X(sockaddr_nl, struct sockaddr_nl)    \
  X(nlmsghdr, struct nlmsghdr)          \
  X(pollfd, struct pollfd)              \
  X(ifreq, struct ifreq)                \
  X(sched_attr, struct sched_attr)      \
  X(virtio_net_hdr, struct virtio_net_hdr)

/* X(name, C type, field): every field the binding reads or writes. */
#define CLADNET_ABI_FIELDS(X)                                  \
  X(iovec, struct iovec, iov_base)                             \
  X(iovec, struct iovec, iov_len)                              \
  X(msghdr, struct msghdr, msg_name)                           \
  X(msghdr, struct msghdr, msg_namelen)                        \
  X(msghdr, struct msghdr, msg_iov)                            \
  X(msghdr, struct msghdr, msg_iovlen)                         \
  X(msghdr, struct msghdr, msg_control)                        \
  X(msghdr, struct msghdr, msg_controllen)                     \
  X(msghdr, struct msghdr, msg_flags)                          \
  X(mmsghdr, struct mmsghdr, msg_hdr)                          \
  X(mmsghdr, struct mmsghdr, msg_len)                          \
  X(cmsghdr, struct cmsghdr, cmsg_len)                         \
  X(cmsghdr, struct cmsghdr, cmsg_level)                       \
  X(cmsghdr, struct cmsghdr, cmsg_type)                        \
  X(sockaddr_in, struct sockaddr_in, sin_family)               \
  X(sockaddr_in, struct sockaddr_in, sin_port)                 \
  X(sockaddr_in, struct sockaddr_in, sin_addr)                 \
  X(sockaddr_in6, struct sockaddr_in6, sin6_family)            \
  X(sockaddr_in6, struct sockaddr_in6, sin6_port)              \
  X(sockaddr_in6, struct sockaddr_in6, sin6_flowinfo)          \
  X(sockaddr_in6, struct sockaddr_in6, sin6_addr)              \
  X(sockaddr_in6, struct sockaddr_in6, sin6_scope_id)          \
  X(sockaddr_un, struct sockaddr_un, sun_family)               \
  X(sockaddr_un, struct sockaddr_un, sun_path)                 \
  X(sockaddr_nl, struct sockaddr_nl, nl_family)                \
  X(sockaddr_nl, struct sockaddr_nl, nl_pid)                   \
  X(sockaddr_nl, struct sockaddr_nl, nl_groups)                \
  X(nlmsghdr, struct nlmsghdr, nlmsg_len)                      \
  X(nlmsghdr, struct nlmsghdr, nlmsg_type)                     \
  X(nlmsghdr, struct nlmsghdr, nlmsg_flags)                    \
  X(nlmsghdr, struct nlmsghdr, nlmsg_seq)                      \
  X(nlmsghdr, struct nlmsghdr, nlmsg_pid)                      \
  X(pollfd, struct pollfd, fd)                                 \
  X(pollfd, struct pollfd, events)                             \
  X(pollfd, struct pollfd, revents)                            \
  X(ifreq, struct ifreq, ifr_name)                             \
  X(ifreq, struct ifreq, ifr_flags)                            \
  X(sched_attr, struct sched_attr, size)                       \
  X(sched_attr, struct sched_attr, sched_policy)               \
  X(sched_attr, struct sched_attr, sched_flags)                \
  X(sched_attr, struct sched_attr, sched_nice)                 \
  X(sched_attr, struct sched_attr, sched_priority)             \
  X(sched_attr, struct sched_attr, sched_runtime)              \
  X(sched_attr, struct sched_attr, sched_deadline)             \
  X(sched_attr, struct sched_attr, sched_period)               \
  X(sched_attr, struct sched_attr, sched_util_min)             \
  X(sched_attr, struct sched_attr, sched_util_max)             \
  X(virtio_net_hdr, struct virtio_net_hdr, flags)              \
  X(virtio_net_hdr, struct virtio_net_hdr, gso_type)           \
  X(virtio_net_hdr, struct virtio_net_hdr, hdr_len)            \
  X(virtio_net_hdr, struct virtio_net_hdr, gso_size)           \
  X(virtio_net_hdr, struct virtio_net_hdr, csum_start)         \
  X(virtio_net_hdr, struct virtio_net_hdr, csum_offset)

/* X(name, value): derived sizes the code uses (control-message space for one u16 / one int). */
#define CLADNET_ABI_SIZES(X)                  \
  X(CMSG_SPACE_U16, CMSG_SPACE(sizeof(unsigned short))) \
  X(CMSG_LEN_U16, CMSG_LEN(sizeof(unsigned short)))     \
  X(CMSG_SPACE_INT, CMSG_SPACE(sizeof(int)))            \
  X(CMSG_LEN_INT, CMSG_LEN(sizeof(int)))                \
  X(IFNAMSIZ, IFNAMSIZ)

/* X(NAME): every constant the binding passes to or compares with libc and the kernel. */
#define CLADNET_ABI_CONSTANTS(X)                                                              \
  X(O_RDWR) X(O_NONBLOCK) X(O_CLOEXEC) X(F_GETFL) X(F_SETFL) X(F_SETFD)                       \
  X(AF_UNIX) X(AF_INET) X(AF_NETLINK) X(SOCK_DGRAM) X(SOCK_RAW) X(SOCK_NONBLOCK) X(SOCK_CLOEXEC) \
  X(SOL_SOCKET) X(SO_REUSEADDR) X(SO_SNDBUF) X(SO_RCVBUF) X(SO_SNDBUFFORCE) X(SO_RCVBUFFORCE) X(SO_REUSEPORT) X(SO_ATTACH_REUSEPORT_CBPF) \
  X(IPPROTO_IP) X(IP_TTL) X(SOL_UDP) X(UDP_SEGMENT) X(UDP_GRO)                                 \
  X(AF_INET6) X(IPPROTO_IPV6) X(IPV6_V6ONLY) X(IPV6_HOPLIMIT)                                  \
  X(EIO) X(EINVAL) X(EOPNOTSUPP) X(EMSGSIZE) X(EAGAIN) X(EINTR) X(ENOBUFS)                     \
  X(MSG_DONTWAIT) X(MSG_TRUNC) X(MSG_NOSIGNAL) X(POLLIN) X(POLLOUT)                            \
  X(EFD_NONBLOCK) X(EFD_CLOEXEC)                                                               \
  X(TUNSETIFF) X(TUNSETOFFLOAD) X(IFF_TUN) X(IFF_NO_PI) X(IFF_MULTI_QUEUE) X(IFF_VNET_HDR)     \
  X(TUN_F_CSUM) X(TUN_F_TSO4) X(TUN_F_TSO6) X(TUN_F_TSO_ECN)                                   \
  X(VIRTIO_NET_HDR_F_NEEDS_CSUM) X(VIRTIO_NET_HDR_F_DATA_VALID)                                \
  X(VIRTIO_NET_HDR_GSO_NONE) X(VIRTIO_NET_HDR_GSO_TCPV4) X(VIRTIO_NET_HDR_GSO_TCPV6)           \
  X(VIRTIO_NET_HDR_GSO_ECN)                                                                    \
  X(NETLINK_ROUTE) X(RTMGRP_LINK) X(RTMGRP_IPV4_IFADDR) X(RTMGRP_IPV6_IFADDR) X(RTMGRP_IPV4_ROUTE) \
  X(NLMSG_NOOP) X(NLMSG_ERROR) X(NLMSG_DONE) X(NLMSG_OVERRUN)                                  \
  X(RTM_NEWLINK) X(RTM_DELLINK) X(RTM_NEWADDR) X(RTM_DELADDR) X(RTM_NEWROUTE) X(RTM_DELROUTE) \
  X(SYS_sched_setattr) X(SYS_sched_getattr) X(SCHED_NORMAL) X(SCHED_IDLE) X(ESRCH) X(EPERM)

#endif /* CLADNET_ABI_H */
