import { describe, expect, it } from 'vitest';
import { LocalChangeMonitor, type ChangeClock, type ChangeMonitorDeps, type ChangeTimers, type LocalChange, type ReadableSignal } from '../../src/agent/changes';
import { FakeRouteEvents } from '../../src/os/netlink';
import type { AddressSource, LocalAddress } from '../../src/os/netmon';

/**
 * Fake wall and monotonic clocks with interval timers driven by the monotonic one, as Node's are:
 * a timer that falls behind (the process was stopped) fires once when it can, then resumes its
 * period from that moment.
 */
class FakeTime implements ChangeClock, ChangeTimers {
  wall = 1_700_000_000_000;
  monoMs = 50_000;
  private timers: { ms: number; fn: () => void; due: number; live: boolean; seq: number; once?: boolean }[] = [];
  private seq = 0;

  now(): number {
    return this.wall;
  }
  mono(): number {
    return this.monoMs;
  }

  every(ms: number, fn: () => void): { cancel(): void } {
    const t = { ms, fn, due: this.monoMs + ms, live: true, seq: this.seq++ };
    this.timers.push(t);
    return { cancel: () => (t.live = false) };
  }

  after(ms: number, fn: () => void): { cancel(): void } {
    const t = { ms, fn, due: this.monoMs + ms, live: true, seq: this.seq++, once: true };
    this.timers.push(t);
    return { cancel: () => (t.live = false) };
  }

  live(): number {
    return this.timers.filter((t) => t.live).length;
  }

  private next(limit: number) {
    let best: (typeof this.timers)[number] | undefined;
    for (const t of this.timers) {
      if (!t.live || t.due > limit) continue;
      if (!best || t.due < best.due || (t.due === best.due && t.seq < best.seq)) best = t;
    }
    return best;
  }

  /** Time runs normally for `ms`: both clocks move, due timers fire in order. */
  advance(ms: number): void {
    const end = this.monoMs + ms;
    for (let t = this.next(end); t; t = this.next(end)) {
      this.wall += t.due - this.monoMs;
      this.monoMs = t.due;
      t.due += t.ms;
      if (t.once) t.live = false;
      t.fn();
    }
    this.wall += end - this.monoMs;
    this.monoMs = end;
  }

  /** The process is stopped for `ms` (SIGSTOP, a blocked loop): both clocks move, nothing fires; then every overdue timer fires once. */
  stall(ms: number): void {
    this.wall += ms;
    this.monoMs += ms;
    const overdue = this.timers.filter((t) => t.live && t.due <= this.monoMs).sort((a, b) => a.due - b.due || a.seq - b.seq);
    for (const t of overdue) {
      t.due = this.monoMs + t.ms;
      if (!t.live) continue;
      if (t.once) t.live = false;
      t.fn();
    }
  }

  /** The machine sleeps for `ms`: the wall clock moves, the monotonic clock stands still. */
  suspend(ms: number): void {
    this.wall += ms;
  }
}

class FakeAddresses implements AddressSource {
  addrs: LocalAddress[] = [];
  failing = false;
  reads = 0;
  set(...cidrs: string[]): void {
    this.addrs = cidrs.map((c, i) => ({ ifname: `eth${i}`, address: c.split('/')[0]!, prefixLen: Number(c.split('/')[1]) }));
  }
  list(): LocalAddress[] {
    this.reads++;
    if (this.failing) throw new Error('getifaddrs failed');
    return this.addrs.map((a) => ({ ...a }));
  }
}

function setup(opts: Partial<ChangeMonitorDeps> = {}, initial: string[] = ['198.18.0.10/24']) {
  const time = new FakeTime();
  const events = new FakeRouteEvents();
  const addresses = new FakeAddresses();
  addresses.set(...initial);
  const changes: LocalChange[] = [];
  const mon = new LocalChangeMonitor({
    events,
    addresses,
    clock: time,
    timers: time,
    onChange: (c) => changes.push(c),
    ...opts,
  });
  mon.start();
  return { time, events, addresses, changes, mon };
}

