/**
 * Cookies in the data-plane worker, for initiations that the flood limits would refuse: the
 * worker answers one with a cookie reply (as the control thread does under load, ./noise.ts
 * cookieReply), and an initiation whose mac2 carries that cookie has shown that its sender
 * receives at its source address, so a spoofed flood cannot crowd it out.
 *
 *   cookie = MAC(secret, source ip (4, big-endian) | port (2, big-endian))   keyed BLAKE2b-128
 *   mac2   = MAC(cookie, message up to mac2)                                  (the initiator's)
 *   reply  = 3 0 0 0 | their sender index | nonce (24) | XChaCha20-Poly1305(cookie; ad = their mac1)
 *            under HASH("cookie--" || our static public key): exactly what Noise.openCookie opens
 *
 * The secret is random, replaced every COOKIE_SECRET_MS; a cookie of the previous secret is still
 * accepted. With several workers the secrets are shared (sharedCookieSecrets): a retried
 * initiation has a new sender index, which may steer it to another worker than the one whose
 * cookie it carries, and that worker must accept it. Worker 0 rotates them. The ffi backend
 * (Debian's libsodium through koffi) and the native one (sodium-native) work in preallocated
 * buffers; the fallback allocates its small results.
 */
import { INITIATION_LEN } from './noise';
import { loadSodium, loadWorkerSodium, type Sodium, type WorkerSodium } from './sodium';

/** How long a worker cookie secret is used (WireGuard's two minutes). */
export const COOKIE_SECRET_MS = 120_000;
const LABEL_COOKIE = new TextEncoder().encode('cookie--');
const MAC_LEN = 16;
const NONCE_LEN = 24;
export const COOKIE_REPLY_LEN = 64;

export interface WorkerCookies {
  /** True when the initiation at buf[off, off+len) carries mac2 for ip:port's cookie. */
  checkMac2(buf: Uint8Array, off: number, len: number, ip: number, port: number): boolean;
  /** Writes the cookie reply to that initiation at out[outOff, outOff + 64); returns 64. */
  reply(buf: Uint8Array, off: number, len: number, ip: number, port: number, out: Uint8Array, outOff: number): number;
  /** Replaces the secret when it is older than COOKIE_SECRET_MS (monotonic ms). */
  tick(nowMs: number): void;
  /** Which library computes (createWorkerCookies sets it): portable is loadSodium()'s. */
  readonly backend?: 'ffi' | 'native' | 'portable';
}

/** Bytes of the shared secrets: two of 32, then the index of the current one and a generation (Int32 each). */
const SHARED_BYTES = 72;

/**
 * Cookie secrets for several workers, drawn now (from `random`, the CSPRNG) so that no worker
 * ever answers with an unset secret. Pass to createWorkerCookies in each worker; the one with
 * `rotate` replaces them every COOKIE_SECRET_MS.
 */
export function sharedCookieSecrets(random: (out: Uint8Array) => void): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(SHARED_BYTES);
  random(new Uint8Array(sab, 0, 64));
  Atomics.store(new Int32Array(sab, 64, 2), 1, 1);
  return sab;
}

/** The few primitives used, over preallocated buffers. */
interface Prims {
  mac(out: Uint8Array, input: Uint8Array, key: Uint8Array): void;
  random(out: Uint8Array): void;
  /** XChaCha20-Poly1305 of a 16-byte message: out gets 32 bytes. */
  seal(out: Uint8Array, msg: Uint8Array, ad: Uint8Array, nonce: Uint8Array, key: Uint8Array): void;
}

function nativePrims(n: WorkerSodium): Prims {
  return {
    mac: (out, input, key) => n.crypto_generichash(out, input, key),
    random: (out) => n.randombytes_buf(out),
    seal: (out, msg, ad, nonce, key) => void n.crypto_aead_xchacha20poly1305_ietf_encrypt(out, msg, ad, null, nonce, key),
  };
}

function portablePrims(s: Sodium): Prims {
  return {
    mac: (out, input, key) => out.set(s.crypto_generichash(out.length, input, key)),
    random: (out) => out.set(s.randombytes_buf(out.length)),
    seal: (out, msg, ad, nonce, key) => out.set(s.crypto_aead_xchacha20poly1305_ietf_encrypt(msg, ad, null, nonce, key)),
  };
}

class Cookies implements WorkerCookies {
  private secret = new Uint8Array(32);
  private previous = new Uint8Array(32);
  private secretAt = -Infinity;
  /** Shared secrets (sharedCookieSecrets): the two slots and [current slot, generation]. */
  private readonly slots: [Uint8Array, Uint8Array] | null;
  private readonly ctl: Int32Array | null;
  /** The shared generation last copied into secret/previous. */
  private gen = 0;
  private readonly drawn = new Uint8Array(32);
  private readonly source = new Uint8Array(6);
  private readonly cookie = new Uint8Array(MAC_LEN);
  private readonly want = new Uint8Array(MAC_LEN);
  private readonly covered = new Uint8Array(INITIATION_LEN - MAC_LEN);
  private readonly theirMac1 = new Uint8Array(MAC_LEN);
  private readonly nonce = new Uint8Array(NONCE_LEN);
  private readonly box = new Uint8Array(MAC_LEN + 16);

