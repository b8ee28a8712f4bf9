/**
 * Detects changes of the host's own network: underlay addresses appearing, disappearing or being
 * replaced, route changes, and the process or machine having been stopped (suspend/resume,
 * SIGSTOP). Detection only: it emits a computed `LocalChange`; the agent decides how to react
 * (re-discover endpoints, re-publish, re-handshake).
 *
 * Three timers:
 * 1. poll (every `pollMs`): drain netlink notifications. With `readable` (a signal that the
 *    source's descriptor turned readable, e.g. from the data-plane worker's poll set) there is no
 *    poll timer: the monitor drains when told, and a one-shot timer closes the settle window.
 *    The first event opens a settle window;
 *    at the first poll at least `settleMs` later the window closes with one emission at most:
 *    - `overflow` when notifications were lost (always emitted: anything may have changed);
 *    - else `address` when the re-read address set differs from the last one;
 *    - else `route` when any route message arrived (before == after);
 *    - else nothing (address/link messages that did not change our set: e.g. the TUN's own).
 *    Link messages count as address messages: an interface going down or losing carrier drops
 *    out of the address list (os.networkInterfaces lists only UP and RUNNING interfaces) with no
 *    address message at all: its addresses stay configured.
 * 2. re-read (every `rereadMs`): read the addresses anyway and emit `address` if they changed;
 *    catches missed notifications and hosts with no netlink at all (`events: null`).
 * 3. jump tick (every `jumpTickMs`): guarantees a callback at least that often, so any callback
 *    that comes more than `jumpTickMs + jumpSlackMs` after the previous one, by the wall clock
 *    (suspend: the monotonic clock stops with the machine, the wall clock does not) or by the
 *    monotonic clock (SIGSTOP, a frozen VM or event loop: both clocks run, the tick is simply
 *    late), means we were stopped. Every callback checks this first, so the first one after the
 *    stop (usually a poll, within `pollMs`) reports it, before any settle window can: one `resume`
 *    emission, always (NAT mappings and peers' sessions may have expired even if nothing local
 *    changed), with the addresses re-read in the same go and queued notifications discarded
 *    (the re-read covers them).
 *
 * All time and I/O are injected. State is updated before `onChange` is called.
 */
import { CladnetError } from '../errors';
import type { AddressSource } from '../os/netmon';
import type { RouteEventSource } from '../os/netlink';

export type ChangeReason = 'address' | 'route' | 'resume' | 'overflow';

export interface LocalChange {
  reason: ChangeReason;
  /** Our underlay addresses before and after, sorted "ip/len", no duplicates. */
  before: string[];
  after: string[];
  /**
   * `resume` only: ms between the last timer callback before the stop and the first after it, by
   * the clock that saw more. The stop lasted at most this long (and at least this less one tick).
   */
  gapMs?: number;
}

export interface ChangeClock {
  /** Wall-clock ms (Date.now). */
  now(): number;
  /** Monotonic ms (performance.now); on Linux it stands still while the machine is suspended. */
  mono(): number;
}

export interface ChangeTimers {
  /** Calls fn every ms until cancelled. A late timer fires once, not once per missed period. */
  every(ms: number, fn: () => void): { cancel(): void };
  /** Calls fn once after ms (needed with `readable` only). */
  after?(ms: number, fn: () => void): { cancel(): void };
}

/**
 * Tells the monitor when its event source has something to read, so that it need not poll.
 * `arm(fn)` calls fn once, the next time the source's descriptor is readable (at once if it is
 * now); the monitor drains the source and arms again. `disarm()` forgets a pending arm.
 */
export interface ReadableSignal {
  arm(fn: () => void): void;
  disarm(): void;
}

