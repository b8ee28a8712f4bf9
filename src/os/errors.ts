import { CladnetError } from '../errors';
import * as libc from './ffi/libc';

/** Builds an EOS error from the current errno, naming the call. */
export function osError(call: string, errno = libc.errno()): CladnetError {
  const e = new CladnetError('EOS', `${call}: ${libc.strerror(errno)} (errno ${errno})`, {
    transient: errno === libc.EAGAIN || errno === libc.EINTR,
  });
  (e as CladnetError & { errno: number }).errno = errno;
  return e;
}
