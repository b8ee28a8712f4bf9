/**
 * The agent as a systemd service (Type=notify, sd_notify(3)) over src/os/notify.ts:
 *
 *   1. READY=1     once, when the agent is up: TUN configured, peer set loaded (from etcd or the
 *                  cache), status socket answering (the CLI checks it with a real request first)
 *   2. STATUS=     a one-line summary ("3 peers, 2 up, etcd connected"), sent with READY=1 and
 *                  then whenever it changes (looked at every tick, sent only on a change)
 *   3. WATCHDOG=1  every tick while the data-plane worker's heartbeat has moved since the last
 *                  tick; a wedged worker (or a blocked event loop) stops the pings and systemd
 *                  restarts the unit after WatchdogSec
 *   4. STOPPING=1  when a stop begins (SIGTERM)
 *
 * Timing: with WATCHDOG_USEC = W the tick is at most W/2 and the worker sleeps at most W/4 per
 * poll (engine heartbeatMs). A healthy worker then moves within any W/4 and a tick follows within
 * W/2, so two pings are never more than 3W/4 apart: systemd never fires on a healthy agent.
 */
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import type { ServiceNotify } from '../os/notify';

/** How often the summary is looked at when there is no watchdog (or a slow one). */
export const STATUS_EVERY_MS = 5_000;
/** The worker's poll is never capped below this, whatever WATCHDOG_USEC says. */
const MIN_HEARTBEAT_MS = 10;

export interface ServiceSummary {
  peers: number;
  up: number;
  etcd: boolean;
}

export function formatSummary(s: ServiceSummary): string {
  return `${s.peers} ${s.peers === 1 ? 'peer' : 'peers'}, ${s.up} up, etcd ${s.etcd ? 'connected' : 'unreachable'}`;
}

/**
 * The watchdog period in ms that systemd asks of this process, or null. WATCHDOG_USEC is a
 * positive integer of microseconds; WATCHDOG_PID, when set, names the process meant (a child
 * that inherited the variables is not): execve keeps the pid, so the agent's re-exec stays meant.
 * A malformed value is refused by name, as systemd would never set one.
 */
export function watchdogMs(env: NodeJS.ProcessEnv, pid: number): number | null {
  const usec = env.WATCHDOG_USEC;
  if (usec === undefined || usec === '') return null;
  if (!/^[1-9][0-9]{0,15}$/.test(usec)) {
    throw new CladnetError('ECONFIG', `WATCHDOG_USEC: "${usec}" is not a positive integer of microseconds`, { field: 'WATCHDOG_USEC' });
  }
  const owner = env.WATCHDOG_PID;
  if (owner !== undefined && owner !== '') {
    if (!/^[1-9][0-9]*$/.test(owner)) {
      throw new CladnetError('ECONFIG', `WATCHDOG_PID: "${owner}" is not a process id`, { field: 'WATCHDOG_PID' });
    }
    if (Number(owner) !== pid) return null;
  }
  return Number(usec) / 1000;
}

/** The longest the data-plane worker may sleep per poll under this watchdog (undefined: no limit). */
export function heartbeatMs(watchdog: number | null): number | undefined {
  return watchdog === null ? undefined : Math.max(MIN_HEARTBEAT_MS, Math.floor(watchdog / 4)); // poll(2) takes whole ms
}

export interface Ticker {
  every(ms: number, fn: () => void): { cancel(): void };
}

export const intervalTicker: Ticker = {
  every(ms, fn) {
    const t = setInterval(fn, ms);
    t.unref();
    return { cancel: () => clearInterval(t) };
  },
};

export interface ServiceNotifierOptions {
  notify: ServiceNotify;
  /** From watchdogMs(); null: no WATCHDOG=1 at all. */
  watchdogMs: number | null;
  summary: () => ServiceSummary;
  /** The data-plane worker's loop counter (DataplaneEngine.heartbeat). */
  heartbeat: () => number;
  ticker?: Ticker;
  log: Logger;
}

export class ServiceNotifier {
  private readonly log: Logger;
  private readonly ticker: Ticker;
  private timer?: { cancel(): void };
  private lastStatus = '';
  private lastBeat = 0;
  private stalled = false;
  private failing = false;
  private state: 'starting' | 'ready' | 'stopping' = 'starting';

  constructor(private readonly o: ServiceNotifierOptions) {
    this.log = o.log.child({ component: 'service' });
    this.ticker = o.ticker ?? intervalTicker;
  }

  /** The tick period: W/2 under a watchdog of W ms, never longer than STATUS_EVERY_MS. */
  get tickMs(): number {
    return this.o.watchdogMs === null ? STATUS_EVERY_MS : Math.min(STATUS_EVERY_MS, this.o.watchdogMs / 2);
  }

  /** Step 1: READY=1 with the first STATUS=, then the ticks. Only the first call does anything. */
  ready(): void {
    if (this.state !== 'starting') return;
    this.state = 'ready';
    this.lastStatus = formatSummary(this.o.summary());
    this.lastBeat = this.o.heartbeat();
    this.send(`READY=1\nSTATUS=${this.lastStatus}`);
    this.log.info({ target: this.o.notify.target, watchdogMs: this.o.watchdogMs }, 'told systemd we are ready');
    this.timer = this.ticker.every(this.tickMs, () => this.tick());
  }

  /** Steps 2 and 3; runs every tickMs. */
  tick(): void {
    if (this.state !== 'ready') return;
    const lines: string[] = [];
    if (this.o.watchdogMs !== null) {
      const beat = this.o.heartbeat();
      if (beat !== this.lastBeat) {
        this.lastBeat = beat;
        lines.push('WATCHDOG=1');
        if (this.stalled) this.log.info('data-plane heartbeat moves again; watchdog pings resumed');
        this.stalled = false;
      } else if (!this.stalled) {
        this.stalled = true;
        this.log.warn({ tickMs: this.tickMs }, 'data-plane heartbeat stopped; withholding watchdog pings');
      }
    }
    const status = formatSummary(this.o.summary());
    if (status !== this.lastStatus) {
      this.lastStatus = status;
      lines.push(`STATUS=${status}`);
    }
    if (lines.length > 0) this.send(lines.join('\n'));
  }

  /** Step 4: STOPPING=1; no pings after it. */
  stopping(): void {
    if (this.state === 'stopping') return;
    this.state = 'stopping';
    this.timer?.cancel();
    this.send('STOPPING=1\nSTATUS=stopping');
  }

  close(): void {
    this.timer?.cancel();
    this.o.notify.close();
  }

  private send(state: string): void {
    const ok = this.o.notify.send(state);
    // Once per run of failures: systemd going away is not worth a line per tick.
    if (!ok && !this.failing) this.log.warn({ target: this.o.notify.target }, 'could not send to the systemd notification socket');
    this.failing = !ok;
  }
}