  constructor(
    private readonly p: Prims,
    private readonly cookieKey: Uint8Array,
    readonly backend: 'ffi' | 'native' | 'portable',
    shared?: { sab: SharedArrayBuffer; rotate: boolean },
    private readonly rotates = shared?.rotate ?? true,
  ) {
    this.slots = shared ? [new Uint8Array(shared.sab, 0, 32), new Uint8Array(shared.sab, 32, 32)] : null;
    this.ctl = shared ? new Int32Array(shared.sab, 64, 2) : null;
    if (this.slots) this.follow();
  }

  /**
   * Shared secrets: copies the current and previous ones after a rotation (seen within a tick).
   * The rotator writes a slot before it publishes the new generation, and the slot it writes is
   * the one nobody uses as current, so what is copied after seeing that generation is whole.
   */
  private follow(): void {
    const gen = Atomics.load(this.ctl!, 1);
    if (gen === this.gen) return;
    const cur = Atomics.load(this.ctl!, 0);
    this.secret.set(this.slots![cur]!);
    this.previous.set(this.slots![1 - cur]!);
    this.gen = gen;
  }

  tick(nowMs: number): void {
    if (this.slots) {
      if (this.secretAt === -Infinity) this.secretAt = nowMs; // (drawn by sharedCookieSecrets)
      if (this.rotates && nowMs - this.secretAt >= COOKIE_SECRET_MS) {
        const next = 1 - Atomics.load(this.ctl!, 0);
        // (drawn in our own memory, then copied: sodium-native does not write into shared memory)
        this.p.random(this.drawn);
        this.slots[next]!.set(this.drawn);
        this.drawn.fill(0);
        Atomics.store(this.ctl!, 0, next);
        Atomics.add(this.ctl!, 1, 1);
        this.secretAt = nowMs;
      }
      this.follow();
      return;
    }
    if (nowMs - this.secretAt < COOKIE_SECRET_MS) return;
    const old = this.previous;
    this.previous = this.secret;
    this.secret = old;
    this.p.random(this.secret);
    // the first secret has no predecessor: make the "previous" one unguessable too
    if (this.secretAt === -Infinity) this.p.random(this.previous);
    this.secretAt = nowMs;
  }

  private cookieFor(ip: number, port: number, secret: Uint8Array): Uint8Array {
    const s = this.source;
    s[0] = ip >>> 24;
    s[1] = (ip >>> 16) & 255;
    s[2] = (ip >>> 8) & 255;
    s[3] = ip & 255;
    s[4] = port >>> 8;
    s[5] = port & 255;
    this.p.mac(this.cookie, s, secret);
    return this.cookie;
  }

  checkMac2(buf: Uint8Array, off: number, len: number, ip: number, port: number): boolean {
    if (len !== INITIATION_LEN || off < 0 || off + len > buf.length || this.secretAt === -Infinity) return false;
    const end = off + len - MAC_LEN;
    // No cookie at all (mac2 is zero, as an initiator without one leaves it): nothing to hash.
    let any = 0;
    for (let i = 0; i < MAC_LEN; i++) any |= buf[end + i]!;
    if (any === 0) return false;
    const covered = this.covered;
    for (let i = 0; i < covered.length; i++) covered[i] = buf[off + i]!;
    return this.mac2Is(buf, end, ip, port, this.secret) || this.mac2Is(buf, end, ip, port, this.previous);
  }

  private mac2Is(buf: Uint8Array, at: number, ip: number, port: number, secret: Uint8Array): boolean {
    this.p.mac(this.want, this.covered, this.cookieFor(ip, port, secret));
    let diff = 0;
    for (let i = 0; i < MAC_LEN; i++) diff |= this.want[i]! ^ buf[at + i]!;
    return diff === 0;
  }

  reply(buf: Uint8Array, off: number, len: number, ip: number, port: number, out: Uint8Array, outOff: number): number {
    const cookie = this.cookieFor(ip, port, this.secret);
    const mac1At = off + len - 2 * MAC_LEN;
    for (let i = 0; i < MAC_LEN; i++) this.theirMac1[i] = buf[mac1At + i]!;
    this.p.random(this.nonce);
    this.p.seal(this.box, cookie, this.theirMac1, this.nonce, this.cookieKey);
    out[outOff] = 3;
    out[outOff + 1] = 0;
    out[outOff + 2] = 0;
    out[outOff + 3] = 0;
    for (let i = 0; i < 4; i++) out[outOff + 4 + i] = buf[off + 4 + i]!; // their sender index
    out.set(this.nonce, outOff + 8);
    out.set(this.box, outOff + 8 + NONCE_LEN);
    return COOKIE_REPLY_LEN;
  }
}

/**
 * Worker cookies for the host whose static public key is `staticPublic`; call tick() before use.
 * `shared`: secrets from sharedCookieSecrets, rotated here when `rotate` (one worker does).
 */
export async function createWorkerCookies(
  staticPublic: Uint8Array,
  backend: 'auto' | 'ffi' | 'native' | 'wasm' = 'auto',
  shared?: { sab: SharedArrayBuffer; rotate: boolean },
): Promise<WorkerCookies> {
  const label = new Uint8Array(LABEL_COOKIE.length + staticPublic.length);
  label.set(LABEL_COOKIE);
  label.set(staticPublic, LABEL_COOKIE.length);
  const n = backend === 'wasm' ? null : loadWorkerSodium(backend);
  if (n) {
    const key = new Uint8Array(32);
    n.s.crypto_generichash(key, label, null);
    return new Cookies(nativePrims(n.s), key, n.name, shared);
  }
  const s = await loadSodium();
  return new Cookies(portablePrims(s), s.crypto_generichash(32, label, null), 'portable', shared);
}
