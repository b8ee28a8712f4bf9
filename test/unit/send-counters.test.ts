/**
 * Shared send counters (src/dataplane/counters.ts): the nonces of one send session, reserved in
 * blocks by several data-plane workers with one Atomics.add each. Two real worker_threads hammer
 * one shared word, as the workers of an agent do, and no counter may come out twice; a block that
 * straddles the counter limit hands out what is below it and nothing more.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { newSendCounter, SendCounter } from '../../src/dataplane/counters';
import { Session, PeerSessions } from '../../src/dataplane/sessions';
import { COUNTER_LIMIT } from '../../src/dataplane/wire';

/** counters.ts and wire.ts as CommonJS for a worker thread (vitest does not transform code in workers). */
function workerModules(): Record<string, string> {
  const src = path.join(__dirname, '../../src/dataplane');
  const out: Record<string, string> = {};
  for (const m of ['counters', 'wire']) {
    const text = fs.readFileSync(path.join(src, `${m}.ts`), 'utf8');
    out[`./${m}`] = ts.transpileModule(text, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } }).outputText;
  }
  return out;
}

/**
 * A worker that takes counters in batches as Outbound does: reserve up to a batch's packets at the
 * first one, use a random part of them, give up the rest. Writes every counter it took to `out`.
 */
const HAMMER = `
const { workerData, parentPort } = require('node:worker_threads');
const cache = {};
function load(name) {
  if (cache[name]) return cache[name].exports;
  const module = (cache[name] = { exports: {} });
  new Function('exports', 'require', 'module', workerData.modules[name])(module.exports, (n) => (n.startsWith('./') ? load(n) : require(n)), module);
  return module.exports;
}
const { SendCounter } = load('./counters');
const c = new SendCounter(workerData.word);
const out = new Float64Array(workerData.out);
const go = new Int32Array(workerData.go);
let seed = workerData.seed >>> 0;
const rand = (n) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
Atomics.add(go, 0, 1);
while (Atomics.load(go, 0) < 2) {} // both start together
let k = 0;
while (k < out.length) {
  const batch = 1 + rand(64);
  const use = 1 + rand(batch);
  for (let i = 0; i < use && k < out.length; i++) out[k++] = c.take(batch - i);
  c.release();
}
parentPort.postMessage({ reservations: c.reservations });
`;