describe('LocalChangeMonitor: netlink events', () => {
  it('reads the baseline on start without emitting', () => {
    const { mon, changes, time } = setup({}, ['198.18.1.5/16', '198.18.0.10/24', '198.18.0.10/24']);
    expect(mon.current()).toEqual(['198.18.0.10/24', '198.18.1.5/16']); // sorted, duplicates merged
    time.advance(30_000);
    expect(changes).toEqual([]);
  });

  it('reports an added address after the settle window', () => {
    const { time, events, addresses, changes, mon } = setup();
    time.advance(30);
    addresses.set('198.18.0.10/24', '198.18.77.2/24');
    events.push({ addr: 1, route: 2 }); // an address add brings its prefix and local routes
    time.advance(70); // poll tick at 100: the window opens
    expect(changes).toEqual([]);
    time.advance(100); // tick at 200: 100 ms >= settle
    expect(changes).toEqual([{ reason: 'address', before: ['198.18.0.10/24'], after: ['198.18.0.10/24', '198.18.77.2/24'] }]);
    expect(mon.current()).toEqual(['198.18.0.10/24', '198.18.77.2/24']);
    time.advance(20_000);
    expect(changes).toHaveLength(1);
  });

  it('reports a removed address', () => {
    const { time, events, addresses, changes } = setup({}, ['198.18.0.10/24', '198.18.77.2/24']);
    addresses.set('198.18.0.10/24');
    events.push({ addr: 1 });
    time.advance(200);
    expect(changes).toEqual([{ reason: 'address', before: ['198.18.0.10/24', '198.18.77.2/24'], after: ['198.18.0.10/24'] }]);
  });

  it('reports a replaced address as one change', () => {
    const { time, events, addresses, changes } = setup({}, ['198.18.77.2/24']);
    addresses.set('198.18.77.3/24');
    events.push({ addr: 2, route: 4 });
    time.advance(200);
    expect(changes).toEqual([{ reason: 'address', before: ['198.18.77.2/24'], after: ['198.18.77.3/24'] }]);
  });

  it('treats a link event as a reason to re-read (a downed interface drops out with no address message)', () => {
    const { time, events, addresses, changes } = setup({}, ['198.18.0.10/24', '198.18.77.2/24']);
    addresses.set('198.18.0.10/24');
    events.push({ link: 1 });
    time.advance(200);
    expect(changes).toEqual([{ reason: 'address', before: ['198.18.0.10/24', '198.18.77.2/24'], after: ['198.18.0.10/24'] }]);
  });

  it('emits nothing when address or link events leave our set unchanged', () => {
    const { time, events, changes, addresses } = setup();
    events.push({ addr: 3, link: 1 }); // e.g. the TUN's own address, excluded by the source
    time.advance(1_000);
    expect(changes).toEqual([]);
    expect(addresses.reads).toBe(2); // the baseline and the one settled re-read
  });

  it('coalesces a burst spread over several polls into one emission with the final set', () => {
    const { time, events, addresses, changes } = setup({ settleMs: 300 }, ['198.18.77.2/24']);
    events.push({ addr: 1 });
    addresses.set('198.18.77.2/24', '198.18.77.3/24');
    time.advance(100); // window opens at 100
    events.push({ route: 2 });
    time.advance(100);
    events.push({ addr: 1 });
    addresses.set('198.18.77.3/24');
    time.advance(100);
    expect(changes).toEqual([]);
    time.advance(100); // 400: 300 ms after the window opened
    expect(changes).toEqual([{ reason: 'address', before: ['198.18.77.2/24'], after: ['198.18.77.3/24'] }]);
    time.advance(1_000);
    expect(changes).toHaveLength(1);
  });

  it('emits a route change at most once per settle window, with before == after', () => {
    const { time, events, changes } = setup({ settleMs: 200 });
    for (let i = 0; i < 3; i++) {
      events.push({ route: 5 });
      time.advance(100); // the window opens at 100 and closes at 300 with all three batches
    }
    expect(changes).toEqual([{ reason: 'route', before: ['198.18.0.10/24'], after: ['198.18.0.10/24'] }]);
    events.push({ route: 1 });
    time.advance(200);
    expect(changes).toHaveLength(1); // a second window opened at 400
    time.advance(100);
    expect(changes).toHaveLength(2);
    time.advance(1_000);
    expect(changes).toHaveLength(2);
  });

  it('reports an overflow even when the addresses did not change, re-reading them', () => {
    const { time, events, addresses, changes } = setup();
    events.push({ overflow: true });
    time.advance(200);
    expect(changes).toEqual([{ reason: 'overflow', before: ['198.18.0.10/24'], after: ['198.18.0.10/24'] }]);
    events.push({ overflow: true, route: 3 });
    addresses.set('198.18.0.11/24');
    time.advance(200);
    expect(changes[1]).toEqual({ reason: 'overflow', before: ['198.18.0.10/24'], after: ['198.18.0.11/24'] });
  });

  it('keeps the window open while the address source fails, and reports once it works', () => {
    const { time, events, addresses, changes } = setup();
    addresses.failing = true;
    addresses.set('198.18.0.12/24');
    events.push({ addr: 1 });
    time.advance(500);
    expect(changes).toEqual([]);
    addresses.failing = false;
    time.advance(100);
    expect(changes).toEqual([{ reason: 'address', before: ['198.18.0.10/24'], after: ['198.18.0.12/24'] }]);
  });
});

