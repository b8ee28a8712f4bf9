/**
 * mac1 of handshake messages, checked in the data-plane worker before a message may cross to the
 * control thread: one keyed BLAKE2b-128 over the message up to its macs, keyed by
 * HASH("mac1----" || our static public key), exactly as Noise.checkMac1 computes it (./noise.ts;
 * a unit test holds the two together). The key is derived from a public key, so it is no secret:
 * mac1 only says that the sender knows whom it is talking to, which a blind flood does not.
 *
 * The ffi backend (Debian's libsodium through koffi) and the native one (sodium-native) work in
 * preallocated buffers, so a check allocates nothing; the fallback (libsodium-wrappers, when
 * neither loads) allocates its small result.
 */
import { loadSodium, loadWorkerSodium, type WorkerSodium } from './sodium';
import { INITIATION_LEN, RESPONSE_LEN } from './noise';

const LABEL_MAC1 = new TextEncoder().encode('mac1----');
const MAC_LEN = 16;
/** Both macs (mac1, mac2) end a handshake message. */
const MACS_LEN = 2 * MAC_LEN;

export interface Mac1Check {
  /** True when buf[off, off+len) is an initiation or response whose mac1 is ours. Never throws. */
  check(buf: Uint8Array, off: number, len: number): boolean;
  /**
   * Writes the mac1 that `check` wants into the initiation or response at buf[off, off+len) (the
   * worker's warm-up makes its own handshake messages pass; the control thread's noise.ts signs
   * the real ones). False when len is neither message's.
   */
  sign(buf: Uint8Array, off: number, len: number): boolean;
  /** Which library hashes (createMac1Check sets it): portable is loadSodium()'s, libsodium-wrappers or sodium-native. */
  readonly backend?: 'ffi' | 'native' | 'portable';
}

/** Works in fixed scratch buffers: one per message length, so the hashed input is exact. */
class NativeMac1 implements Mac1Check {
  private readonly init = new Uint8Array(INITIATION_LEN - MACS_LEN);
  private readonly resp = new Uint8Array(RESPONSE_LEN - MACS_LEN);
  private readonly want = new Uint8Array(MAC_LEN);

  constructor(
    private readonly n: WorkerSodium,
    private readonly key: Uint8Array,
    readonly backend: 'ffi' | 'native',
  ) {}

  /** The mac1 of the message at buf[off, off+len) in `want`; false when len is neither message's. */
  private compute(buf: Uint8Array, off: number, len: number): boolean {
    const input = len === INITIATION_LEN ? this.init : len === RESPONSE_LEN ? this.resp : null;
    if (input === null || off < 0 || off + len > buf.length) return false;
    for (let i = 0; i < input.length; i++) input[i] = buf[off + i]!;
    this.n.crypto_generichash(this.want, input, this.key);
    return true;
  }

  sign(buf: Uint8Array, off: number, len: number): boolean {
    if (!this.compute(buf, off, len)) return false;
    buf.set(this.want, off + len - MACS_LEN);
    return true;
  }

  check(buf: Uint8Array, off: number, len: number): boolean {
    if (!this.compute(buf, off, len)) return false;
    const end = off + len - MACS_LEN;
    const want = this.want;
    // Compared in JS (a native call costs more than the loop): the key is derived from a public
    // key, so anyone can compute a valid mac1 and its timing gives nothing away.
    let diff = 0;
    for (let i = 0; i < MAC_LEN; i++) diff |= want[i]! ^ buf[end + i]!;
    return diff === 0;
  }
}

/** Over libsodium-wrappers (or whichever backend loadSodium gave). */
class PortableMac1 implements Mac1Check {
  readonly backend = 'portable';
  constructor(
    private readonly s: Awaited<ReturnType<typeof loadSodium>>,
    private readonly key: Uint8Array,
  ) {}

  check(buf: Uint8Array, off: number, len: number): boolean {
    if ((len !== INITIATION_LEN && len !== RESPONSE_LEN) || off < 0 || off + len > buf.length) return false;
    const end = off + len - MACS_LEN;
    const want = this.s.crypto_generichash(MAC_LEN, buf.subarray(off, end), this.key);
    return this.s.memcmp(want, buf.subarray(end, end + MAC_LEN));
  }

  sign(buf: Uint8Array, off: number, len: number): boolean {
    if ((len !== INITIATION_LEN && len !== RESPONSE_LEN) || off < 0 || off + len > buf.length) return false;
    const end = off + len - MACS_LEN;
    buf.set(this.s.crypto_generichash(MAC_LEN, buf.subarray(off, end), this.key), end);
    return true;
  }
}

/** The mac1 check for messages to the host whose static public key is `staticPublic`. */
export async function createMac1Check(staticPublic: Uint8Array, backend: 'auto' | 'ffi' | 'native' | 'wasm' = 'auto'): Promise<Mac1Check> {
  const label = new Uint8Array(LABEL_MAC1.length + staticPublic.length);
  label.set(LABEL_MAC1);
  label.set(staticPublic, LABEL_MAC1.length);
  const n = backend === 'wasm' ? null : loadWorkerSodium(backend);
  if (n) {
    const key = new Uint8Array(32);
    n.s.crypto_generichash(key, label, null);
    return new NativeMac1(n.s, key, n.name);
  }
  const s = await loadSodium();
  return new PortableMac1(s, s.crypto_generichash(32, label, null));
}
