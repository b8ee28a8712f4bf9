import { describe, expect, it } from 'vitest';
import { DeadlineTimer, type DeadlineClock } from '../../src/agent/deadline';

/** A hand-driven clock whose one-shot timers fire in order as time moves. */
class FakeClock implements DeadlineClock {
  t = 1_000;
  private timers: { at: number; fn: () => void; live: boolean }[] = [];
  now(): number {
    return this.t;
  }
  after(ms: number, fn: () => void): { cancel(): void } {
    const x = { at: this.t + ms, fn, live: true };
    this.timers.push(x);
    return { cancel: () => void (x.live = false) };
  }
  pending(): number {
    return this.timers.filter((x) => x.live).length;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const next = this.timers.filter((x) => x.live && x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!next) break;
      next.live = false;
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }
}

describe('DeadlineTimer', () => {
  it('fires once at the earliest time asked for; a later request changes nothing, an earlier one re-arms', () => {
    const clock = new FakeClock();
    const fired: number[] = [];
    const d = new DeadlineTimer(() => fired.push(clock.t), clock);
    d.arm(clock.t + 500);
    d.arm(clock.t + 900); // later: ignored
    expect(d.armedAt).toBe(1_500);
    d.arm(clock.t + 200); // earlier: re-armed
    expect(clock.pending()).toBe(1);
    clock.advance(1_000);
    expect(fired).toEqual([1_200]);
    expect(d.armedAt).toBe(Infinity);
  });

  it('asks nothing for Infinity, fires at once for a time already past, and is silent after close', () => {
    const clock = new FakeClock();
    const fired: number[] = [];
    const d = new DeadlineTimer(() => fired.push(clock.t), clock);
    d.arm(Infinity);
    expect(clock.pending()).toBe(0);
    d.arm(clock.t - 50);
    clock.advance(0);
    expect(fired).toEqual([1_000]);
    d.arm(clock.t + 10);
    d.close();
    d.arm(clock.t + 5);
    clock.advance(100);
    expect(fired).toEqual([1_000]);
    expect(clock.pending()).toBe(0);
  });

  it('the callback may re-arm it (the owner schedules its next due time)', () => {
    const clock = new FakeClock();
    const fired: number[] = [];
    const d: DeadlineTimer = new DeadlineTimer(() => {
      fired.push(clock.t);
      if (fired.length < 3) d.arm(clock.t + 100);
    }, clock);
    d.arm(clock.t + 100);
    clock.advance(1_000);
    expect(fired).toEqual([1_100, 1_200, 1_300]);
  });
});