export interface ChangeMonitorDeps {
  /** null: no netlink; only the periodic re-read and the jump detector run. */
  events: RouteEventSource | null;
  /** When `events` has something to read (no poll timer then; `timers.after` is required). */
  readable?: ReadableSignal;
  /** Our underlay addresses (exclude the TUN there). */
  addresses: AddressSource;
  clock: ChangeClock;
  timers: ChangeTimers;
  onChange(c: LocalChange): void;
  /** How often to drain netlink, ms (default 100). */
  pollMs?: number;
  /** Wait this long after the first event for more before reacting, ms (default 50). */
  settleMs?: number;
  /** Re-read addresses anyway this often, ms (default 10 000). */
  rereadMs?: number;
  /** Jump detector period, ms (default 1000). */
  jumpTickMs?: number;
  /** Callbacks further apart than jumpTickMs + this mean we were stopped, ms (default 2000). */
  jumpSlackMs?: number;
}

export const CHANGE_DEFAULTS = Object.freeze({
  pollMs: 100,
  settleMs: 50,
  rereadMs: 10_000,
  jumpTickMs: 1_000,
  jumpSlackMs: 2_000,
});

/** Node's setInterval, unref'd: the monitor alone does not keep the process alive. */
export const intervalTimers: ChangeTimers = {
  every(ms, fn) {
    const h = setInterval(fn, ms);
    h.unref();
    return { cancel: () => clearInterval(h) };
  },
  after(ms, fn) {
    const h = setTimeout(fn, ms);
    h.unref();
    return { cancel: () => clearTimeout(h) };
  },
};

/** What one settle window collected. */
interface Pending {
  /** When the first event was seen (the window closes settleMs later). */
  sinceMono: number;
  route: boolean;
  overflow: boolean;
}

export class LocalChangeMonitor {
  private readonly pollMs: number;
  private readonly settleMs: number;
  private readonly rereadMs: number;
  private readonly jumpTickMs: number;
  private readonly jumpSlackMs: number;
  private timers: { cancel(): void }[] = [];
  private running = false;
  /** The one-shot that closes a settle window (readable mode). */
  private settle: { cancel(): void } | null = null;
  private set: string[] = [];
  private pending: Pending | null = null;
  private lastWall = 0;
  private lastMono = 0;

  constructor(private readonly d: ChangeMonitorDeps) {
    this.pollMs = positive(d.pollMs, CHANGE_DEFAULTS.pollMs, 'pollMs');
    this.settleMs = nonNegative(d.settleMs, CHANGE_DEFAULTS.settleMs, 'settleMs');
    this.rereadMs = positive(d.rereadMs, CHANGE_DEFAULTS.rereadMs, 'rereadMs');
    this.jumpTickMs = positive(d.jumpTickMs, CHANGE_DEFAULTS.jumpTickMs, 'jumpTickMs');
    this.jumpSlackMs = nonNegative(d.jumpSlackMs, CHANGE_DEFAULTS.jumpSlackMs, 'jumpSlackMs');
    if (d.readable && !d.timers.after) throw new CladnetError('ECONFIG', 'change monitor: readable needs timers.after', { field: 'timers' });
  }

  /** Reads the current addresses (no emission) and starts the timers. A second call does nothing. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.set = this.read() ?? [];
    this.pending = null;
    this.d.events?.drain(); // notifications queued before our baseline are part of it
    this.lastWall = this.d.clock.now();
    this.lastMono = this.d.clock.mono();
    const t = this.d.timers;
    // Every callback checks for a jump first (see 3. above).
    const poll = () => {
      if (!this.jumped()) this.poll();
    };
    const reread = () => {
      if (!this.jumped()) this.reread();
    };
    if (this.d.events && this.d.readable) this.armReadable();
    else if (this.d.events) this.timers.push(t.every(this.pollMs, poll));
    this.timers.push(t.every(this.rereadMs, reread));
    this.timers.push(t.every(this.jumpTickMs, () => void this.jumped()));
  }

  /** Cancels every timer and forgets pending events. Does not close `events` (the caller's). */
  stop(): void {
    this.running = false;
    for (const t of this.timers) t.cancel();
    this.timers = [];
    this.settle?.cancel();
    this.settle = null;
    this.d.readable?.disarm();
    this.pending = null;
  }

