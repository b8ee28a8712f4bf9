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
import type { PacketBatch } from '../../dataplane/batch';
import type { TunIo } from '../../dataplane/io';

export interface TunDevice {
  readonly name: string;
  /** One descriptor per queue (one unless multiQueue). */
  readonly fds: readonly number[];
  close(): void;
}

const IFNAMSIZ = 16;
const IFREQ = 40;

export function validIfName(name: string): boolean {
  return /^[a-zA-Z0-9_.-]{1,15}$/.test(name) && name !== '.' && name !== '..';
}

export function openTun(name: string, queues = 1): TunDevice {
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
      const flags = libc.IFF_TUN | libc.IFF_NO_PI | (queues > 1 ? libc.IFF_MULTI_QUEUE : 0);
      ifr[IFNAMSIZ] = flags & 0xff;
      ifr[IFNAMSIZ + 1] = (flags >> 8) & 0xff;
      if (libc.ioctlPtr(fd, libc.TUNSETIFF, ifr) !== 0) throw osError(`ioctl(TUNSETIFF ${name})`);
    }
  } catch (e) {
    close();
    throw e;
  }
  return { name, fds, close };
}

/** Reads and writes IP packets on one TUN queue, straight into native batch slots. */
export class TunBatchIo implements TunIo {
  private readonly slotPtr: bigint[] = [];
  /** Errors other than EAGAIN from read/write. */
  errors = 0;
  lastErrno = 0;

  constructor(
    private readonly fd: number,
    private readonly batch: PacketBatch,
  ) {
    if (batch.basePtr === 0n) throw new Error('TunBatchIo needs a batch in native memory');
    for (let i = 0; i < batch.capacity; i++) this.slotPtr.push(batch.basePtr + BigInt(batch.offset(i) + HEADER_LEN));
  }

  readBatch(batch: PacketBatch): number {
    if (batch !== this.batch) throw new Error('TunBatchIo used with a foreign batch');
    const max = batch.maxPacket;
    let n = 0;
    while (n < batch.capacity) {
      const r = libc.readPtr(this.fd, this.slotPtr[n]!, max);
      if (r < 0) {
        const e = libc.errno();
        if (e === libc.EINTR) continue;
        if (e !== libc.EAGAIN) {
          this.errors++;
          this.lastErrno = e;
        }
        break;
      }
      batch.len[n] = r;
      n++;
    }
    return n;
  }

  writeSlot(batch: PacketBatch, i: number, len: number): boolean {
    for (;;) {
      const r = libc.writePtr(this.fd, this.slotPtr[i]!, len);
      if (r >= 0) return true;
      const e = libc.errno();
      if (e === libc.EINTR) continue;
      this.errors++;
      this.lastErrno = e;
      return false;
    }
  }
}
