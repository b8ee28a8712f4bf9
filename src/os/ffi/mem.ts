import * as libc from './libc';

/** A block of native memory with a zero-copy Buffer over it. Freed explicitly, once. */
export interface NativeBlock {
  readonly ptr: bigint;
  readonly buf: Buffer;
  free(): void;
}

export function allocNative(size: number): NativeBlock {
  const ptr = libc.malloc(size);
  if (ptr === 0n) throw new Error(`malloc(${size}) failed`);
  const buf = Buffer.from(libc.view(ptr, size));
  buf.fill(0);
  let freed = false;
  return {
    ptr,
    buf,
    free() {
      if (freed) return;
      freed = true;
      libc.free(ptr);
    },
  };
}
