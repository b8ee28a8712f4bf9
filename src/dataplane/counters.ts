/**
 * Send counters (nonces) of one send session, shared by every data-plane worker that seals for it.
 *
 * With one worker the counter is a plain number that only this thread moves (as it always was).
 * With N workers the session's next counter is one 64-bit word in a SharedArrayBuffer that the
 * control thread creates with the session and gives to every worker. A worker about to seal up to
 * n packets for a peer reserves n counters with one `Atomics.add(word, n)` (one per peer per
 * batch, not per packet) and numbers its packets from the old value. An atomic add hands out
 * disjoint blocks whatever the timing, so no counter is ever taken twice under one key.
 *
 * What a batch reserved but did not use is given up at the end of the batch (release()), never
 * kept for later: a block held by an idle worker would fall behind the busy one by more than the
 * receiver's replay window. The counter limit is checked on each counter of the reserved block,
 * so a block that straddles COUNTER_LIMIT hands out the counters below it and refuses the rest.
 */
import { COUNTER_LIMIT } from './wire';

/** Bytes of one shared counter word. */
export const SEND_COUNTER_BYTES = 8;

/** A new shared send counter word, starting at 0 (the control thread makes one per send session). */
export function newSendCounter(): SharedArrayBuffer {
  return new SharedArrayBuffer(SEND_COUNTER_BYTES);
}

export class SendCounter {
  /** The next counter this thread hands out. */
  private next = 0;
  /** End (exclusive) of the block this thread reserved; next === end: nothing reserved. */
  private end = 0;
  /** Atomics.add calls made (blocks reserved), for tests and the bench. */
  reservations = 0;
  private readonly word: BigInt64Array | null;

  /** `shared`: the session's word (N workers), or null: this thread alone numbers the session. */
  constructor(shared: SharedArrayBuffer | null = null) {
    this.word = shared ? new BigInt64Array(shared, 0, 1) : null;
  }

  get shared(): boolean {
    return this.word !== null;
  }

  /**
   * The next counter, or -1 when the session's counters are exhausted (COUNTER_LIMIT). Shared:
   * when this thread's block is used up, reserves `want` more (at least 1) with one atomic add.
   */
  take(want = 1): number {
    if (this.word === null) return this.next < COUNTER_LIMIT ? this.next++ : -1;
    if (this.next >= this.end) {
      const n = want > 1 ? want : 1;
      const start = Number(Atomics.add(this.word, 0, BigInt(n)));
      this.reservations++;
      this.next = start;
      this.end = start + n;
    }
    if (this.next >= COUNTER_LIMIT) {
      this.end = this.next; // the rest of the block is past the limit too
      return -1;
    }
    return this.next++;
  }

  /** Moves this session's counter on to `n` (tests: a session about to run out). */
  skipTo(n: number): void {
    if (this.word === null) this.next = n;
    else {
      Atomics.store(this.word, 0, BigInt(n));
      this.end = this.next;
    }
  }

  /** Gives up what is left of the reserved block (end of a batch). No-op without a shared word. */
  release(): void {
    this.end = this.next;
  }

  /**
   * The counters handed out so far under this session, by every thread (a lower bound while
   * others reserve; blocks given up count as used).
   */
  get used(): number {
    return this.word === null ? this.next : Number(Atomics.load(this.word, 0));
  }

  /** No counter is left under this session (for this thread: its block is used up too). */
  get exhausted(): boolean {
    if (this.word === null) return this.next >= COUNTER_LIMIT;
    if (this.next < this.end) return this.next >= COUNTER_LIMIT; // what is left of this thread's block
    return Number(Atomics.load(this.word, 0)) >= COUNTER_LIMIT;
  }
}
