/**
 * Sliding replay window over 64-bit message counters (RFC 6479's bitmap ring, as WireGuard uses).
 * A counter is accepted once, and only if it is no older than WINDOW behind the highest accepted.
 * `mayAccept` is a side-effect-free pre-check before decryption; `accept` records a counter and
 * must only be called after the packet authenticated.
 */
const WORD_BITS = 32;
const WORDS = 128; // ring of 4096 bits
export const REPLAY_WINDOW = (WORDS - 1) * WORD_BITS; // 4064 packets

export class ReplayWindow {
  private readonly bits = new Uint32Array(WORDS);
  private greatest = 0;

  constructor(private readonly limit: number) {}

  reset(): void {
    this.bits.fill(0);
    this.greatest = 0;
  }

  mayAccept(counter: number): boolean {
    if (counter >= this.limit) return false;
    if (counter > this.greatest) return true;
    if (this.greatest - counter >= REPLAY_WINDOW) return false;
    const word = Math.floor(counter / WORD_BITS) % WORDS;
    return (this.bits[word]! & (1 << counter % WORD_BITS)) === 0;
  }

  accept(counter: number): boolean {
    if (counter >= this.limit) return false;
    const block = Math.floor(counter / WORD_BITS);
    if (counter > this.greatest) {
      const current = Math.floor(this.greatest / WORD_BITS);
      const diff = Math.min(block - current, WORDS);
      for (let i = 1; i <= diff; i++) this.bits[(current + i) % WORDS] = 0;
      this.greatest = counter;
    } else if (this.greatest - counter >= REPLAY_WINDOW) {
      return false;
    }
    const word = block % WORDS;
    const bit = 1 << counter % WORD_BITS;
    if ((this.bits[word]! & bit) !== 0) return false;
    this.bits[word]! |= bit;
    return true;
  }

  /** Highest counter accepted so far (0 before any). */
  get highest(): number {
    return this.greatest;
  }
}
