import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { isCladnetError } from '../../src/errors';
import { createRootLogger } from '../../src/log';
import { WatchHealth } from '../../src/control/watch-health';

/** WatchHealth over fake member clients: which member, when it probes, when and where it moves. */

type Answer = 'ok' | 'fail' | 'hang';

interface FakeMember {
  endpoint: string;
  answer: Answer;
  probes: Array<{ key: string; serializable: boolean; deadline: number }>;
  closed: boolean;
}

function setup(opts: { intervalMs?: number; timeoutMs?: number } = {}) {
  const lines: string[] = [];
  const log = createRootLogger('debug', { write: (s: string) => void lines.push(s) });
  const endpoints = ['http://198.19.1.10:2379', 'http://198.19.1.11:2379', 'http://198.19.1.12:2379'];
  const made: FakeMember[] = [];
  const answers = new Map<string, Answer>(endpoints.map((e) => [e, 'ok']));
  const connect = (endpoint: string): Etcd3 => {
    const m: FakeMember = { endpoint, answer: answers.get(endpoint)!, probes: [], closed: false };
    made.push(m);
    const fake = {
      kv: {
        range: (req: { key: Buffer; serializable?: boolean }, o: { deadline: number }) => {
          m.probes.push({ key: req.key.toString(), serializable: req.serializable === true, deadline: o.deadline });
          const a = answers.get(endpoint)!;
          if (a === 'ok') return Promise.resolve({ kvs: [], count: '0' });
          if (a === 'fail') return Promise.reject(new Error('14 UNAVAILABLE: etcdserver: no leader'));
          return new Promise(() => undefined); // hung: not even the deadline fires
        },
      },
      close: () => void (m.closed = true),
    };
    return fake as unknown as Etcd3;
  };
  const health = new WatchHealth({ endpoints, connect, log, intervalMs: opts.intervalMs ?? 20, timeoutMs: opts.timeoutMs ?? 50 });
  return { health, made, answers, endpoints, lines };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const tick = () => new Promise((r) => setImmediate(r));

describe('WatchHealth', () => {
  it('refuses fewer than two endpoints, naming the field', () => {
    const log = createRootLogger('silent');
    try {
      new WatchHealth({ endpoints: ['http://198.19.1.10:2379'], connect: () => ({}) as Etcd3, log });
      expect.unreachable();
    } catch (e) {
      expect(isCladnetError(e) && e.code === 'ECONFIG' && e.field === 'etcd').toBe(true);
    }
  });

  it('makes one client for the current member, moves in order on fail() and closes the old client', async () => {
    const { health, made, endpoints } = setup();
    expect(health.member()).toBe(endpoints[0]);
    const c0 = health.client();
    expect(health.client()).toBe(c0);
    expect(made).toHaveLength(1);
    let moved = 0;
    let unsubscribed = 0;
    health.onMove(() => moved++);
    const off = health.onMove(() => unsubscribed++);
    off();
    health.fail('stream broke');
    expect(health.member()).toBe(endpoints[1]);
    expect(moved).toBe(1);
    expect(unsubscribed).toBe(0);
    await tick();
    expect(made[0]!.closed).toBe(true);
    expect(health.client()).not.toBe(c0);
    expect(made[1]!.endpoint).toBe(endpoints[1]);
    health.fail('again');
    health.fail('and again');
    expect(health.member()).toBe(endpoints[0]); // round the ring
    expect(moved).toBe(1); // a callback fires once
    expect(health.stats()).toMatchObject({ moves: 3, hangs: 0 });
    health.close();
  });

  it('probes only while a watch is attached: a linearizable one-key read with a deadline', async () => {
    const { health, made } = setup();
    health.client();
    await sleep(80);
    expect(made[0]!.probes).toHaveLength(0);
    health.attached('/cladnet/networks/n/', () => expect.unreachable());
    await sleep(110);
    const n = made[0]!.probes.length;
    expect(n).toBeGreaterThanOrEqual(2);
    expect(made[0]!.probes[0]).toMatchObject({ key: '/cladnet/networks/n/', serializable: false });
    expect(made[0]!.probes[0]!.deadline - Date.now()).toBeLessThanOrEqual(50);
    health.detached();
    await sleep(80);
    expect(made[0]!.probes.length).toBe(n);
    health.close();
  });

  it('a refused probe moves to the next member, then tells the watcher', async () => {
    const { health, answers, endpoints } = setup();
    answers.set(endpoints[0]!, 'fail');
    health.client();
    let hung: { reason: string; member: string } | null = null;
    health.attached('/k', (reason) => (hung = { reason, member: health.member() }));
    await sleep(60);
    expect(hung).toEqual({ reason: '14 UNAVAILABLE: etcdserver: no leader', member: endpoints[1] });
    expect(health.stats()).toMatchObject({ member: endpoints[1], moves: 1, hangs: 1 });
    await sleep(60);
    expect(health.stats().moves).toBe(1); // no probing until the watch is attached again
    health.close();
  });

  it('a probe that never answers counts as a hang after its timeout', async () => {
    const { health, answers, endpoints } = setup({ intervalMs: 10, timeoutMs: 40 });
    answers.set(endpoints[0]!, 'hang');
    health.client();
    const t0 = Date.now();
    let at = 0;
    health.attached('/k', () => (at = Date.now() - t0));
    await sleep(800);
    expect(at).toBeGreaterThanOrEqual(40);
    expect(at).toBeLessThan(700); // interval + timeout + the 500 ms grace for a call that never reached gRPC
    expect(health.member()).toBe(endpoints[1]);
    health.close();
  });

  it('ignores a probe whose member was left meanwhile', async () => {
    const { health, answers, endpoints } = setup({ intervalMs: 10, timeoutMs: 200 });
    answers.set(endpoints[0]!, 'hang');
    health.client();
    let hangs = 0;
    health.attached('/k', () => hangs++);
    await sleep(30); // the probe to member 0 is in flight
    health.fail('its stream broke');
    await sleep(800);
    expect(hangs).toBe(0);
    expect(health.member()).toBe(endpoints[1]);
    health.close();
  });
});
