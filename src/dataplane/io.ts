/**
 * The data plane's two OS boundaries. The real ones (src/os/tun, src/os/udp) make system calls;
 * the fakes (./fakes.ts) move bytes in memory so the same stages can be tested without a kernel.
 * Contract for all: non-blocking, never throw on EAGAIN, never allocate per packet.
 */
import type { PacketBatch, SendList } from './batch';

export interface TunIo {
  /**
   * Reads packets into slots at HEADER until the TUN is empty or `maxReads` reads were made
   * (default: until the batch is full). Returns the packet count (0 = none ready); one read may
   * yield several packets when the TUN hands over segmentation-offload super-packets.
   */
  readBatch(batch: PacketBatch, maxReads?: number): number;
  /**
   * Writes the IP packet of `len` bytes at slot i + HEADER. `partial` says its L4 checksum holds
   * only the pseudo-header sum (wire FLAG_CSUM_PARTIAL). False when the kernel refused it.
   */
  writeSlot(batch: PacketBatch, i: number, len: number, partial: boolean): boolean;
  /**
   * Writes whatever writeSlot held back to coalesce (receive offload); called at the end of each
   * batch. Returns how many packets the kernel refused.
   */
  flush(): number;
}

export interface UdpIo {
  /** Receives up to batch.capacity datagrams into slots at 0, with source addresses. Returns the count. */
  recvBatch(batch: PacketBatch): number;
  /** Sends the listed slots (from offset 0, len, to ip:port). Returns how many the kernel accepted. */
  sendBatch(batch: PacketBatch, list: SendList): number;
}

/** Waits until one of the data plane's descriptors is readable, or the timeout passes. */
export interface Waiter {
  /** Returns a bitmask: bit 0 = data ready, bit 1 = woken by the control plane. */
  wait(timeoutMs: number): number;
}
