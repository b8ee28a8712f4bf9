import { describe, expect, it } from 'vitest';
import { Backoff, BACKOFF_MAX_MS } from '../../src/control/backoff';
import { EtcdLink, type LinkTimers } from '../../src/control/etcd-link';
import { createRootLogger } from '../../src/log';

/** Timers driven by hand: `advance(ms)` fires what falls due, in order. */
function manualTimers(): LinkTimers & { advance(ms: number): void; pending(): number[] } {
  let now = 0;
  let seq = 0;
  const due = new Map<number, { at: number; fn: () => void }>();
  return {
    set(fn, ms) {
      const id = seq++;
      due.set(id, { at: now + ms, fn });
      return { cancel: () => void due.delete(id) };
    },
    advance(ms) {
      const end = now + ms;
      for (;;) {
        const next = [...due.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
        if (!next) break;
        due.delete(next[0]);
        now = next[1].at;
        next[1].fn();
      }
      now = end;
    },
    pending: () => [...due.values()].map((t) => t.at - now),
  };
}

function logLines(): { log: ReturnType<typeof createRootLogger>; msgs: string[] } {
  const msgs: string[] = [];
  return { log: createRootLogger('debug', { write: (s: string) => void msgs.push((JSON.parse(s) as { msg: string }).msg) }), msgs };
}

const flush = () => new Promise((r) => setImmediate(r));

describe('Backoff', () => {
  it('doubles from 0.5 s to a 30 s cap, each delay in [step/2, step]', () => {
    const lo = new Backoff({ random: () => 0 });
    const hi = new Backoff({ random: () => 0.999999 });
    const steps = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
    expect(steps.map(() => lo.next())).toEqual(steps.map((s) => s / 2));
    expect(steps.map(() => hi.next())).toEqual(steps);
    expect(BACKOFF_MAX_MS).toBe(30_000);
  });

  it('reset() starts over; jitter spreads agents that failed together', () => {
    const b = new Backoff({ random: () => 0.5 });
    b.next();
    b.next();
    b.next();
    b.reset();
    expect(b.next()).toBe(375);
    let x = 1;
    const rnd = () => ((x = (x * 48271) % 2147483647) / 2147483647);
    const fleet = Array.from({ length: 50 }, () => new Backoff({ random: rnd }));
    const sixth = fleet.map((f) => [1, 2, 3, 4, 5, 6].map(() => f.next())[5]!);
    expect(Math.min(...sixth)).toBeGreaterThanOrEqual(8000);
    expect(Math.max(...sixth)).toBeLessThanOrEqual(16000);
    expect(new Set(sixth).size).toBeGreaterThan(40);
  });

  it('refuses a nonsensical range', () => {
    expect(() => new Backoff({ minMs: 0 })).toThrow(RangeError);
    expect(() => new Backoff({ minMs: 100, maxMs: 50 })).toThrow(RangeError);
  });
});

describe('EtcdLink', () => {
  it('logs once per state change, not per failure', () => {
    const { log, msgs } = logLines();
    const link = new EtcdLink({ log, timers: manualTimers(), backoff: new Backoff({ random: () => 0 }) });
    expect(link.state()).toBe('unknown');
    link.ok();
    expect(msgs).toEqual([]); // unknown -> up is not news
    for (let i = 0; i < 50; i++) link.failed(new Error('connect ECONNREFUSED'));
    expect(link.state()).toBe('down');
    link.ok();
    link.ok();
    for (let i = 0; i < 5; i++) link.failed(new Error('no route to host'));
    link.ok();
    expect(msgs).toEqual([
      'etcd unreachable; retrying with backoff',
      'etcd reachable again',
      'etcd unreachable; retrying with backoff',
      'etcd reachable again',
    ]);
    expect(link.stats().outages).toBe(2);
  });

  it('every waiting loop shares one round; rounds back off to 30 s', async () => {
    const timers = manualTimers();
    const link = new EtcdLink({ log: logLines().log, timers, backoff: new Backoff({ random: () => 0.999999 }) });
    link.failed(new Error('down'));
    const woken: string[] = [];
    const round = (names: string[]) => Promise.all(names.map((n) => link.wait().then(() => void woken.push(n))));
    const seen: number[] = [];
    for (let i = 0; i < 8; i++) {
      const p = round(['load', 'alive', 'publish']);
      expect(timers.pending()).toHaveLength(1); // one timer, however many loops wait
      seen.push(timers.pending()[0]!);
      timers.advance(seen.at(-1)! - 1);
      await flush();
      expect(woken).toHaveLength(i * 3);
      timers.advance(1);
      await p;
      expect(woken).toHaveLength((i + 1) * 3);
    }
    expect(seen).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    expect(link.stats().rounds).toBe(8);
  });

  it('ok() and kick() end the wait at once and start the backoff over; close() releases for good', async () => {
    const timers = manualTimers();
    const link = new EtcdLink({ log: logLines().log, timers, backoff: new Backoff({ random: () => 0.999999 }) });
    link.failed(new Error('down'));
    for (let i = 0; i < 6; i++) {
      const p = link.wait();
      timers.advance(60_000);
      await p;
    }
    let done = false;
    const p = link.wait().then(() => (done = true));
    expect(timers.pending()).toEqual([30000]);
    link.kick(); // our address changed
    await p;
    expect(done).toBe(true);
    expect(timers.pending()).toEqual([]);
    const q = link.wait();
    expect(timers.pending()).toEqual([500]);
    link.ok(); // another loop got through
    await q;
    link.kick(); // up: nothing to do
    link.close();
    await link.wait(); // resolves at once
    expect(timers.pending()).toEqual([]);
  });
});
