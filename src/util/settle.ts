/** What settleWithin() gives when the promise has not settled in time. */
export const LATE: unique symbol = Symbol('late');

/**
 * `p`'s value when it settles within `ms`, LATE otherwise. A rejection within `ms` rejects; `p`
 * runs on either way, and what it does after LATE (value or rejection) is the caller's to handle.
 */
export async function settleWithin<T>(p: Promise<T>, ms: number): Promise<T | typeof LATE> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<typeof LATE>((resolve) => {
    timer = setTimeout(() => resolve(LATE), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