describe('SendCounter', () => {
  it('hands out disjoint counters to two worker threads hammering one shared word', async () => {
    const word = newSendCounter();
    const go = new SharedArrayBuffer(4);
    const PER = 200_000;
    const outs = [new SharedArrayBuffer(8 * PER), new SharedArrayBuffer(8 * PER)];
    const modules = workerModules();
    const runs = outs.map(
      (out, i) =>
        new Promise<{ reservations: number }>((resolve, reject) => {
          const w = new Worker(HAMMER, { eval: true, workerData: { modules, word, out, go, seed: 1 + i * 7919 } });
          w.once('message', resolve);
          w.once('error', reject);
          w.once('exit', (code) => code !== 0 && reject(new Error(`worker exited ${code}`)));
        }),
    );
    const reports = await Promise.all(runs);
    const a = new Float64Array(outs[0]!);
    const b = new Float64Array(outs[1]!);
    const seen = new Set<number>();
    let negative = 0;
    let backwards = 0;
    for (const arr of [a, b]) {
      for (let i = 0; i < arr.length; i++) {
        if (arr[i]! < 0) negative++;
        if (i > 0 && arr[i]! <= arr[i - 1]!) backwards++;
        seen.add(arr[i]!);
      }
    }
    expect(negative).toBe(0);
    // no counter twice, within a thread or across the two
    expect(seen.size).toBe(2 * PER);
    // each thread's counters only grow (a receiver sees each sender's packets in order)
    expect(backwards).toBe(0);
    // one add per batch, not per packet, and every counter handed out lies below the shared word
    for (const r of reports) expect(r.reservations).toBeLessThan(PER / 10);
    const top = Number(new BigInt64Array(word)[0]);
    expect(Math.max(a[PER - 1]!, b[PER - 1]!)).toBeLessThan(top);
    // the two really ran at once: in counter order, the owner changes many times (blocks interleave)
    const owner = new Map<number, number>();
    for (const x of a) owner.set(x, 0);
    for (const x of b) owner.set(x, 1);
    const order = [...owner.keys()].sort((x, y) => x - y);
    let switches = 0;
    for (let i = 1; i < order.length; i++) if (owner.get(order[i]!) !== owner.get(order[i - 1]!)) switches++;
    expect(switches).toBeGreaterThan(2);
  }, 60_000);

  it('checks the limit on the reserved block: a block across COUNTER_LIMIT gives the counters below it, then none', () => {
    const word = newSendCounter();
    const w1 = new SendCounter(word);
    const w2 = new SendCounter(word);
    w1.skipTo(COUNTER_LIMIT - 3);
    expect([w1.take(8), w1.take(7), w1.take(6), w1.take(5)]).toEqual([COUNTER_LIMIT - 3, COUNTER_LIMIT - 2, COUNTER_LIMIT - 1, -1]);
    expect(w1.exhausted).toBe(true);
    // the other worker's next block lies past the limit: nothing, and the session is exhausted for it too
    expect(w2.take(4)).toBe(-1);
    expect(w2.exhausted).toBe(true);
    expect(w1.take(1)).toBe(-1);
  });

  it('splits the last counters below the limit between two workers without handing one out twice', () => {
    const word = newSendCounter();
    const w1 = new SendCounter(word);
    const w2 = new SendCounter(word);
    w1.skipTo(COUNTER_LIMIT - 5);
    const got = [w1.take(3), w2.take(4), w1.take(2), w2.take(3), w2.take(2), w2.take(1), w1.take(1)];
    // w1 reserved LIMIT-5..-3, w2 LIMIT-2..+1: w2 hands out two, then its block runs past the limit
    expect(got).toEqual([COUNTER_LIMIT - 5, COUNTER_LIMIT - 2, COUNTER_LIMIT - 4, COUNTER_LIMIT - 1, -1, -1, COUNTER_LIMIT - 3]);
    expect(w1.take(1)).toBe(-1);
  });

  it('stops a shared session from being sent on once the limit is reached (rekey), in every worker', () => {
    const word = newSendCounter();
    const w = { keyId: 1, txKey: new Uint8Array(32), rxKey: new Uint8Array(32), txIndex: 1, rxIndex: 2, confirmed: true, sendUntil: Infinity, counter: word };
    const peer = new PeerSessions(0);
    const s1 = new Session(peer, 1, 0, 0, 1, 2, w);
    const s2 = new Session(peer, 1, 0, 0, 1, 2, w);
    s1.tx.skipTo(COUNTER_LIMIT - 1);
    expect(s1.sendable(0) && s2.sendable(0)).toBe(true);
    expect(s2.tx.take(64)).toBe(COUNTER_LIMIT - 1);
    expect(s2.sendable(0)).toBe(false); // its block is used up below the limit and the word is past it
    expect(s1.sendable(0)).toBe(false);
    expect(s1.tx.take(1)).toBe(-1);
  });

  it('gives up the rest of a block at release: the next batch reserves anew above what others took', () => {
    const word = newSendCounter();
    const w1 = new SendCounter(word);
    const w2 = new SendCounter(word);
    expect(w1.take(10)).toBe(0);
    expect(w1.take(9)).toBe(1);
    w1.release();
    expect(w2.take(5)).toBe(10);
    expect(w1.take(3)).toBe(15); // not 2: counters 2-9 were given up
    expect(w1.used).toBe(18);
    expect(w1.reservations).toBe(2);
  });

  it('counts alone, one by one, without a shared word (one worker: as before)', () => {
    const c = new SendCounter();
    expect([c.take(64), c.take(64), c.take(1)]).toEqual([0, 1, 2]);
    expect(c.used).toBe(3);
    c.skipTo(COUNTER_LIMIT - 1);
    expect([c.take(), c.take()]).toEqual([COUNTER_LIMIT - 1, -1]);
    expect(c.exhausted).toBe(true);
  });
});