describe('LocalChangeMonitor: periodic re-read', () => {
  it('catches a change no event announced', () => {
    const { time, addresses, changes } = setup({ rereadMs: 5_000 });
    addresses.set('198.18.0.10/24', '198.18.9.9/24');
    time.advance(4_999);
    expect(changes).toEqual([]);
    time.advance(1);
    expect(changes).toEqual([{ reason: 'address', before: ['198.18.0.10/24'], after: ['198.18.0.10/24', '198.18.9.9/24'] }]);
    time.advance(20_000);
    expect(changes).toHaveLength(1);
  });

  it('runs without netlink (events: null): re-read and jump detector only', () => {
    const { time, addresses, changes } = setup({ events: null });
    expect(time.live()).toBe(2);
    addresses.set('198.18.0.20/24');
    time.advance(10_000);
    expect(changes).toEqual([{ reason: 'address', before: ['198.18.0.10/24'], after: ['198.18.0.20/24'] }]);
    time.suspend(30_000);
    time.advance(1_000);
    expect(changes[1]).toMatchObject({ reason: 'resume', before: ['198.18.0.20/24'], after: ['198.18.0.20/24'] });
  });
});

describe('LocalChangeMonitor: jump detector', () => {
  it('reports a wall-clock jump (suspend/resume), re-reading the addresses in the same emission', () => {
    const { time, events, addresses, changes } = setup();
    time.advance(5_000);
    time.suspend(3_600_000); // an hour asleep; the monotonic clock did not move
    addresses.set('198.18.0.99/24'); // DHCP gave us a new address on wake-up
    events.push({ addr: 2, route: 4, link: 2 });
    time.advance(1_000); // the first poll after waking sees the gap before it opens a window
    expect(changes).toEqual([{ reason: 'resume', before: ['198.18.0.10/24'], after: ['198.18.0.99/24'], gapMs: 3_600_100 }]);
    time.advance(30_000); // neither the settle window nor the re-read reports it again
    expect(changes).toHaveLength(1);
  });

  it('reports a resume even when nothing local changed', () => {
    const { time, changes } = setup();
    time.advance(2_500);
    time.suspend(10_000);
    time.advance(500);
    expect(changes).toEqual([{ reason: 'resume', before: ['198.18.0.10/24'], after: ['198.18.0.10/24'], gapMs: 10_100 }]);
  });

  it('reports a monotonic jump (SIGSTOP: both clocks run, the tick is simply late)', () => {
    const { time, changes } = setup();
    time.advance(3_000); // jump ticks at 1000, 2000, 3000
    time.stall(7_000); // stopped right after the ticks at 3000: the next ones run at 10 000
    expect(changes).toEqual([{ reason: 'resume', before: ['198.18.0.10/24'], after: ['198.18.0.10/24'], gapMs: 7_000 }]);
    time.advance(10_000);
    expect(changes).toHaveLength(1);
  });

  it('ignores lateness within the slack, and a wall clock stepped backwards', () => {
    const { time, changes } = setup();
    time.advance(1_000);
    time.stall(2_900); // 2 900 ms between callbacks: within 1 000 + 2 000
    time.advance(1_000);
    time.suspend(-60_000); // NTP steps the wall clock back a minute
    time.advance(3_000);
    time.suspend(1_500);
    time.advance(1_000);
    expect(changes).toEqual([]);
  });

  it('honours jumpTickMs and jumpSlackMs', () => {
    const { time, changes } = setup({ jumpTickMs: 200, jumpSlackMs: 300 });
    time.advance(200);
    time.suspend(350); // the next poll comes 450 ms after the last callback: within 200 + 300
    time.advance(200);
    expect(changes).toEqual([]);
    time.suspend(450);
    time.advance(100);
    expect(changes).toEqual([{ reason: 'resume', before: ['198.18.0.10/24'], after: ['198.18.0.10/24'], gapMs: 550 }]);
  });
});

