import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AGENT_NODE_FLAGS, REEXEC_ENV, reexecPlan } from '../../src/agent/node-flags';
import { formatSummary, heartbeatMs, ServiceNotifier, STATUS_EVERY_MS, watchdogMs, type ServiceSummary, type Ticker } from '../../src/agent/service';
import { isCladnetError } from '../../src/errors';
import { createRootLogger } from '../../src/log';
import { FakeNotify, notifySockaddr, openNotify } from '../../src/os/notify';
import { NotifyReceiver } from '../helpers/notify';

function logLines(): { log: ReturnType<typeof createRootLogger>; msgs: string[] } {
  const msgs: string[] = [];
  return { log: createRootLogger('debug', { write: (s: string) => void msgs.push((JSON.parse(s) as { msg: string }).msg) }), msgs };
}

/** A ticker the test turns by hand; remembers the period it was asked for. */
class ManualTicker implements Ticker {
  fn?: () => void;
  ms = 0;
  cancelled = false;
  every(ms: number, fn: () => void) {
    this.ms = ms;
    this.fn = fn;
    return { cancel: () => void (this.cancelled = true) };
  }
  turn(): void {
    if (!this.cancelled) this.fn?.();
  }
}

function setup(watchdog: number | null) {
  const notify = new FakeNotify();
  const ticker = new ManualTicker();
  const state = { summary: { peers: 0, up: 0, etcd: true } as ServiceSummary, beat: 0 };
  const { log, msgs } = logLines();
  const n = new ServiceNotifier({
    notify,
    watchdogMs: watchdog,
    summary: () => ({ ...state.summary }),
    heartbeat: () => state.beat,
    ticker,
    log,
  });
  return { notify, ticker, state, n, msgs };
}

