/**
 * The systemd notification socket (sd_notify(3)): one unix datagram per state change, sent to
 * $NOTIFY_SOCKET. Node has no unix datagram sockets, so this is socket(2) + sendto(2) through
 * koffi (./ffi/libc.ts), a dozen lines instead of a native addon.
 *
 * Contract of ServiceNotify:
 *  - send(state) sends `state` ("READY=1", "STATUS=...", several joined by "\n") as one datagram
 *    and returns whether the kernel took it. It never throws and never blocks (the socket is
 *    non-blocking: a receiver that does not read must not stall the event loop).
 *  - close() releases the socket; later sends return false.
 * FakeNotify beside it records what was sent.
 */
import { CladnetError } from '../errors';
import * as libc from './ffi/libc';
import { SOCKADDR_UN } from './ffi/abi';

export interface ServiceNotify {
  /** The socket's address as given ("/run/systemd/notify" or "@abstract"). */
  readonly target: string;
  send(state: string): boolean;
  close(): void;
}

/** sizeof(struct sockaddr_un) (110): a 2-byte family and 108 bytes of path (src/os/ffi/abi.ts). */
const SOCKADDR_UN_SIZE = SOCKADDR_UN.size;
const SUN_PATH = SOCKADDR_UN.off.sun_path;
const SUN_PATH_MAX = SOCKADDR_UN_SIZE - SUN_PATH;

/**
 * struct sockaddr_un for $NOTIFY_SOCKET and the length to pass with it. A path starts with '/'
 * (the length counts its terminating NUL); '@name' is Linux's abstract namespace (the '@' becomes
 * a NUL byte and the length ends with the name, no terminator). Anything else is refused.
 */
export function notifySockaddr(value: string): { addr: Uint8Array; len: number } {
  const abstract = value.startsWith('@');
  if (!abstract && !value.startsWith('/')) {
    throw new CladnetError('ECONFIG', `NOTIFY_SOCKET: "${value}" is neither an absolute path nor an @abstract name`, {
      field: 'NOTIFY_SOCKET',
    });
  }
  const name = Buffer.from(abstract ? value.slice(1) : value, 'utf8');
  // abstract: a leading NUL + name; path: name + trailing NUL. Either way one byte more than the name.
  if (name.length + 1 > SUN_PATH_MAX || (abstract && name.length === 0)) {
    throw new CladnetError('ECONFIG', `NOTIFY_SOCKET: "${value}" does not fit a unix socket address (${SUN_PATH_MAX} bytes)`, {
      field: 'NOTIFY_SOCKET',
    });
  }
  const addr = new Uint8Array(SOCKADDR_UN_SIZE);
  new Uint16Array(addr.buffer, 0, 1)[0] = libc.AF_UNIX; // sa_family_t, host byte order
  addr.set(name, abstract ? SUN_PATH + 1 : SUN_PATH);
  return { addr, len: SUN_PATH + 1 + name.length };
}

class UnixDatagramNotify implements ServiceNotify {
  private fd: number;

  constructor(
    readonly target: string,
    private readonly addr: Uint8Array,
    private readonly len: number,
  ) {
    this.fd = libc.socket(libc.AF_UNIX, libc.SOCK_DGRAM | libc.SOCK_CLOEXEC | libc.SOCK_NONBLOCK, 0);
    if (this.fd < 0) {
      const e = libc.errno();
      throw new CladnetError('EOS', `NOTIFY_SOCKET: socket(AF_UNIX, SOCK_DGRAM): ${libc.strerror(e)} (errno ${e})`);
    }
  }

  send(state: string): boolean {
    if (this.fd < 0) return false;
    const msg = Buffer.from(state, 'utf8');
    return libc.sendto(this.fd, msg, msg.length, libc.MSG_NOSIGNAL, this.addr, this.len) === msg.length;
  }

  close(): void {
    if (this.fd < 0) return;
    libc.close(this.fd);
    this.fd = -1;
  }
}

/**
 * The notification socket named by $NOTIFY_SOCKET, or null when it is unset (not started by
 * systemd with Type=notify). Throws ECONFIG when the variable is malformed, EOS when no socket
 * can be made.
 */
export function openNotify(env: NodeJS.ProcessEnv = process.env): ServiceNotify | null {
  const value = env.NOTIFY_SOCKET;
  if (value === undefined || value === '') return null;
  const { addr, len } = notifySockaddr(value);
  return new UnixDatagramNotify(value, addr, len);
}

/** Records every datagram; `accept` false makes sends fail (a receiver that went away). */
export class FakeNotify implements ServiceNotify {
  readonly target = '@fake';
  readonly sent: string[] = [];
  accept = true;
  closed = false;

  send(state: string): boolean {
    if (this.closed || !this.accept) return false;
    this.sent.push(state);
    return true;
  }

  close(): void {
    this.closed = true;
  }

  /** Every field assignment sent so far, in order ("READY=1", "STATUS=..."). */
  fields(): string[] {
    return this.sent.flatMap((m) => m.split('\n'));
  }
}