describe('LocalChangeMonitor: lifecycle', () => {
  it('stop() cancels every timer and pending window; nothing runs or emits afterwards', () => {
    const { time, events, addresses, changes, mon } = setup();
    expect(time.live()).toBe(3);
    events.push({ addr: 1 });
    addresses.set('198.18.0.30/24');
    time.advance(100); // a window is open
    mon.stop();
    expect(time.live()).toBe(0);
    const drains = events.drains;
    const reads = addresses.reads;
    time.suspend(100_000);
    time.advance(60_000);
    time.stall(10_000);
    expect(changes).toEqual([]);
    expect(events.drains).toBe(drains);
    expect(addresses.reads).toBe(reads);
    expect(events.closed).toBe(false); // the source is the caller's to close
    mon.stop(); // twice is fine
  });

  it('start() twice does not double the timers; start after stop takes a fresh baseline', () => {
    const { time, addresses, changes, mon } = setup();
    mon.start();
    expect(time.live()).toBe(3);
    mon.stop();
    addresses.set('198.18.0.40/24');
    time.advance(5_000);
    mon.start();
    expect(mon.current()).toEqual(['198.18.0.40/24']);
    time.suspend(5_000); // the jump detector's baseline was reset by start too
    time.advance(1_000);
    expect(changes).toEqual([{ reason: 'resume', before: ['198.18.0.40/24'], after: ['198.18.0.40/24'], gapMs: 5_100 }]);
  });

  it('takes events queued before start as part of the baseline', () => {
    const time = new FakeTime();
    const events = new FakeRouteEvents();
    events.push({ addr: 4, route: 9 });
    const addresses = new FakeAddresses();
    addresses.set('198.18.0.10/24');
    const changes: LocalChange[] = [];
    new LocalChangeMonitor({ events, addresses, clock: time, timers: time, onChange: (c) => changes.push(c) }).start();
    time.advance(1_000);
    expect(changes).toEqual([]);
  });

  it('hands out copies: mutating an emitted change or current() does not touch its state', () => {
    const { time, events, addresses, changes, mon } = setup();
    mon.current().push('1.2.3.4/32');
    addresses.set('198.18.0.50/24');
    events.push({ addr: 1 });
    time.advance(200);
    changes[0]!.after.push('junk');
    expect(mon.current()).toEqual(['198.18.0.50/24']);
  });

  it('rejects bad intervals with ECONFIG naming the field', () => {
    const time = new FakeTime();
    const base = { events: null, addresses: new FakeAddresses(), clock: time, timers: time, onChange: () => {} };
    expect(() => new LocalChangeMonitor({ ...base, pollMs: 0 })).toThrow(expect.objectContaining({ code: 'ECONFIG', field: 'pollMs' }));
    expect(() => new LocalChangeMonitor({ ...base, jumpSlackMs: -1 })).toThrow(expect.objectContaining({ field: 'jumpSlackMs' }));
    expect(() => new LocalChangeMonitor({ ...base, rereadMs: Number.NaN })).toThrow(expect.objectContaining({ field: 'rereadMs' }));
    expect(() => new LocalChangeMonitor({ ...base, settleMs: 0 })).not.toThrow();
  });
});

