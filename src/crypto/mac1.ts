/**
 * mac1 of handshake messages, checked in the data-plane worker before a message may cross to the
 * control thread: one keyed BLAKE2b-128 over the message up to its macs, keyed by
 * HASH("mac1----" || our static public key), exactly as Noise.checkMac1 computes it (./noise.ts;
 * a unit test holds the two together). The key is derived from a public key, so it is no secret:
 * mac1 only says that the sender knows whom it is talking to, which a blind flood does not.
 *
 * The native backend (sodium-native) works in preallocated buffers, so a check allocates nothing;
 * the fallback (libsodium-wrappers, when the addon does not load) allocates its small result.
 */
import { loadSodium } from './sodium';
import { INITIATION_LEN, RESPONSE_LEN } from './noise';

const LABEL_MAC1 = new TextEncoder().encode('mac1----');
const MAC_LEN = 16;
/** Both macs (mac1, mac2) end a handshake message. */
const MACS_LEN = 2 * MAC_LEN;

export interface Mac1Check {
  /** True when buf[off, off+len) is an initiation or response whose mac1 is ours. Never throws. */
  check(buf: Uint8Array, off: number, len: number): boolean;
}

interface NativeHash {
  crypto_generichash(out: Uint8Array, input: Uint8Array, key?: Uint8Array | null): void;
}

/** Works in fixed scratch buffers: one per message length, so the hashed input is exact. */
class NativeMac1 implements Mac1Check {
  private readonly init = new Uint8Array(INITIATION_LEN - MACS_LEN);
  private readonly resp = new Uint8Array(RESPONSE_LEN - MACS_LEN);
  private readonly want = new Uint8Array(MAC_LEN);

  constructor(
    private readonly n: NativeHash,
    private readonly key: Uint8Array,
  ) {}

  check(buf: Uint8Array, off: number, len: number): boolean {
    const input = len === INITIATION_LEN ? this.init : len === RESPONSE_LEN ? this.resp : null;
    if (input === null || off < 0 || off + len > buf.length) return false;
    const end = off + len - MACS_LEN;
    for (let i = 0; i < input.length; i++) input[i] = buf[off + i]!;
    const want = this.want;
    this.n.crypto_generichash(want, input, this.key);
    // Compared in JS (a native call costs more than the loop): the key is derived from a public
    // key, so anyone can compute a valid mac1 and its timing gives nothing away.
    let diff = 0;
    for (let i = 0; i < MAC_LEN; i++) diff |= want[i]! ^ buf[end + i]!;
    return diff === 0;
  }
}

/** Over libsodium-wrappers (or whichever backend loadSodium gave). */
class PortableMac1 implements Mac1Check {
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
}

/** The mac1 check for messages to the host whose static public key is `staticPublic`. */
export async function createMac1Check(staticPublic: Uint8Array, backend: 'auto' | 'ffi' | 'native' | 'wasm' = 'auto'): Promise<Mac1Check> {
  const s = await loadSodium();
  const label = new Uint8Array(LABEL_MAC1.length + staticPublic.length);
  label.set(LABEL_MAC1);
  label.set(staticPublic, LABEL_MAC1.length);
  const key = s.crypto_generichash(32, label, null);
  if (backend !== 'wasm') {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return new NativeMac1(require('sodium-native') as NativeHash, key);
    } catch {
      /* the addon does not load here: fall through */
    }
  }
  return new PortableMac1(s, key);
}
