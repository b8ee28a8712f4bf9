/** poll(2) over a fixed set of descriptors, and eventfd wake-ups for worker threads. */
import * as libc from './ffi/libc';
import { POLLFD as POLLFD_T } from './ffi/abi';
import { allocNative, type NativeBlock } from './ffi/mem';
import { osError } from './errors';

// struct pollfd { int fd; short events; short revents; } (src/os/ffi/abi.ts)
const POLLFD = POLLFD_T.size;
const EVENTS = POLLFD_T.off.events;
const REVENTS = POLLFD_T.off.revents;

export class Poller {
  private readonly mem: NativeBlock;

  constructor(fds: readonly number[], events: readonly number[] = fds.map(() => libc.POLLIN)) {
    this.mem = allocNative(fds.length * POLLFD);
    fds.forEach((fd, i) => {
      this.mem.buf.writeInt32LE(fd, i * POLLFD);
      this.mem.buf.writeInt16LE(events[i]!, i * POLLFD + EVENTS);
    });
    this.count = fds.length;
  }

  private readonly count: number;

  /** Replaces descriptor k (a negative fd is skipped by poll: no events until set again). */
  setFd(k: number, fd: number): void {
    if (k < 0 || k >= this.count) throw new RangeError(`poll set has no descriptor ${k}`);
    this.mem.buf.writeInt32LE(fd, k * POLLFD);
  }

  /** Waits up to timeoutMs. Returns a bitmask: bit k set when descriptor k has an event. */
  wait(timeoutMs: number): number {
    const r = libc.poll(this.mem.ptr, this.count, timeoutMs);
    if (r <= 0) return 0;
    let mask = 0;
    for (let i = 0; i < this.count; i++) if (this.mem.buf.readInt16LE(i * POLLFD + REVENTS) !== 0) mask |= 1 << i;
    return mask;
  }

  close(): void {
    this.mem.free();
  }
}

/** An eventfd: one thread writes to wake another that polls it. */
export class WakeFd {
  readonly fd: number;
  private readonly one = new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0]);
  private readonly sink = new Uint8Array(8);

  constructor(fd?: number) {
    if (fd !== undefined) {
      this.fd = fd;
      return;
    }
    this.fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
    if (this.fd < 0) throw osError('eventfd');
  }

  wake(): void {
    libc.writeBuf(this.fd, this.one, 8);
  }

  /** Clears pending wake-ups. */
  drain(): void {
    libc.readBuf(this.fd, this.sink, 8);
  }

  close(): void {
    libc.close(this.fd);
  }
}
