import { describe, expect, it } from 'vitest';
import { breakdown, type ProcSnapshot } from '../../bench/rss-breakdown';
import type { ThreadHeap } from '../../bench/rss-heap';
import { formatProbe, type ProbeResult } from '../../bench/rss-probe';

/** The idle-RSS breakdown (issue 14): what each MiB is, and the target line. */
const heap = (threadId: number, physical: number, atExit = false): ThreadHeap => ({
  pid: 7,
  threadId,
  at: 0,
  physical,
  used: physical - 0.5,
  spaces: { old_space: physical - 1, new_space: 1 },
  code: { bytecode: 0.3, code: 1, sources: 0.5 },
  external: 0.2,
  atExit,
});

const snap: ProcSnapshot = {
  status: { VmRSS: 70, RssAnon: 28, RssFile: 42 },
  rollup: { Pss_File: 4 },
  maps: new Map([
    ['/usr/bin/node', 38],
    ['[anon rw-p]', 22],
    ['[heap]', 4],
    ['/usr/lib/x86_64-linux-gnu/libc.so.6', 1.5],
    ['[anon rwxp]', 2],
    ['/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30', 1.45],
    ['/usr/lib/x86_64-linux-gnu/libpthread.so.0', 0.02],
  ]),
  exe: '/usr/bin/node',
  exeSections: [{ name: 'code (.text)', mib: 22 }],
};

describe('rss breakdown', () => {
  it('splits file-backed RSS by file and anonymous RSS into each thread\'s V8 heap, the main arena and the rest', () => {
    const [file, anon] = breakdown(snap, [heap(0, 15), heap(1, 6, true)]);
    expect(file!.mib).toBe(42);
    expect(file!.parts!.map((p) => [p.name, p.mib])).toEqual([
      ['/usr/bin/node (the node binary)', 38],
      ['libc.so.6', 1.5],
      ['libstdc++.so.6.0.30', 1.5],
    ]);
    expect(file!.parts![0]!.parts).toEqual(snap.exeSections);
    expect(anon!.mib).toBe(28);
    expect(anon!.parts!.map((p) => [p.name, p.mib])).toEqual([
      ['V8 heap, main thread', 15],
      ['V8 heap, data-plane worker (thread 1, sampled as it exited)', 6],
      ['malloc, main arena ([heap])', 4],
      ['the rest', 3], // 28 - 15 - 6 - 4
    ]);
  });

  it('says when the V8 heaps were not sampled', () => {
    const [, anon] = breakdown(snap, []);
    expect(anon!.parts!.map((p) => p.name)).toEqual(['malloc, main arena ([heap])', 'the rest (V8 heaps not sampled: run with the preload)']);
    expect(anon!.parts![1]!.mib).toBe(24);
  });

  it('prints issue 14\'s target line, met or over by how much', () => {
    const reading = {
      label: 'cladnet',
      run: 1,
      pid: 7,
      threads: 9,
      ...{ vmRss: 70, rssAnon: 28, rssFile: 42, rssShmem: 0, rollup: {}, both: [70, 71] },
      parts: breakdown(snap, []),
    };
    const res = (mean: number): ProbeResult => ({ readings: [reading], meanVmRss: mean, target: { bound: 55, met: mean <= 55 }, modules: null });
    expect(formatProbe(res(73.2), { settleS: 10, heap: false })).toContain('idle RSS of an agent with one peer <= 55 MiB: 73.2 MiB (mean of 1 run, 10 s after up): not met (18.2 over)');
    expect(formatProbe(res(54.9), { settleS: 10, heap: false })).toMatch(/54\.9 MiB .*: met$/);
  });
});
