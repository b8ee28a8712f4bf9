import * as libc from './libc';

/**
 * A block of zeroed native memory with a zero-copy Buffer over it. Freed explicitly, once. It comes
 * from calloc, not malloc + fill: a block of 128 KiB or more is a fresh mmap, whose pages cost no
 * RSS until a packet first lands in them (an idle agent's batches and GRO landing buffers, about
 * 0.7 MiB, stay untouched; docs/performance.md, Memory).
 */
export interface NativeBlock {
  readonly ptr: bigint;
  readonly buf: Buffer;
  free(): void;
}

export function allocNative(size: number): NativeBlock {
  const ptr = libc.calloc(size);
  if (ptr === 0n) throw new Error(`calloc(${size}) failed`);
  const buf = Buffer.from(libc.view(ptr, size));
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