describe('ServiceNotifier (sd_notify protocol over a fake socket)', () => {
  it('sends nothing before ready(), then READY=1 with the first STATUS= in one datagram, once', () => {
    const { notify, n, ticker } = setup(null);
    ticker.turn();
    expect(notify.sent).toEqual([]);
    n.ready();
    n.ready();
    expect(notify.sent).toEqual(['READY=1\nSTATUS=0 peers, 0 up, etcd connected']);
  });

  it('sends STATUS= only when the summary changes', () => {
    const { notify, n, ticker, state } = setup(null);
    n.ready();
    ticker.turn();
    ticker.turn();
    expect(notify.sent).toHaveLength(1);
    state.summary = { peers: 12, up: 11, etcd: true };
    ticker.turn();
    ticker.turn();
    state.summary = { peers: 1, up: 1, etcd: false };
    ticker.turn();
    expect(notify.sent.slice(1)).toEqual(['STATUS=12 peers, 11 up, etcd connected', 'STATUS=1 peer, 1 up, etcd unreachable']);
  });

  it('sends WATCHDOG=1 only on ticks where the heartbeat moved, says once that it stopped and once that it resumed', () => {
    const { notify, n, ticker, state, msgs } = setup(2_000);
    n.ready();
    state.beat = 5;
    ticker.turn();
    state.beat = 6;
    ticker.turn();
    expect(notify.fields().filter((f) => f === 'WATCHDOG=1')).toHaveLength(2);
    ticker.turn(); // stalled
    ticker.turn(); // still stalled
    expect(notify.fields().filter((f) => f === 'WATCHDOG=1')).toHaveLength(2);
    expect(msgs.filter((m) => /heartbeat stopped/.test(m))).toHaveLength(1);
    state.beat = 7;
    ticker.turn();
    expect(notify.fields().filter((f) => f === 'WATCHDOG=1')).toHaveLength(3);
    expect(msgs.filter((m) => /pings resumed/.test(m))).toHaveLength(1);
  });

  it('never sends WATCHDOG=1 without a watchdog, and ticks every STATUS_EVERY_MS', () => {
    const { notify, n, ticker, state } = setup(null);
    n.ready();
    for (let i = 1; i < 5; i++) {
      state.beat = i;
      ticker.turn();
    }
    expect(notify.fields()).not.toContain('WATCHDOG=1');
    expect(ticker.ms).toBe(STATUS_EVERY_MS);
  });

  it('ticks at half the watchdog period (capped at STATUS_EVERY_MS) and caps the worker sleep at a quarter', () => {
    expect(setup(2_000).n.tickMs).toBe(1_000);
    expect(setup(60_000).n.tickMs).toBe(STATUS_EVERY_MS);
    expect(heartbeatMs(2_000)).toBe(500);
    expect(heartbeatMs(null)).toBeUndefined();
    expect(heartbeatMs(1)).toBe(10);
    expect(heartbeatMs(1_234.5)).toBe(308); // whole ms for poll(2)
  });

  it('keeps pings under the watchdog period for a worker that beats every W/4, with ticks every W/2 or faster', () => {
    // Simulated time in ms: the worker beats at its cap, the notifier ticks at its period; the
    // longest gap between two pings must stay below W (systemd's kill threshold).
    for (const w of [2_000, 30_000]) {
      const { notify, n, ticker, state } = setup(w);
      n.ready();
      const cap = heartbeatMs(w)!;
      let nextBeat = cap * 0.97; // not aligned with the ticks
      let lastPing = 0;
      let worst = 0;
      for (let t = ticker.ms; t < 50 * w; t += ticker.ms) {
        while (nextBeat <= t) {
          state.beat++;
          nextBeat += cap;
        }
        const before = notify.sent.length;
        ticker.turn();
        if (notify.sent.slice(before).some((m) => m.includes('WATCHDOG=1'))) {
          worst = Math.max(worst, t - lastPing);
          lastPing = t;
        }
      }
      expect(worst).toBeGreaterThan(0);
      expect(worst).toBeLessThan(w);
    }
  });

  it('sends STOPPING=1 on stop and nothing from later ticks', () => {
    const { notify, n, ticker, state } = setup(2_000);
    n.ready();
    n.stopping();
    state.beat = 9;
    state.summary = { peers: 3, up: 3, etcd: true };
    ticker.turn();
    n.stopping();
    expect(notify.sent.slice(1)).toEqual(['STOPPING=1\nSTATUS=stopping']);
    expect(ticker.cancelled).toBe(true);
  });

  it('logs a failing socket once per run of failures, not per tick', () => {
    const { notify, n, ticker, state, msgs } = setup(2_000);
    notify.accept = false;
    n.ready();
    for (let i = 1; i < 4; i++) {
      state.beat = i;
      ticker.turn();
    }
    expect(msgs.filter((m) => /could not send/.test(m))).toHaveLength(1);
  });

  it('formats the summary as one line', () => {
    expect(formatSummary({ peers: 12, up: 11, etcd: true })).toBe('12 peers, 11 up, etcd connected');
    expect(formatSummary({ peers: 0, up: 0, etcd: false })).toBe('0 peers, 0 up, etcd unreachable');
  });
});

describe('watchdogMs (WATCHDOG_USEC / WATCHDOG_PID)', () => {
  it('reads microseconds as ms, for this pid or when no pid is named', () => {
    expect(watchdogMs({ WATCHDOG_USEC: '20000000', WATCHDOG_PID: '42' }, 42)).toBe(20_000);
    expect(watchdogMs({ WATCHDOG_USEC: '3000000' }, 42)).toBe(3_000);
    expect(watchdogMs({}, 42)).toBeNull();
  });

  it('ignores a watchdog meant for another process (a child that inherited the variables)', () => {
    expect(watchdogMs({ WATCHDOG_USEC: '20000000', WATCHDOG_PID: '41' }, 42)).toBeNull();
  });

  it('refuses malformed values by name', () => {
    for (const [env, field] of [
      [{ WATCHDOG_USEC: '20s' }, 'WATCHDOG_USEC'],
      [{ WATCHDOG_USEC: '0' }, 'WATCHDOG_USEC'],
      [{ WATCHDOG_USEC: '-5' }, 'WATCHDOG_USEC'],
      [{ WATCHDOG_USEC: '1000', WATCHDOG_PID: 'me' }, 'WATCHDOG_PID'],
    ] as const) {
      let err: unknown;
      try {
        watchdogMs(env, 42);
      } catch (e) {
        err = e;
      }
      expect(isCladnetError(err, 'ECONFIG') && err.field).toBe(field);
    }
  });
});