/** The data-plane worker's side of `readable`: arm() once, fire() when the socket is readable. */
class FakeReadable implements ReadableSignal {
  armed: (() => void) | null = null;
  arms = 0;
  disarms = 0;
  arm(fn: () => void): void {
    this.arms++;
    this.armed = fn;
  }
  disarm(): void {
    this.disarms++;
    this.armed = null;
  }
  fire(): void {
    const fn = this.armed;
    this.armed = null;
    fn?.();
  }
}

describe('LocalChangeMonitor: woken by a readable socket instead of polling (issue 11)', () => {
  it('drains only when told, closes the settle window with a one-shot timer, and arms again', () => {
    const sig = new FakeReadable();
    const { time, events, addresses, changes, mon } = setup({ readable: sig });
    expect(sig.arms).toBe(1);
    expect(time.live()).toBe(2); // re-read and jump detector; no poll timer
    const drains = events.drains;
    time.advance(5_000);
    expect(events.drains).toBe(drains); // nothing polled meanwhile
    addresses.set('198.18.0.10/24', '198.18.7.10/24');
    events.push({ addr: 1 });
    sig.fire();
    expect(events.drains).toBe(drains + 1);
    expect(sig.arms).toBe(2); // armed again after draining
    time.advance(49);
    expect(changes).toEqual([]);
    time.advance(1);
    expect(changes.map((c) => [c.reason, c.after])).toEqual([['address', ['198.18.0.10/24', '198.18.7.10/24']]]);
    // route only: one emission after the window
    events.push({ route: 2 });
    sig.fire();
    time.advance(50);
    expect(changes.at(-1)!.reason).toBe('route');
    expect(changes.length).toBe(2);
    mon.stop();
    expect(sig.disarms).toBe(1);
    expect(time.live()).toBe(0);
  });

  it('a failed address list keeps the window open and retries after pollMs', () => {
    const sig = new FakeReadable();
    const { time, events, addresses, changes } = setup({ readable: sig });
    addresses.failing = true;
    addresses.set('198.18.9.10/24');
    events.push({ addr: 1 });
    sig.fire();
    time.advance(200);
    expect(changes).toEqual([]);
    addresses.failing = false;
    time.advance(100);
    expect(changes.map((c) => c.reason)).toEqual(['address']);
  });

  it('a resume is still reported by the jump detector', () => {
    const sig = new FakeReadable();
    const { time, changes } = setup({ readable: sig });
    time.stall(10_000);
    expect(changes.map((c) => c.reason)).toEqual(['resume']);
  });

  it('readable without one-shot timers is refused, naming the field', () => {
    const time = new FakeTime();
    const timers = { every: time.every.bind(time) };
    expect(
      () => new LocalChangeMonitor({ events: new FakeRouteEvents(), readable: new FakeReadable(), addresses: new FakeAddresses(), clock: time, timers, onChange: () => {} }),
    ).toThrow(expect.objectContaining({ code: 'ECONFIG', field: 'timers' }));
  });
});