  /** Readable mode: drain when the source has something, then wait for the next time. */
  private armReadable(): void {
    this.d.readable!.arm(() => {
      if (!this.running) return;
      if (!this.jumped()) this.poll();
      this.armReadable();
    });
  }

  /**
   * Readable mode: a window left open (settling, or the address list failed) is closed by a
   * one-shot timer, since no poll tick comes.
   */
  private scheduleSettle(): void {
    if (!this.d.readable || !this.running || this.pending === null || this.settle !== null) return;
    const left = this.pending.sinceMono + this.settleMs - this.d.clock.mono();
    this.settle = this.d.timers.after!(Math.max(left, 0) > 0 ? Math.ceil(left) : this.pollMs, () => {
      this.settle = null;
      if (!this.running) return;
      if (!this.jumped()) this.poll();
    });
  }

  /** The address set as last read (a copy). */
  current(): string[] {
    return [...this.set];
  }

  private poll(): void {
    const ev = this.d.events!.drain();
    const any = ev.overflow || ev.addr + ev.link + ev.route > 0;
    const mono = this.d.clock.mono();
    if (any) {
      // Address and link messages need no flag: every window re-reads the addresses.
      const p = (this.pending ??= { sinceMono: mono, route: false, overflow: false });
      p.route ||= ev.route > 0;
      p.overflow ||= ev.overflow;
    }
    const p = this.pending;
    if (!p) return;
    if (mono - p.sinceMono < this.settleMs) return this.scheduleSettle();
    const after = this.read();
    if (!after) return this.scheduleSettle(); // the address list failed: keep the window open, try on the next tick
    this.pending = null;
    const before = this.set;
    const changed = !sameSet(before, after);
    this.set = after;
    if (p.overflow) this.emit({ reason: 'overflow', before, after });
    else if (changed) this.emit({ reason: 'address', before, after });
    else if (p.route) this.emit({ reason: 'route', before, after });
  }

  private reread(): void {
    const after = this.read();
    if (!after || sameSet(this.set, after)) return;
    const before = this.set;
    this.set = after;
    this.emit({ reason: 'address', before, after });
  }

  /** Checks the time since the previous callback; on a jump emits `resume` and returns true. */
  private jumped(): boolean {
    const wall = this.d.clock.now();
    const mono = this.d.clock.mono();
    const gap = Math.max(wall - this.lastWall, mono - this.lastMono);
    this.lastWall = wall;
    this.lastMono = mono;
    if (gap <= this.jumpTickMs + this.jumpSlackMs) return false;
    // One emission covers everything: queued notifications and an open window are superseded.
    this.d.events?.drain();
    this.pending = null;
    const before = this.set;
    const after = this.read() ?? before;
    this.set = after;
    this.emit({ reason: 'resume', before, after, gapMs: Math.round(gap) });
    return true;
  }

  /** The address set, sorted "ip/len" without duplicates; null when the source failed. */
  private read(): string[] | null {
    try {
      const out = new Set<string>();
      for (const a of this.d.addresses.list()) out.add(`${a.address}/${a.prefixLen}`);
      return [...out].sort();
    } catch {
      return null;
    }
  }

  private emit(c: LocalChange): void {
    this.d.onChange({ ...c, before: [...c.before], after: [...c.after] });
  }
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function positive(v: number | undefined, dflt: number, name: string): number {
  const x = v ?? dflt;
  if (!Number.isFinite(x) || x <= 0) throw new CladnetError('ECONFIG', `change monitor: ${name} must be > 0 (got ${v})`, { field: name });
  return x;
}

function nonNegative(v: number | undefined, dflt: number, name: string): number {
  const x = v ?? dflt;
  if (!Number.isFinite(x) || x < 0) throw new CladnetError('ECONFIG', `change monitor: ${name} must be >= 0 (got ${v})`, { field: name });
  return x;
}