describe('re-exec with the Node flags keeps the systemd variables', () => {
  it('passes NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID on unchanged and adds only the flags and the marker', () => {
    const env = { NOTIFY_SOCKET: '@sd-notify-x', WATCHDOG_USEC: '20000000', WATCHDOG_PID: '4242', PATH: '/usr/bin' };
    const plan = reexecPlan('/usr/bin/node', ['--enable-source-maps'], ['/usr/bin/node', '/opt/cladnet/dist/cli.js', 'agent'], env);
    expect(plan).not.toBeNull();
    expect(plan!.env.at(-1)).toBeNull();
    expect(plan!.env.slice(0, -1).sort()).toEqual(
      ['NOTIFY_SOCKET=@sd-notify-x', 'WATCHDOG_USEC=20000000', 'WATCHDOG_PID=4242', 'PATH=/usr/bin', `${REEXEC_ENV}=1`].sort(),
    );
    expect(plan!.argv).toEqual(['/usr/bin/node', '--enable-source-maps', ...AGENT_NODE_FLAGS, '/opt/cladnet/dist/cli.js', 'agent', null]);
  });

  it('does nothing when the flags are there already or after the one re-exec', () => {
    expect(reexecPlan('/n', [...AGENT_NODE_FLAGS], ['/n', 'cli.js'], {})).toBeNull();
    expect(reexecPlan('/n', [], ['/n', 'cli.js'], { [REEXEC_ENV]: '1' })).toBeNull();
  });
});

describe('notify socket over koffi (a real unix datagram socket)', () => {
  let recv: NotifyReceiver | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    await recv?.stop();
    recv = undefined;
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('builds sockaddr_un for a path (NUL-terminated) and an @abstract name (leading NUL, no terminator)', () => {
    const p = notifySockaddr('/run/systemd/notify');
    expect(p.len).toBe(2 + '/run/systemd/notify'.length + 1);
    expect(new Uint16Array(p.addr.buffer, 0, 1)[0]).toBe(1);
    expect(Buffer.from(p.addr.subarray(2, p.len)).toString('latin1')).toBe('/run/systemd/notify\0');
    const a = notifySockaddr('@abc');
    expect(a.len).toBe(2 + 1 + 3);
    expect(Buffer.from(a.addr.subarray(2, a.len)).toString('latin1')).toBe('\0abc');
  });

  it('refuses a relative, empty-abstract or over-long NOTIFY_SOCKET by name', () => {
    for (const v of ['run/notify', '@', `/${'x'.repeat(107)}`]) {
      expect(() => notifySockaddr(v)).toThrow(/NOTIFY_SOCKET/);
    }
    expect(() => notifySockaddr(`/${'x'.repeat(106)}`)).not.toThrow();
    expect(openNotify({})).toBeNull();
  });

  it('delivers datagrams to a path socket and to an abstract one, from this pid', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-notify-'));
    for (const addr of [path.join(dir, 'notify.sock'), `@cladnet-test-${randomBytes(6).toString('hex')}`]) {
      recv = await NotifyReceiver.start(addr);
      const n = openNotify({ NOTIFY_SOCKET: addr })!;
      expect(n.send('READY=1\nSTATUS=hello')).toBe(true);
      expect(n.send('WATCHDOG=1')).toBe(true);
      await recv.waitFor(/^WATCHDOG=1$/, 3_000);
      expect(recv.got.map((d) => d.msg)).toEqual(['READY=1\nSTATUS=hello', 'WATCHDOG=1']);
      expect(recv.got.every((d) => d.pid === process.pid)).toBe(true);
      n.close();
      expect(n.send('WATCHDOG=1')).toBe(false);
      await recv.stop();
      recv = undefined;
    }
  });

  it('returns false, without throwing, when nobody listens', () => {
    const n = openNotify({ NOTIFY_SOCKET: `@cladnet-nobody-${randomBytes(6).toString('hex')}` })!;
    expect(n.send('READY=1')).toBe(false);
    n.close();
  });
});
